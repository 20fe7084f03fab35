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
        """(h, w) that the image occupies in the frame, rounded to pixels."""
        height, width = self.image_size
        return int(round(height * self.scale)), int(round(width * self.scale))

    def frame_to_image(self, maps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Resample maps that cover the whole frame onto the image's pixels.

        Args:
            maps: B x C x h x w, any resolution, covering the full frame.
            mode: ``"bilinear"`` for scores and logits, ``"nearest"`` for masks.

        Returns:
            B x C x H x W in the image frame. Image pixels that the frame
            cropped away take the value of the nearest frame border pixel.
        """
        height, width = self.image_size
        frame_h, frame_w = self.size
        ys = (torch.arange(height, device=maps.device, dtype=torch.float32) + 0.5) * self.scale + self.top
        xs = (torch.arange(width, device=maps.device, dtype=torch.float32) + 0.5) * self.scale + self.left
        # grid_sample with align_corners=False maps -1 and 1 to the outer edges.
        grid_y = (ys / frame_h) * 2 - 1
        grid_x = (xs / frame_w) * 2 - 1
        grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)
        grid = grid.unsqueeze(0).expand(maps.shape[0], -1, -1, -1).to(maps.dtype)
        return F.grid_sample(maps, grid, mode=mode, padding_mode="border", align_corners=False)

    def image_to_frame(self, maps: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Place image-frame maps into the frame, nearest-neighbour.

        Args:
            maps: B x C x H x W in the image frame.
            fill: Value of frame pixels that no image pixel covers (padding).

        Returns:
            B x C x Hf x Wf. Each frame pixel takes the image pixel under its
            centre, so binary masks stay binary.
        """
        height, width = self.image_size
        frame_h, frame_w = self.size
        rows = torch.floor(((torch.arange(frame_h, device=maps.device) + 0.5) - self.top) / self.scale).long()
        cols = torch.floor(((torch.arange(frame_w, device=maps.device) + 0.5) - self.left) / self.scale).long()
        valid_rows = (rows >= 0) & (rows < height)
        valid_cols = (cols >= 0) & (cols < width)
        placed = maps[:, :, rows.clamp(0, height - 1)][:, :, :, cols.clamp(0, width - 1)]
        inside = (valid_rows[:, None] & valid_cols[None, :]).to(maps.device)
        return torch.where(inside, placed, torch.full_like(placed, fill))
