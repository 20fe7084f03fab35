"""RVLS2M: the vectorised prompt module against a plain loop reference."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdskit.errors import ConfigError
from mdskit.geometry import Frame
from mdskit.plugins import ENTRY_POINT_GROUP, load_plugins
from mdskit.prompt import DecoderPrompts
from mdskit_rvls2m import RVLS2M
from mdskit_rvls2m.rvls2m import cell_means, top_cell_mask

TIE_TOLERANCE = 1e-9


def reference_cell_scores(image_map: torch.Tensor, grid: int) -> dict[tuple[int, int], float]:
    """Mean score of every non-empty cell, one cell at a time."""
    height, width = image_map.shape
    scores = {}
    for cell_row in range(grid):
        rows = [r for r in range(height) if r * grid // height == cell_row]
        for cell_col in range(grid):
            cols = [c for c in range(width) if c * grid // width == cell_col]
            if not rows or not cols:
                continue
            total = 0.0
            for r in rows:
                for c in cols:
                    total += float(image_map[r, c])
            scores[(cell_row, cell_col)] = total / (len(rows) * len(cols))
    return scores


def reference_rvls2m(tokens, seg, token_grid, token_frame, prompt_frame, grid, top_n, normalization):
    """RVLS2M for one sample with explicit loops over tokens and cells.

    Returns the prompt-frame mask, the image-frame similarity map, the cell
    scores and the selected cells.
    """
    rows, cols = token_grid
    scores = torch.tensor([float(torch.dot(tokens[t].double(), seg.double())) for t in range(rows * cols)],
                          dtype=torch.float64)
    if normalization == "minmax":
        low, high = float(scores.min()), float(scores.max())
        scores = (scores - low) / (high - low) if high > low else torch.zeros_like(scores)
    elif normalization == "softmax":
        exps = torch.exp(scores - scores.max())
        scores = exps / exps.sum()
    image_map = token_frame.frame_to_image(scores.view(1, 1, rows, cols))[0, 0]

    cell_scores = reference_cell_scores(image_map, grid)
    ranked = sorted(cell_scores, key=lambda cell: (-cell_scores[cell], cell[0] * grid + cell[1]))
    selected = ranked[:top_n]

    height, width = image_map.shape
    mask = torch.zeros(height, width)
    for cell_row, cell_col in selected:
        for r in range(height):
            for c in range(width):
                if r * grid // height == cell_row and c * grid // width == cell_col:
                    mask[r, c] = 1.0
    placed = prompt_frame.image_to_frame(mask[None, None])[0, 0]
    return placed, image_map, cell_scores, selected


def cells_of(mask: torch.Tensor, grid: int) -> set[tuple[int, int]]:
    """Cells that an image-frame mask marks (each cell is wholly in or out)."""
    height, width = mask.shape
    marked = set()
    for r, c in mask.nonzero().tolist():
        marked.add((r * grid // height, c * grid // width))
    return marked


def image_frame_mask(cells: set[tuple[int, int]], size: tuple[int, int], grid: int) -> torch.Tensor:
    height, width = size
    mask = torch.zeros(height, width)
    for r in range(height):
        for c in range(width):
            if (r * grid // height, c * grid // width) in cells:
                mask[r, c] = 1.0
    return mask


@st.composite
def rvls2m_cases(draw):
    batch = draw(st.integers(1, 3))
    token_rows = draw(st.integers(1, 6))
    token_cols = draw(st.integers(1, 6))
    channels = draw(st.integers(1, 8))
    grid = draw(st.integers(1, 12))
    top_n = draw(st.integers(1, grid * grid))
    normalization = draw(st.sampled_from(["minmax", "softmax", "none"]))
    token_target = draw(st.integers(4, 40))
    prompt_target = draw(st.integers(4, 40))
    image_sizes = [draw(st.tuples(st.integers(1, 30), st.integers(1, 30))) for _ in range(batch)]
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(batch=batch, token_grid=(token_rows, token_cols), channels=channels, grid=grid, top_n=top_n,
                normalization=normalization, token_target=token_target, prompt_target=prompt_target,
                image_sizes=image_sizes, seed=seed)


@settings(max_examples=60, deadline=None)
@given(case=rvls2m_cases())
def test_rvls2m_matches_loop_reference(case):
    # float64 inputs keep the module's cell means within summation-order
    # rounding of the reference's, so only exact ties can rank differently.
    rows, cols = case["token_grid"]
    generator = torch.Generator().manual_seed(case["seed"])
    tokens = torch.randn(case["batch"], rows * cols, case["channels"], generator=generator, dtype=torch.float64)
    seg = torch.randn(case["batch"], case["channels"], generator=generator, dtype=torch.float64)
    token_frames = [Frame.centre_crop(size, case["token_target"]) for size in case["image_sizes"]]
    prompt_frames = [Frame.longest_side(size, case["prompt_target"]) for size in case["image_sizes"]]
    module = RVLS2M(grid=case["grid"], top_n=case["top_n"], normalization=case["normalization"])

    prompts = module(tokens, seg, case["token_grid"], token_frames, prompt_frames)

    target = case["prompt_target"]
    assert prompts.dense_masks.shape == (case["batch"], 1, target, target)
    assert prompts.dense_masks.dtype == tokens.dtype
    assert len(prompts.similarity) == case["batch"]
    for index, size in enumerate(case["image_sizes"]):
        expected, image_map, cell_scores, selected = reference_rvls2m(
            tokens[index], seg[index], case["token_grid"], token_frames[index], prompt_frames[index],
            case["grid"], case["top_n"], case["normalization"])
        assert prompts.similarity[index].shape == size
        torch.testing.assert_close(prompts.similarity[index], image_map, atol=1e-12, rtol=1e-9)
        assert len(selected) == min(case["top_n"], len(cell_scores))

        actual = prompts.dense_masks[index, 0].float()
        if torch.equal(actual, expected):
            continue
        # A cell may only swap with another whose mean ties the N-th's.
        module_cells = cells_of(top_cell_mask(prompts.similarity[index], case["grid"], case["top_n"]),
                                case["grid"])
        threshold = cell_scores[selected[-1]]
        for cell in module_cells ^ set(selected):
            assert abs(cell_scores[cell] - threshold) <= TIE_TOLERANCE, f"cell {cell} differs from the reference"


def test_cell_means_match_loop_reference():
    generator = torch.Generator().manual_seed(3)
    for height, width, grid in [(7, 13, 4), (20, 9, 16), (5, 5, 5), (3, 11, 8), (16, 16, 16)]:
        image_map = torch.rand(height, width, generator=generator)

        means, occupied = cell_means(image_map, grid)

        expected = reference_cell_scores(image_map, grid)
        assert int(occupied.sum()) == len(expected)
        for (cell_row, cell_col), value in expected.items():
            assert occupied[cell_row, cell_col]
            assert abs(float(means[cell_row, cell_col]) - value) < 1e-12


def test_ties_go_to_lower_cell_index():
    # Identical tokens give equal scores, which min-max scaling maps to 0.
    tokens = torch.ones(1, 4, 3)
    seg = torch.ones(1, 3)
    size = (12, 8)
    module = RVLS2M(grid=4, top_n=5)

    prompts = module(tokens, seg, (2, 2), [Frame.centre_crop(size, 28)], [Frame.longest_side(size, 12)])

    expected = image_frame_mask({(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)}, size, 4)
    expected = Frame.longest_side(size, 12).image_to_frame(expected[None, None])
    assert torch.equal(prompts.dense_masks, expected)
    assert torch.equal(prompts.similarity[0], torch.zeros(size))


def test_selects_cells_of_the_similar_region():
    # Tokens in the right column point along [SEG] and the others point away.
    token_grid = (4, 4)
    tokens = -torch.ones(1, 16, 2)
    tokens[0, 3::4] = 1.0
    seg = torch.ones(1, 2)
    size = (40, 60)
    frame = Frame.longest_side(size, 64)
    module = RVLS2M(grid=4, top_n=4)

    prompts = module(tokens, seg, token_grid, [Frame.longest_side(size, 60)], [frame])

    expected = frame.image_to_frame(image_frame_mask({(r, 3) for r in range(4)}, size, 4)[None, None])
    assert torch.equal(prompts.dense_masks, expected)


def test_non_square_image_padding_stays_zero():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 8, generator=generator)
    seg = torch.randn(2, 8, generator=generator)
    sizes = [(30, 90), (90, 30)]
    prompt_frames = [Frame.longest_side(size, 48) for size in sizes]
    module = RVLS2M(grid=4, top_n=16)  # every cell: the whole image

    prompts = module(tokens, seg, (4, 4), [Frame.centre_crop(size, 32) for size in sizes], prompt_frames)

    wide, tall = prompts.dense_masks[:, 0]
    assert torch.all(wide[:16] == 1)
    assert torch.all(wide[16:] == 0)
    assert torch.all(tall[:, :16] == 1)
    assert torch.all(tall[:, 16:] == 0)


def test_empty_cells_are_never_selected():
    # A 3 x 5 image split into 8 x 8 cells has only 3 x 5 non-empty cells.
    tokens = torch.randn(1, 4, 2)
    seg = torch.randn(1, 2)
    size = (3, 5)
    frame = Frame.longest_side(size, 5)
    module = RVLS2M(grid=8, top_n=64)

    prompts = module(tokens, seg, (2, 2), [Frame.centre_crop(size, 14)], [frame])

    assert torch.equal(prompts.dense_masks[0, 0], frame.image_to_frame(torch.ones(1, 1, *size))[0, 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_output_dtypes(dtype):
    tokens = torch.randn(1, 9, 4).to(dtype)
    seg = torch.randn(1, 4).to(dtype)
    size = (20, 25)

    prompts = RVLS2M(grid=5, top_n=3)(tokens, seg, (3, 3), [Frame.centre_crop(size, 21)],
                                      [Frame.longest_side(size, 32)])

    assert prompts.dense_masks.dtype == dtype
    assert set(prompts.dense_masks.unique().tolist()) <= {0.0, 1.0}
    assert prompts.similarity[0].dtype == torch.promote_types(dtype, torch.float32)


@pytest.mark.parametrize("normalization", ["minmax", "softmax"])
def test_normalized_map_range(normalization):
    tokens = torch.randn(1, 16, 6)
    seg = torch.randn(1, 6)
    size = (17, 23)

    prompts = RVLS2M(normalization=normalization, grid=4, top_n=2)(
        tokens, seg, (4, 4), [Frame.centre_crop(size, 28)], [Frame.longest_side(size, 32)])

    similarity = prompts.similarity[0]
    assert similarity.min() >= 0
    assert similarity.max() <= 1 + 1e-6


def test_similarity_carries_gradients():
    tokens = torch.randn(1, 4, 3, requires_grad=True)
    seg = torch.randn(1, 3, requires_grad=True)
    size = (8, 8)

    prompts = RVLS2M(grid=2, top_n=1)(tokens, seg, (2, 2), [Frame.centre_crop(size, 8)],
                                      [Frame.longest_side(size, 8)])
    prompts.similarity[0].sum().backward()

    assert tokens.grad is not None
    assert seg.grad is not None
    assert not prompts.dense_masks.requires_grad


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"normalization": "zscore"}, "'zscore'"),
        ({"normalization": "zscore"}, "minmax, softmax, none"),
        ({"grid": 0}, "grid 0"),
        ({"grid": 4, "top_n": 17}, "1 to 16"),
        ({"top_n": 0}, "top_n 0"),
        ({"top_n": 2.5}, "top_n 2.5"),
    ],
)
def test_invalid_options_raise_config_error(options, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        RVLS2M(**options)


def test_mismatched_token_grid_raises():
    module = RVLS2M(grid=2, top_n=1)
    frame = Frame.longest_side((8, 8), 8)
    with pytest.raises(ValueError, match="3 x 3"):
        module(torch.randn(1, 4, 2), torch.randn(1, 2), (3, 3), [frame], [frame])


def test_plugin_registers_rvls2m():
    others = [entry.name for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name != "rvls2m"]

    components, _ = load_plugins(disabled=others)

    assert components.get("prompt", "rvls2m") is RVLS2M
    assert components.providers["prompt"]["rvls2m"] == "rvls2m"


def test_returns_decoder_prompts():
    size = (8, 8)
    prompts = RVLS2M(grid=2, top_n=1)(torch.randn(1, 4, 2), torch.randn(1, 2), (2, 2),
                                      [Frame.centre_crop(size, 8)], [Frame.longest_side(size, 8)])

    assert isinstance(prompts, DecoderPrompts)
    assert prompts.boxes is None
    assert prompts.points is None
