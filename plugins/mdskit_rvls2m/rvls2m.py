"""RVLS2M: a dense mask prompt from image-token to ``[SEG]`` similarity.

Sim4Seg's Region-Aware Vision-Language Similarity to Mask module (Song, Zhou
and Shen, arXiv 2511.06665). Each image token's projected hidden state is
compared with the projected ``[SEG]`` state. The scores are mapped onto the
image's pixels and averaged over a g x g grid of cells. The top N cells form
a binary mask that prompts the mask decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mdskit.errors import ConfigError
from mdskit.geometry import Frame
from mdskit.prompt import DecoderPrompts, PromptModule, token_similarity

NORMALIZATIONS = ("minmax", "softmax", "none")


class RVLS2M(PromptModule):
    """Top-N cells of the similarity map as a binary dense prompt.

    Args:
        grid: Cells per image side (g). The image is split into g x g cells
            whatever its aspect ratio.
        top_n: Number of cells in the mask, 1 to ``grid * grid``.
        normalization: How the token scores are scaled over the image tokens
            of each sample: ``"minmax"`` to [0, 1], ``"softmax"``, or
            ``"none"`` for the raw dot products.

    The module has no parameters. The top-N selection is not differentiable,
    so no gradient reaches the embeddings through ``dense_masks``. The
    returned similarity maps do carry gradients.
    """

    name = "rvls2m"

    def __init__(self, grid: int = 16, top_n: int = 36, normalization: str = "minmax") -> None:
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ConfigError(f"invalid rvls2m grid {grid!r}; set a positive integer such as 16.")
        if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= grid * grid:
            raise ConfigError(
                f"invalid rvls2m top_n {top_n!r} for grid {grid}; "
                f"choose an integer from 1 to {grid * grid} (grid * grid).")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"invalid rvls2m normalization {normalization!r}; choose one of: {', '.join(NORMALIZATIONS)}.")
        self.grid = grid
        self.top_n = top_n
        self.normalization = normalization

    def extra_repr(self) -> str:
        return f"grid={self.grid}, top_n={self.top_n}, normalization={self.normalization!r}"

    def forward(
        self,
        image_token_embeddings: torch.Tensor,
        seg_embeddings: torch.Tensor,
        token_grid: tuple[int, int],
        token_frames: Sequence[Frame],
        prompt_frames: Sequence[Frame],
    ) -> DecoderPrompts:
        """Build one binary dense mask prompt per sample.

        Returns:
            ``dense_masks``: B x 1 x Hp x Wp with 1 on the selected cells
            and 0 elsewhere, including the prompt frame's padding, in the
            dtype of ``image_token_embeddings``. ``similarity``: per sample,
            the normalised H x W similarity map in the image frame, in
            float32 (float64 for float64 inputs).
        """
        _check_inputs(image_token_embeddings, seg_embeddings, token_grid, token_frames, prompt_frames)
        batch = image_token_embeddings.shape[0]
        rows, cols = token_grid

        # Scores are normalised in float32 or wider, because min-max scaling
        # in bfloat16 would round the map to steps of up to 1/256.
        compute_dtype = torch.promote_types(image_token_embeddings.dtype, torch.float32)
        scores = token_similarity(image_token_embeddings.to(compute_dtype), seg_embeddings.to(compute_dtype))
        scores = normalize_scores(scores, self.normalization)
        token_maps = scores.view(batch, 1, rows, cols)

        similarity: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for index in range(batch):
            image_map = token_frames[index].frame_to_image(token_maps[index:index + 1])[0, 0]
            similarity.append(image_map)
            cell_mask = top_cell_mask(image_map.detach(), self.grid, self.top_n)
            placed = prompt_frames[index].image_to_frame(cell_mask[None, None].to(image_token_embeddings.dtype))
            masks.append(placed[0])
        return DecoderPrompts(dense_masks=torch.stack(masks), similarity=similarity)


def normalize_scores(scores: torch.Tensor, normalization: str) -> torch.Tensor:
    """Scale B x T token scores over the tokens of each sample.

    Min-max scaling maps a sample whose scores are all equal to zeros.
    """
    if normalization == "none":
        return scores
    if normalization == "softmax":
        return scores.softmax(dim=-1)
    if normalization == "minmax":
        low = scores.amin(dim=-1, keepdim=True)
        high = scores.amax(dim=-1, keepdim=True)
        spread = high - low
        safe_spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        return (scores - low) / safe_spread
    raise ValueError(f"invalid normalization {normalization!r}; choose one of: {', '.join(NORMALIZATIONS)}")


def cell_index(length: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """Return the cell of each pixel along one axis: pixel r is in cell floor(r * grid / length)."""
    return torch.arange(length, device=device) * grid // length


def cell_means(image_map: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average an H x W map over each cell of a g x g grid, in float64.

    Returns:
        The g x g means and a g x g bool tensor that marks cells holding at
        least one pixel (a cell is empty when g exceeds H or W). Empty
        cells have mean 0.
    """
    height, width = image_map.shape
    device = image_map.device
    # One-hot membership matrices turn the per-cell sums into two matmuls.
    cells = torch.arange(grid, device=device)
    row_members = (cell_index(height, grid, device)[None, :] == cells[:, None]).to(torch.float64)
    col_members = (cell_index(width, grid, device)[None, :] == cells[:, None]).to(torch.float64)
    sums = row_members @ image_map.to(torch.float64) @ col_members.T
    counts = row_members.sum(dim=1)[:, None] * col_members.sum(dim=1)[None, :]
    occupied = counts > 0
    means = sums / torch.where(occupied, counts, torch.ones_like(counts))
    return means, occupied


def top_cell_mask(image_map: torch.Tensor, grid: int, top_n: int) -> torch.Tensor:
    """Return an H x W bool mask of the ``top_n`` cells with the highest mean score.

    Ties go to the lower row-major cell index. Empty cells are never
    selected, so fewer than ``top_n`` cells are marked when fewer hold pixels.
    """
    height, width = image_map.shape
    means, occupied = cell_means(image_map, grid)
    ranked = torch.where(occupied, means, torch.full_like(means, float("-inf"))).flatten()
    # A stable descending sort keeps equal means in index order.
    order = torch.sort(ranked, descending=True, stable=True).indices[:top_n]
    selected = torch.zeros(grid * grid, dtype=torch.bool, device=image_map.device)
    selected[order] = True
    selected = (selected & occupied.flatten()).view(grid, grid)
    rows = cell_index(height, grid, image_map.device)
    cols = cell_index(width, grid, image_map.device)
    return selected[rows][:, cols]


def _check_inputs(
    image_token_embeddings: torch.Tensor,
    seg_embeddings: torch.Tensor,
    token_grid: tuple[int, int],
    token_frames: Sequence[Frame],
    prompt_frames: Sequence[Frame],
) -> None:
    if image_token_embeddings.dim() != 3:
        raise ValueError(f"image_token_embeddings must be B x T x C, got shape {tuple(image_token_embeddings.shape)}")
    batch, tokens, channels = image_token_embeddings.shape
    if tuple(seg_embeddings.shape) != (batch, channels):
        raise ValueError(
            f"seg_embeddings must be B x C = {batch} x {channels}, got shape {tuple(seg_embeddings.shape)}")
    rows, cols = token_grid
    if rows * cols != tokens:
        raise ValueError(f"token_grid {rows} x {cols} does not match the {tokens} image tokens")
    if len(token_frames) != batch or len(prompt_frames) != batch:
        raise ValueError(
            f"expected one token frame and one prompt frame per sample ({batch}), "
            f"got {len(token_frames)} and {len(prompt_frames)}")
    for token_frame, prompt_frame in zip(token_frames, prompt_frames):
        if token_frame.image_size != prompt_frame.image_size:
            raise ValueError(
                f"token frame image size {token_frame.image_size} differs from "
                f"prompt frame image size {prompt_frame.image_size}")
    sizes = {frame.size for frame in prompt_frames}
    if len(sizes) > 1:
        raise ValueError(f"prompt frames of one batch must share one size, got {sorted(sizes)}")
