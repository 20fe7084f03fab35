"""Deterministic measurements of a segmentation mask, for writing findings.

:func:`measure_mask` turns a binary mask into facts that a chain of thought
can state: where the finding lies, how much of the image it covers, how
many separate regions it has and how regular its border is. Positions are
in image coordinates: "left" is the left side of the image as displayed,
which on radiographs is the patient's right.

Border regularity combines two standard shape descriptors of the largest
region. Solidity is the region's area over the area of its convex hull.
Convexity is the convex hull's perimeter over the region's perimeter. Both
are 1 for a convex region and drop for lobulated or spiculated borders. The
perimeter is the length of the marching-squares contour at level 0.5,
which, unlike a count of pixel edges, stays close to the true length for
oblique and curved borders. Neither descriptor penalises elongation, so an
elongated ellipse still has a smooth border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

# Border classes: irregular when either descriptor is below its irregular
# limit, smooth when both reach their smooth limits, lobulated otherwise.
# Digitised discs and ellipses with radii of 10 px or more measure solidity
# above 0.94 and convexity of about 0.95, because the contour overestimates
# a digital circle's perimeter by about 5%.
SMOOTH_MIN_SOLIDITY = 0.93
SMOOTH_MIN_CONVEXITY = 0.90
IRREGULAR_BELOW_SOLIDITY = 0.80
IRREGULAR_BELOW_CONVEXITY = 0.80

# Regions with fewer pixels than this are too coarsely digitised for a
# border class and are reported as smooth.
MIN_PIXELS_FOR_BORDER = 100

_THIRDS_VERTICAL = ("upper", "middle", "lower")
_THIRDS_HORIZONTAL = ("left", "central", "right")

# Contour length inside one 2 x 2 cell of pixel centres, indexed by the
# cell's corners as bits: top-left 1, top-right 2, bottom-right 4,
# bottom-left 8. One or three corners set cut a corner (a half diagonal),
# two adjacent corners give a straight unit segment, and the two diagonal
# (saddle) configurations cut two corners.
_HALF_DIAGONAL = math.sqrt(0.5)
_CELL_CONTOUR_LENGTH = np.array([
    0.0, _HALF_DIAGONAL, _HALF_DIAGONAL, 1.0,
    _HALF_DIAGONAL, 2 * _HALF_DIAGONAL, 1.0, _HALF_DIAGONAL,
    _HALF_DIAGONAL, 1.0, 2 * _HALF_DIAGONAL, _HALF_DIAGONAL,
    1.0, _HALF_DIAGONAL, _HALF_DIAGONAL, 0.0,
])


@dataclass(frozen=True)
class MaskFindings:
    """Facts measured on one binary mask.

    Attributes:
        image_size: (height, width) of the mask in pixels.
        area_fraction: Foreground pixels over all pixels, from 0 to 1.
        region_count: Number of 8-connected foreground regions.
        vertical: "upper", "middle" or "lower" third of the image, by the
            centroid of all foreground pixels; None for an empty mask.
        horizontal: "left", "central" or "right" third; None when empty.
        centroid: (row, column) of the foreground centroid in pixels; None
            when empty.
        bbox_height: Height in pixels of the largest region's bounding box.
        bbox_width: Width in pixels of the largest region's bounding box.
        solidity: Largest region's area over its convex hull's area.
        convexity: Largest region's convex hull perimeter over its
            contour length.
        isoperimetric_ratio: 4 * pi * area / perimeter ** 2 of the largest
            region, clipped to at most 1.
        border: "smooth", "lobulated" or "irregular"; None when empty.
    """

    image_size: tuple[int, int]
    area_fraction: float
    region_count: int
    vertical: str | None = None
    horizontal: str | None = None
    centroid: tuple[float, float] | None = None
    bbox_height: int = 0
    bbox_width: int = 0
    solidity: float = 0.0
    convexity: float = 0.0
    isoperimetric_ratio: float = 0.0
    border: str | None = None

    @property
    def is_empty(self) -> bool:
        """True when the mask has no foreground pixel."""
        return self.region_count == 0

    @property
    def location(self) -> str | None:
        """Position in words, for example "upper left" or "central"; None when empty."""
        if self.vertical is None or self.horizontal is None:
            return None
        if self.vertical == "middle" and self.horizontal == "central":
            return "central"
        return f"{self.vertical} {self.horizontal}"

    @property
    def area_percent_text(self) -> str:
        """Area as text for a report: "under 1%" or a whole percentage such as "8%"."""
        percent = self.area_fraction * 100.0
        if 0.0 < percent < 1.0:
            return "under 1%"
        return f"{int(math.floor(percent + 0.5))}%"

    @property
    def orientation(self) -> str | None:
        """"taller than wide", "wider than tall" or "as tall as wide" (within 10%); None when empty."""
        if self.is_empty:
            return None
        if self.bbox_height > 1.1 * self.bbox_width:
            return "taller than wide"
        if self.bbox_width > 1.1 * self.bbox_height:
            return "wider than tall"
        return "as tall as wide"


def _third(position: float, extent: int, words: tuple[str, str, str]) -> str:
    """Name the third of ``extent`` that contains ``position`` (in pixel units)."""
    index = min(int(3.0 * (position + 0.5) / extent), 2)
    return words[index]


def contour_length(region: np.ndarray) -> float:
    """Length in pixels of the marching-squares contour around a binary region."""
    padded = np.pad(region.astype(np.uint8), 1)
    cells = (padded[:-1, :-1] + 2 * padded[:-1, 1:] + 4 * padded[1:, 1:] + 8 * padded[1:, :-1])
    return float(_CELL_CONTOUR_LENGTH[cells].sum())


def _edge_midpoints(region: np.ndarray) -> np.ndarray:
    """(row, column) points where the marching-squares contour crosses pixel edges.

    Pixel ``(r, c)`` is centred at ``(r + 0.5, c + 0.5)``; every foreground
    pixel contributes the midpoint of each edge it shares with background.
    """
    padded = np.pad(region, 1)
    points = []
    for d_row, d_column in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[1 + d_row:padded.shape[0] - 1 + d_row, 1 + d_column:padded.shape[1] - 1 + d_column]
        rows, columns = np.nonzero(region & ~neighbour)
        points.append(np.stack([rows + 0.5 + 0.5 * d_row, columns + 0.5 + 0.5 * d_column], axis=1))
    return np.concatenate(points).astype(np.float64)


def _classify_border(pixel_count: int, solidity: float, convexity: float) -> str:
    if pixel_count < MIN_PIXELS_FOR_BORDER:
        return "smooth"
    if solidity < IRREGULAR_BELOW_SOLIDITY or convexity < IRREGULAR_BELOW_CONVEXITY:
        return "irregular"
    if solidity >= SMOOTH_MIN_SOLIDITY and convexity >= SMOOTH_MIN_CONVEXITY:
        return "smooth"
    return "lobulated"


def measure_mask(mask: np.ndarray) -> MaskFindings:
    """Measure position, area, region count and border regularity of a mask.

    Args:
        mask: H x W array; nonzero pixels are foreground.

    Returns:
        The findings. An all-zero mask gives ``region_count == 0``, zero
        area and None for every position and shape word.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D H x W array, got shape {mask.shape}")
    height, width = mask.shape
    image_size = (int(height), int(width))
    pixel_total = mask.sum()
    if pixel_total == 0:
        return MaskFindings(image_size=image_size, area_fraction=0.0, region_count=0)

    labels, region_count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    row_centre, column_centre = ndimage.center_of_mass(mask)

    sizes = np.bincount(labels.ravel())[1:]
    # Ties go to the first region in raster order, so the result is deterministic.
    largest = labels == (int(np.argmax(sizes)) + 1)
    largest_pixels = int(sizes.max())
    rows, columns = np.nonzero(largest)
    cropped = largest[rows.min():rows.max() + 1, columns.min():columns.max() + 1]

    hull = ConvexHull(_edge_midpoints(cropped))
    perimeter = contour_length(cropped)
    # In 2-D, ConvexHull.volume is the area and ConvexHull.area the perimeter.
    solidity = min(largest_pixels / hull.volume, 1.0)
    convexity = min(hull.area / perimeter, 1.0)
    isoperimetric = min(4.0 * math.pi * largest_pixels / perimeter ** 2, 1.0)

    return MaskFindings(
        image_size=image_size,
        area_fraction=float(pixel_total) / float(height * width),
        region_count=int(region_count),
        vertical=_third(row_centre, height, _THIRDS_VERTICAL),
        horizontal=_third(column_centre, width, _THIRDS_HORIZONTAL),
        centroid=(float(row_centre), float(column_centre)),
        bbox_height=int(cropped.shape[0]),
        bbox_width=int(cropped.shape[1]),
        solidity=float(solidity),
        convexity=float(convexity),
        isoperimetric_ratio=float(isoperimetric),
        border=_classify_border(largest_pixels, solidity, convexity),
    )
