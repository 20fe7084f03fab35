"""Box and point prompts from the image-token / ``[SEG]`` similarity map.

Both modules turn the same similarity map that RVLS2M uses into the sparse
prompt kinds a SAM decoder was trained with:

- :class:`SimilarityBox`: the bounding box of the pixels whose normalised
  similarity reaches a threshold. LiteMedSAM was trained with box prompts.
- :class:`SimilarityPoints`: READ-style point prompts, positive points at
  the highest-similarity token cells and negative points at the lowest.

Like RVLS2M, neither module has parameters, and the box and point
selections are not differentiable: gradients reach the embeddings only
through the ``[SEG]`` sparse prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mdskit.errors import ConfigError
from mdskit.geometry import Frame
from mdskit.prompt import DecoderPrompts, PromptModule, token_similarity

from .rvls2m import normalize_scores


def _image_maps(image_token_embeddings: torch.Tensor, seg_embeddings: torch.Tensor,
                token_grid: tuple[int, int], token_frames: Sequence[Frame]) -> list[torch.Tensor]:
    """Return the min-max normalised similarity map of each sample in its image frame."""
    rows, cols = token_grid
    batch, tokens, _ = image_token_embeddings.shape
    if rows * cols != tokens or tuple(seg_embeddings.shape) != (batch, image_token_embeddings.shape[2]):
        raise ValueError(f"expected B x {rows * cols} x C token embeddings and B x C [SEG] embeddings, got "
                         f"{tuple(image_token_embeddings.shape)} and {tuple(seg_embeddings.shape)}")
    compute_dtype = torch.promote_types(image_token_embeddings.dtype, torch.float32)
    scores = token_similarity(image_token_embeddings.to(compute_dtype), seg_embeddings.to(compute_dtype))
    token_maps = normalize_scores(scores, "minmax").view(batch, 1, rows, cols)
    return [token_frames[index].frame_to_image(token_maps[index:index + 1])[0, 0] for index in range(batch)]


def image_box_to_frame(box: tuple[float, float, float, float], frame: Frame) -> list[float]:
    """Map an xyxy box in image pixels (edges, not centres) to prompt-frame pixels."""
    x0, y0, x1, y1 = box
    return [x0 * frame.scale + frame.left, y0 * frame.scale + frame.top,
            x1 * frame.scale + frame.left, y1 * frame.scale + frame.top]


def mask_box(mask: torch.Tensor) -> tuple[float, float, float, float] | None:
    """Return the xyxy pixel-edge bounding box of an H x W bool mask, or None when it is empty."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


class SimilarityBox(PromptModule):
    """The bounding box of the high-similarity region as a box prompt.

    Args:
        threshold: Pixels whose min-max normalised similarity is at least
            this value, in (0, 1], form the region. A map with no spread
            (all scores equal) normalises to zeros and gets the whole image.
    """

    name = "similarity-box"

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ConfigError(f"invalid similarity-box threshold {threshold!r}; choose a number in (0, 1] such as 0.5.")
        self.threshold = float(threshold)

    def forward(self, image_token_embeddings: torch.Tensor, seg_embeddings: torch.Tensor,
                token_grid: tuple[int, int], token_frames: Sequence[Frame],
                prompt_frames: Sequence[Frame]) -> DecoderPrompts:
        """Build one xyxy box per sample in prompt-frame pixels."""
        maps = _image_maps(image_token_embeddings, seg_embeddings, token_grid, token_frames)
        boxes = []
        for image_map, frame in zip(maps, prompt_frames, strict=True):
            height, width = image_map.shape
            box = mask_box(image_map.detach() >= self.threshold) or (0.0, 0.0, float(width), float(height))
            boxes.append(image_box_to_frame(box, frame))
        # Pixel coordinates keep at least float32 precision, because bfloat16 cannot hold them exactly.
        dtype = torch.promote_types(image_token_embeddings.dtype, torch.float32)
        tensor = torch.tensor(boxes, dtype=dtype, device=image_token_embeddings.device)
        return DecoderPrompts(boxes=tensor, similarity=maps)


class SimilarityPoints(PromptModule):
    """READ-style point prompts: positives at similarity peaks, negatives at minima.

    Args:
        positive: Number of positive points, at the token cells with the
            highest similarity.
        negative: Number of negative points, at the token cells with the
            lowest similarity.

    Points sit at the centres of token cells that lie on the image, mapped
    to the prompt frame; ties go to the lower row-major cell index.
    """

    name = "similarity-points"

    def __init__(self, positive: int = 3, negative: int = 2) -> None:
        super().__init__()
        for label, value in (("positive", positive), ("negative", negative)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"invalid similarity-points {label} {value!r}; set 0 or a positive integer.")
        if positive + negative == 0:
            raise ConfigError("similarity-points needs at least one point; set positive or negative above 0.")
        self.positive = positive
        self.negative = negative

    def forward(self, image_token_embeddings: torch.Tensor, seg_embeddings: torch.Tensor,
                token_grid: tuple[int, int], token_frames: Sequence[Frame],
                prompt_frames: Sequence[Frame]) -> DecoderPrompts:
        """Build ``positive + negative`` labelled points per sample in prompt-frame pixels."""
        maps = _image_maps(image_token_embeddings, seg_embeddings, token_grid, token_frames)
        rows, cols = token_grid
        coordinates, labels = [], []
        for image_map, frame in zip(maps, prompt_frames, strict=True):
            height, width = image_map.shape
            # Sample the image map at the centre of each token cell of the image.
            ys = ((torch.arange(rows, dtype=torch.float64) + 0.5) * height / rows).long().clamp_max(height - 1)
            xs = ((torch.arange(cols, dtype=torch.float64) + 0.5) * width / cols).long().clamp_max(width - 1)
            values = image_map.detach()[ys][:, xs].flatten()
            order = torch.sort(values, descending=True, stable=True).indices
            chosen = [(index, 1) for index in order[:self.positive].tolist()]
            chosen += [(index, 0) for index in order.flip(0)[:self.negative].tolist()]
            points = []
            for index, _ in chosen:
                y = float(ys[index // cols]) + 0.5
                x = float(xs[index % cols]) + 0.5
                points.append([x * frame.scale + frame.left, y * frame.scale + frame.top])
            coordinates.append(points)
            labels.append([label for _, label in chosen])
        device = image_token_embeddings.device
        dtype = torch.promote_types(image_token_embeddings.dtype, torch.float32)
        return DecoderPrompts(points=(torch.tensor(coordinates, dtype=dtype, device=device),
                                      torch.tensor(labels, dtype=torch.long, device=device)),
                              similarity=maps)
