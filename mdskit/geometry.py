"""Placement of an image inside a model's input frame.

Models see an image after a resize and a pad or crop: LiteMedSAM resizes the
longest side to 256 px and pads the bottom and right, a CLIP tower resizes the
shortest side and crops the centre. A :class:`Frame` records that placement so
that maps can move between the image frame (the original pixels) and a model
frame (a token grid, a mask prompt) without assuming square images.

Coordinates are continuous pixel coordinates whose pixel ``i`` covers
``[i, i + 1)``; image point ``(y, x)`` sits at frame point
``(y * scale + top, x * scale + left)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Frame:
    """Where an image of ``image_size`` lies inside a frame of ``size``.

    Attributes:
        image_size: (H, W) of the original image in pixels.
        size: (Hf, Wf) of the frame in frame pixels.
        scale: Frame pixels per image pixel.
        top: Frame row of the image's top edge; negative when cropped.
        left: Frame column of the image's left edge; negative when cropped.
    """

    image_size: tuple[int, int]
    size: tuple[int, int]
    scale: float
    top: float = 0.0
    left: float = 0.0

    @classmethod
    def longest_side(cls, image_size: tuple[int, int], target: int) -> Frame:
        """Resize the longest side to ``target`` and pad bottom and right (SAM)."""
        height, width = image_size
        return cls(image_size, (target, target), target / max(height, width))

    @classmethod
    def centre_crop(cls, image_size: tuple[int, int], target: int) -> Frame:
        """Resize the shortest side to ``target`` and crop the centre (CLIP)."""
        height, width = image_size
        scale = target / min(height, width)
        return cls(image_size, (target, target), scale,
                   top=(target - height * scale) / 2, left=(target - width * scale) / 2)

    @property
    def resized_size(self) -> tuple[int, int]:
        """(h, w) of the resized image in frame pixels.

        Counts the frame pixels (on the frame's pixel grid, extended past its
        border) whose centres fall on the image, which is how
        :meth:`image_to_frame` places it. With ``top`` and ``left`` 0 (as in
        :meth:`longest_side`) this is ``round(H * scale)``, except that an
        exact half pixel rounds down. For a crop it can exceed the frame.
        """
        height, width = self.image_size
        return (_covered_pixel_count(height, self.top, self.scale),
                _covered_pixel_count(width, self.left, self.scale))

    def frame_to_image(self, maps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Resample maps that cover the whole frame onto the image's pixels.

        Args:
            maps: B x C x h x w, any resolution, covering the full frame.
            mode: ``"bilinear"`` (or ``"bicubic"``) for scores and logits,
                ``"nearest"`` for masks. Nearest takes the map pixel under
                each image pixel's centre and accepts any dtype. A centre on
                a pixel border takes the lower pixel, so for ``scale >= 1``
                ``frame_to_image(image_to_frame(x), "nearest")`` returns ``x``
                on every image pixel that ``image_to_frame`` placed.

        Returns:
            B x C x H x W in the image frame, in the dtype of ``maps``. Image
            pixels that the frame cropped away take the value of the nearest
            frame border pixel.
        """
        if mode == "nearest":
            return self._frame_to_image_nearest(maps)
        if mode not in ("bilinear", "bicubic"):
            raise ValueError(f"invalid mode {mode!r}; choose 'bilinear', 'bicubic' or 'nearest'")
        height, width = self.image_size
        frame_h, frame_w = self.size
        ys = _image_centres_in_frame(height, self.top, self.scale)
        xs = _image_centres_in_frame(width, self.left, self.scale)
        # grid_sample with align_corners=False maps -1 and 1 to the outer edges.
        # The grid and the sampling use float32 or wider, because a bfloat16
        # grid would be off by about one pixel at 256 px.
        compute_dtype = torch.promote_types(maps.dtype, torch.float32)
        grid_y = (ys / frame_h) * 2 - 1
        grid_x = (xs / frame_w) * 2 - 1
        grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)
        grid = grid.unsqueeze(0).expand(maps.shape[0], -1, -1, -1).to(maps.device, compute_dtype)
        sampled = F.grid_sample(maps.to(compute_dtype), grid, mode=mode,
                                padding_mode="border", align_corners=False)
        return sampled.to(maps.dtype)

    def _frame_to_image_nearest(self, maps: torch.Tensor) -> torch.Tensor:
        height, width = self.image_size
        frame_h, frame_w = self.size
        map_h, map_w = maps.shape[-2:]
        # Image pixel centres in map pixels. ceil(q) - 1 picks the map pixel
        # whose half-open span (k, k + 1] contains q. This breaks ties the
        # opposite way to image_to_frame's floor, so the round trip is exact.
        rows_q = _image_centres_in_frame(height, self.top, self.scale) * (map_h / frame_h)
        cols_q = _image_centres_in_frame(width, self.left, self.scale) * (map_w / frame_w)
        rows = (torch.ceil(rows_q).long() - 1).clamp(0, map_h - 1).to(maps.device)
        cols = (torch.ceil(cols_q).long() - 1).clamp(0, map_w - 1).to(maps.device)
        return maps[:, :, rows][:, :, :, cols]

    def image_to_frame(self, maps: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Place image-frame maps into the frame, nearest-neighbour.

        Args:
            maps: B x C x H x W in the image frame.
            fill: Value of frame pixels that no image pixel covers (padding).

        Returns:
            B x C x Hf x Wf. Each frame pixel takes the image pixel under its
            centre (a centre on a pixel border takes the higher pixel), so
            binary masks stay binary.
        """
        height, width = self.image_size
        frame_h, frame_w = self.size
        rows = _source_pixels(torch.arange(frame_h), self.top, self.scale)
        cols = _source_pixels(torch.arange(frame_w), self.left, self.scale)
        valid_rows = (rows >= 0) & (rows < height)
        valid_cols = (cols >= 0) & (cols < width)
        rows = rows.clamp(0, height - 1).to(maps.device)
        cols = cols.clamp(0, width - 1).to(maps.device)
        placed = maps[:, :, rows][:, :, :, cols]
        inside = (valid_rows[:, None] & valid_cols[None, :]).to(maps.device)
        return torch.where(inside, placed, torch.full_like(placed, fill))


# Index arithmetic runs on the CPU in float64 (which some accelerators lack),
# so that exact ties (a pixel centre on a pixel border, common with integer
# scales and half-pixel crops) resolve the same way in every method.

def _source_pixels(frame_pixels: torch.Tensor, offset: float, scale: float) -> torch.Tensor:
    """Return the image pixel under the centre of each frame pixel along one axis."""
    return torch.floor((frame_pixels.to(torch.float64) + 0.5 - offset) / scale).long()


def _image_centres_in_frame(count: int, offset: float, scale: float) -> torch.Tensor:
    """Return the frame coordinates of the centres of ``count`` image pixels along one axis."""
    return (torch.arange(count, dtype=torch.float64) + 0.5) * scale + offset


def _covered_pixel_count(count: int, offset: float, scale: float) -> int:
    """Count the frame pixels along one axis whose centres lie on the image."""
    first = math.floor(offset) - 1
    last = math.ceil(offset + count * scale) + 1
    sources = _source_pixels(torch.arange(first, last + 1), offset, scale)
    return int(((sources >= 0) & (sources < count)).sum())
