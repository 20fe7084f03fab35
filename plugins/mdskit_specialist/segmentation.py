"""The segmentation network, built from a config dict through mmsegmentation's ``MODELS`` registry.

Two architectures are available, both trained from scratch because no
pretrained segmentation weights are available offline:

- ``segformer``: a MixVisionTransformer encoder (SegFormer-B0 layout: four
  stages of two blocks, widths 1x, 2x, 5x and 8x ``width``) with the
  all-MLP ``SegformerHead``, which predicts at 1/4 of the input size.
- ``unet``: mmsegmentation's ``UNet`` encoder-decoder (four stages, base
  width ``width``) with an ``FCNHead``, which predicts at the input size.

Both heads have one output channel (binary segmentation); the logits are
upsampled to the input size.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope
from torch import nn

from mdskit.errors import PluginError

logger = logging.getLogger(__name__)

ARCHITECTURES = ("segformer", "unet")
INSTALL_COMMAND = "bash scripts/setup.sh --with specialist"


def import_mmseg_models():
    """Import mmsegmentation, register its modules and return its ``MODELS`` registry.

    Raises:
        PluginError: mmsegmentation or a compatible mmcv with compiled ops
            is not installed.
    """
    try:
        import mmseg  # noqa: F401  (checks the mmcv version on import)
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    except (ImportError, AssertionError) as error:
        raise PluginError(f"the specialist's segmentation network needs mmsegmentation 1.2.2 and mmcv 2.1.0 with "
                          f"compiled ops ({type(error).__name__}: {error}); install them with "
                          f"'{INSTALL_COMMAND}'.") from error
    register_all_modules(init_default_scope=False)
    return MODELS


def segformer_config(width: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the backbone and head configs of a SegFormer-B0-shaped network of base width ``width``."""
    widths = [width, 2 * width, 5 * width, 8 * width]
    backbone = dict(type="MixVisionTransformer", in_channels=3, embed_dims=width, num_stages=4,
                    num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8], patch_sizes=[7, 3, 3, 3],
                    sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True,
                    drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1)
    head = dict(type="SegformerHead", in_channels=widths, in_index=[0, 1, 2, 3], channels=4 * width,
                dropout_ratio=0.1, num_classes=2, out_channels=1, threshold=0.5,
                norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0))
    return backbone, head


def unet_config(width: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the backbone and head configs of a four-stage UNet of base width ``width``."""
    backbone = dict(type="UNet", in_channels=3, base_channels=width, num_stages=4, strides=(1, 1, 1, 1),
                    enc_num_convs=(2, 2, 2, 2), dec_num_convs=(2, 2, 2), downsamples=(True, True, True),
                    enc_dilations=(1, 1, 1, 1), dec_dilations=(1, 1, 1), with_cp=False,
                    conv_cfg=None, norm_cfg=dict(type="BN", requires_grad=True), act_cfg=dict(type="ReLU"),
                    upsample_cfg=dict(type="InterpConv"), norm_eval=False)
    head = dict(type="FCNHead", in_channels=width, in_index=3, channels=width, num_convs=1, concat_input=False,
                dropout_ratio=0.1, num_classes=2, out_channels=1, threshold=0.5,
                norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0))
    return backbone, head


def _quiet_init_weights(*modules: nn.Module) -> None:
    """Initialise mmengine modules without mmengine's per-parameter INFO log lines."""
    from mmengine.logging import MMLogger

    mm_logger = MMLogger.get_current_instance()
    level = mm_logger.level
    mm_logger.setLevel(logging.WARNING)
    try:
        for module in modules:
            module.init_weights()
    finally:
        mm_logger.setLevel(level)


class SegmentationNetwork(nn.Module):
    """An mmsegmentation encoder and decode head: B x 3 x S x S normalised images to B x 1 x S x S logits.

    Args:
        architecture: ``segformer`` or ``unet``.
        width: Base channel width (32 is SegFormer-B0's).

    Raises:
        PluginError: mmsegmentation is not installed, or ``architecture``
            or ``width`` is invalid.
    """

    def __init__(self, architecture: str = "segformer", width: int = 32) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise PluginError(f"unknown segmentation architecture {architecture!r}; choose one of: "
                              f"{', '.join(ARCHITECTURES)}.")
        if not isinstance(width, int) or width < 1:
            raise PluginError(f"invalid segmentation width {width!r}; give a positive integer.")
        models = import_mmseg_models()
        backbone, head = segformer_config(width) if architecture == "segformer" else unet_config(width)
        self.architecture = architecture
        self.config = {"backbone": backbone, "decode_head": head}
        # mmcv builds some layers (the UNet's upsampling) through the default
        # scope's registry, so the build runs in mmsegmentation's scope.
        with DefaultScope.overwrite_default_scope("mmseg"):
            self.backbone = models.build(backbone)
            self.decode_head = models.build(head)
        _quiet_init_weights(self.backbone, self.decode_head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        logits = self.decode_head(features)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
