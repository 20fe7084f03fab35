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
import torch.nn.functional as F

from mdskit.errors import ConfigError
from mdskit.geometry import Frame
from mdskit.prompt import DecoderPrompts, PromptModule, token_similarity

NORMALIZATIONS = ("minmax", "softmax", "none")
PERTURBATIONS = ("shift", "dilate", "erode", "top-n")
"""Kinds of region-prompt perturbation, applied in this order and then again:
the selected cells moved by one cell in a random direction, grown or shrunk
by one cell (8-neighbourhood), or the top N' cells for a random N' from
N / 2 to 3 N / 2."""


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

    def perturbed_prompts(self, similarity: Sequence[torch.Tensor], prompt_frames: Sequence[Frame], count: int,
                          generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Build ``count`` perturbed dense mask prompts per sample, for test-time scaling.

        Perturbation k (from 1) is of kind ``PERTURBATIONS[(k - 1) % 4]``
        applied to the top-N cells of the sample's similarity map. Random
        choices (the shift's direction, N') come from ``generator``.

        Args:
            similarity: Per sample, the H x W similarity map that
                :meth:`forward` returned.
            prompt_frames: Per sample, the decoder's prompt frame.
            count: Perturbed prompts per sample.
            generator: CPU generator of the random choices.
            dtype: dtype of the returned prompts.

        Returns:
            (B * count) x 1 x Hp x Wp binary prompts, the ``count`` prompts of
            sample 0 first.
        """
        masks: list[torch.Tensor] = []
        for image_map, frame in zip(similarity, prompt_frames, strict=True):
            means, occupied = cell_means(image_map.detach(), self.grid)
            selected = top_cells(means, occupied, self.top_n)
            height, width = image_map.shape
            for index in range(count):
                kind = PERTURBATIONS[index % len(PERTURBATIONS)]
                cells = perturb_cells(selected, means, occupied, self.top_n, kind, generator)
                pixels = cells_to_pixels(cells, height, width)
                masks.append(frame.image_to_frame(pixels[None, None].to(dtype))[0])
        return torch.stack(masks)


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
    return cells_to_pixels(top_cells(means, occupied, top_n), height, width)


def top_cells(means: torch.Tensor, occupied: torch.Tensor, top_n: int) -> torch.Tensor:
    """Return a g x g bool mask of the ``top_n`` occupied cells with the highest mean, ties to the lower index."""
    grid = means.shape[0]
    ranked = torch.where(occupied, means, torch.full_like(means, float("-inf"))).flatten()
    # A stable descending sort keeps equal means in index order.
    order = torch.sort(ranked, descending=True, stable=True).indices[:top_n]
    selected = torch.zeros(grid * grid, dtype=torch.bool, device=means.device)
    selected[order] = True
    return (selected & occupied.flatten()).view(grid, grid)


def cells_to_pixels(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Spread a g x g bool cell mask over an H x W image (pixel r is in cell floor(r * g / H))."""
    grid = cells.shape[0]
    rows = cell_index(height, grid, cells.device)
    cols = cell_index(width, grid, cells.device)
    return cells[rows][:, cols]


def perturb_cells(selected: torch.Tensor, means: torch.Tensor, occupied: torch.Tensor, top_n: int, kind: str,
                  generator: torch.Generator) -> torch.Tensor:
    """Perturb a g x g bool cell selection by one of :data:`PERTURBATIONS`.

    Only occupied cells are ever selected. An erosion that would remove
    every cell keeps the selection's highest-mean cell instead.
    """
    if kind == "shift":
        offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
        dy, dx = offsets[int(torch.randint(len(offsets), (1,), generator=generator))]
        return _shift(selected, dy, dx) & occupied
    if kind == "dilate":
        return _dilate(selected) & occupied
    if kind == "erode":
        eroded = ~_dilate(~selected)
        if eroded.any():
            return eroded
        best = torch.where(selected, means, torch.full_like(means, float("-inf"))).flatten().argmax()
        kept = torch.zeros_like(selected).flatten()
        kept[best] = True
        return kept.view_as(selected)
    if kind == "top-n":
        grid = means.shape[0]
        factor = 0.5 + float(torch.rand((1,), generator=generator))
        varied = min(max(round(top_n * factor), 1), grid * grid)
        return top_cells(means, occupied, varied)
    raise ValueError(f"unknown perturbation {kind!r}; choose one of: {', '.join(PERTURBATIONS)}.")


def _shift(cells: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move a g x g bool mask by (dy, dx) cells; cells moved past the border are dropped."""
    grid = cells.shape[0]
    padded = F.pad(cells[None, None].float(), (1, 1, 1, 1))[0, 0]
    return padded[1 - dy:1 - dy + grid, 1 - dx:1 - dx + grid] > 0


def _dilate(cells: torch.Tensor) -> torch.Tensor:
    """Grow a g x g bool mask by one cell in the 8-neighbourhood."""
    return F.max_pool2d(cells[None, None].float(), kernel_size=3, stride=1, padding=1)[0, 0] > 0


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
