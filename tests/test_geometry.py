"""Property tests of Frame: moving maps between an image and a model frame."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mdskit.geometry import Frame

SETTINGS = settings(max_examples=150, deadline=None)
EPSILON = 1e-9

image_sizes = st.tuples(st.integers(1, 48), st.integers(1, 48))
targets = st.integers(1, 96)
frame_kinds = st.sampled_from(["longest_side", "centre_crop"])


def make_frame(kind: str, image_size: tuple[int, int], target: int) -> Frame:
    return getattr(Frame, kind)(image_size, target)


def random_mask(data, height: int, width: int) -> torch.Tensor:
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    generator = torch.Generator().manual_seed(seed)
    density = data.draw(st.sampled_from([0.1, 0.5, 0.9]), label="density")
    return (torch.rand(1, 1, height, width, generator=generator) < density).float()


def placed_pixels(frame: Frame) -> torch.Tensor:
    """H x W bool: image pixels that image_to_frame puts in at least one frame pixel."""
    height, width = frame.image_size
    index = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width)
    placed = frame.image_to_frame(index, fill=-1).flatten()
    is_placed = torch.zeros(height * width, dtype=torch.bool)
    is_placed[placed[placed >= 0].long()] = True
    return is_placed.view(height, width)


def centred_pixels(frame: Frame) -> torch.Tensor:
    """H x W bool: image pixels whose centre lies inside the frame or on its border."""
    height, width = frame.image_size
    frame_h, frame_w = frame.size
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * frame.scale + frame.top
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * frame.scale + frame.left
    rows = (ys >= 0) & (ys <= frame_h)
    cols = (xs >= 0) & (xs <= frame_w)
    return rows[:, None] & cols[None, :]


def covered_length(start: float, stop: float, frame_length: int) -> float:
    return max(0.0, min(stop, frame_length) - max(start, 0.0))


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds, data=st.data())
def test_image_to_frame_mask_stays_binary(image_size, target, kind, data):
    frame = make_frame(kind, image_size, target)
    mask = random_mask(data, *image_size)

    placed = frame.image_to_frame(mask)

    assert placed.shape == (1, 1, target, target)
    assert set(placed.unique().tolist()) <= {0.0, 1.0}


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds, data=st.data())
def test_image_to_frame_rectangle_area(image_size, target, kind, data):
    height, width = image_size
    top = data.draw(st.integers(0, height - 1), label="top")
    bottom = data.draw(st.integers(top + 1, height), label="bottom")
    left = data.draw(st.integers(0, width - 1), label="left")
    right = data.draw(st.integers(left + 1, width), label="right")
    mask = torch.zeros(1, 1, height, width)
    mask[..., top:bottom, left:right] = 1
    frame = make_frame(kind, image_size, target)

    placed = frame.image_to_frame(mask)[0, 0]

    # The rectangle covers a half-open span of length L of the frame on each
    # axis, which contains floor(L) or ceil(L) frame pixel centres.
    span_h = covered_length(top * frame.scale + frame.top, bottom * frame.scale + frame.top, target)
    span_w = covered_length(left * frame.scale + frame.left, right * frame.scale + frame.left, target)
    area = int(placed.sum())
    if area == 0:
        assert math.floor(span_h + EPSILON) == 0 or math.floor(span_w + EPSILON) == 0
        return
    filled_rows = int(placed.any(dim=1).sum())
    filled_cols = int(placed.any(dim=0).sum())
    assert math.floor(span_h - EPSILON) <= filled_rows <= math.ceil(span_h + EPSILON)
    assert math.floor(span_w - EPSILON) <= filled_cols <= math.ceil(span_w + EPSILON)
    assert area == filled_rows * filled_cols


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds)
def test_image_to_frame_rows_per_image_row(image_size, target, kind):
    height, width = image_size
    frame = make_frame(kind, image_size, target)
    row_index = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1).expand(1, 1, height, width)

    placed = frame.image_to_frame(row_index, fill=-1)[0, 0, :, 0]
    counts = torch.bincount(placed[placed >= 0].long(), minlength=height)

    # Each image row that lies wholly inside the frame covers floor(scale)
    # or ceil(scale) frame rows; rows that a crop cuts may cover fewer.
    ys = torch.arange(height, dtype=torch.float64) * frame.scale + frame.top
    whole = (ys >= 0) & (ys + frame.scale <= target)
    assert torch.all(counts[whole] >= math.floor(frame.scale))
    assert torch.all(counts <= math.ceil(frame.scale))
    # Placed rows keep the image's order.
    assert torch.all(placed[placed >= 0].diff() >= 0)


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds, data=st.data())
def test_mask_round_trip(image_size, target, kind, data):
    frame = make_frame(kind, image_size, target)
    assume(frame.scale >= 1)
    mask = random_mask(data, *image_size)

    recovered = frame.frame_to_image(frame.image_to_frame(mask), mode="nearest")

    assert recovered.shape == mask.shape
    placed = placed_pixels(frame)
    assert torch.equal(recovered[0, 0][placed], mask[0, 0][placed])


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds)
def test_downscaled_round_trip_stays_local(image_size, target, kind):
    frame = make_frame(kind, image_size, target)
    assume(frame.scale < 1)
    height, width = image_size
    index = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width)

    recovered = frame.frame_to_image(frame.image_to_frame(index, fill=-1), mode="nearest")[0, 0]

    # A frame pixel stands for a block of about 1 / scale image pixels, so
    # each image pixel whose centre is in the frame gets a value from its
    # neighbourhood, unless the frame pixel under it is padding.
    radius = math.ceil(1 / frame.scale)
    rows = torch.arange(height).view(height, 1).expand(height, width)
    cols = torch.arange(width).view(1, width).expand(height, width)
    checked = centred_pixels(frame) & (recovered >= 0)
    source = recovered[checked].long()
    assert torch.all((source // width - rows[checked]).abs() <= radius)
    assert torch.all((source % width - cols[checked]).abs() <= radius)
    # Pixels inside the resized image never land on padding.
    resized_h, resized_w = frame.resized_size
    inside_rows = (rows + 0.5) * frame.scale + frame.top < resized_h
    inside_cols = (cols + 0.5) * frame.scale + frame.left < resized_w
    inside = centred_pixels(frame) & inside_rows & inside_cols
    assert torch.all(recovered[inside] >= 0)


@SETTINGS
@given(image_size=image_sizes, target=targets, data=st.data())
def test_longest_side_padding_is_filled(image_size, target, data):
    frame = Frame.longest_side(image_size, target)
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    values = torch.rand(1, 2, *image_size, generator=torch.Generator().manual_seed(seed))

    placed = frame.image_to_frame(values, fill=-1.0)

    # An image thinner than half a frame pixel is placed in no frame pixel.
    resized_h, resized_w = frame.resized_size
    assert 0 <= resized_h <= target
    assert 0 <= resized_w <= target
    assert max(resized_h, resized_w) == target
    assert torch.all(placed[..., :resized_h, :resized_w] >= 0)
    assert torch.all(placed[..., resized_h:, :] == -1)
    assert torch.all(placed[..., :, resized_w:] == -1)


@SETTINGS
@given(image_size=image_sizes, target=targets)
def test_resized_size_rounds_scaled_size(image_size, target):
    frame = Frame.longest_side(image_size, target)
    for size, resized in zip(image_size, frame.resized_size):
        exact = size * frame.scale
        assert abs(resized - exact) <= 0.5 + 1e-9


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds,
       value=st.floats(-1e3, 1e3, allow_nan=False), map_size=st.integers(1, 40))
def test_constant_maps_stay_constant(image_size, target, kind, value, map_size):
    frame = make_frame(kind, image_size, target)
    constant_image = torch.full((1, 1, *image_size), value)
    constant_frame = torch.full((2, 1, map_size, map_size + 3), value)

    placed = frame.image_to_frame(constant_image, fill=value)
    bilinear = frame.frame_to_image(constant_frame)
    nearest = frame.frame_to_image(constant_frame, mode="nearest")

    assert torch.equal(placed, torch.full_like(placed, value))
    assert bilinear.shape == (2, 1, *image_size)
    torch.testing.assert_close(bilinear, torch.full_like(bilinear, value))
    assert torch.equal(nearest, torch.full_like(nearest, value))


@SETTINGS
@given(image_size=image_sizes, target=targets, kind=frame_kinds, map_size=st.integers(2, 40))
def test_frame_to_image_samples_ramp(image_size, target, kind, map_size):
    """A ramp with value k at map pixel k is sampled at each image pixel's centre."""
    frame = make_frame(kind, image_size, target)
    height, width = image_size
    ramp = torch.arange(map_size, dtype=torch.float64).view(1, 1, map_size, 1).expand(1, 1, map_size, width)

    sampled = frame.frame_to_image(ramp)[0, 0, :, 0]

    centres = (torch.arange(height, dtype=torch.float64) + 0.5) * frame.scale + frame.top
    expected = (centres * map_size / target - 0.5).clamp(0, map_size - 1)
    torch.testing.assert_close(sampled, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_frame_to_image_keeps_dtype(dtype):
    frame = Frame.longest_side((30, 50), 256)
    maps = torch.rand(1, 1, 16, 16).to(dtype)

    assert frame.frame_to_image(maps).dtype == dtype
    assert frame.frame_to_image(maps, mode="nearest").dtype == dtype


def test_frame_to_image_bool_nearest():
    frame = Frame.centre_crop((20, 30), 10)
    maps = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    maps[..., :, 5:] = True

    sampled = frame.frame_to_image(maps, mode="nearest")

    assert sampled.dtype == torch.bool
    assert sampled[0, 0, :, :15].sum() == 0
    assert sampled[0, 0, :, 15:].all()


def test_frame_to_image_rejects_unknown_mode():
    frame = Frame.longest_side((4, 4), 8)
    with pytest.raises(ValueError, match="'area'"):
        frame.frame_to_image(torch.zeros(1, 1, 8, 8), mode="area")


def test_half_pixel_crop_round_trip():
    """A crop offset of half a pixel at scale 1 puts every centre on a border."""
    frame = Frame.centre_crop((24, 17), 17)
    assert frame.top == -3.5
    mask = (torch.arange(24 * 17).view(1, 1, 24, 17) % 3 == 0).float()

    recovered = frame.frame_to_image(frame.image_to_frame(mask), mode="nearest")

    placed = placed_pixels(frame)
    assert placed.sum() == 17 * 17
    assert torch.equal(recovered[0, 0][placed], mask[0, 0][placed])


def test_resized_size_exact_half_pixel():
    frame = Frame.longest_side((3, 512), 256)

    placed = frame.image_to_frame(torch.ones(1, 1, 3, 512))[0, 0]

    assert frame.resized_size == (1, 256)
    assert int(placed.any(dim=1).sum()) == 1
