"""Kvasir-SEG: colonoscopy images with polyp masks (Jha et al., MMM 2020).

Layout of the public release::

    Kvasir-SEG/images/<id>.jpg
    Kvasir-SEG/masks/<id>.jpg
    Kvasir-SEG/kavsir_bboxes.json    {id: {height, width, bbox: [{xmin, ...}]}}

Every image shows at least one polyp, so the label set has one label. The
masks are JPEG files, whose compression leaves values near 0 and 255, so
they are thresholded at 128. The boxes file (its name is misspelt in the
release) gives each id's polyp boxes together with the image size that the
coordinates refer to. The adapter rescales the boxes from that size to the
size of the image file, so they stay correct for resized copies of the
images, and stores them in ``meta["boxes"]`` as (xmin, ymin, xmax, ymax)
image pixels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mdskit.datasets import DatasetAdapter
from mdskit.errors import DataError
from mdskit.imageio import check_mask_size, read_image, read_mask
from mdskit.sample import MdsSample

from .common import natural_key, require_cases, require_folder, warn_skipped

logger = logging.getLogger(__name__)

BOXES_FILE = "kavsir_bboxes.json"
MASK_THRESHOLD = 128
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def read_boxes_file(path: Path) -> dict[str, dict[str, Any]]:
    """Read the Kvasir-SEG boxes file; an absent file gives an empty mapping."""
    if not path.is_file():
        logger.warning("kvasir: %s not found; cases are loaded without polyp boxes", path)
        return {}
    try:
        with path.open(encoding="utf-8") as handle:
            entries = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"boxes file {path} could not be read ({error}); restore it from the "
                        f"Kvasir-SEG release or delete it to load the cases without boxes.") from error
    if not isinstance(entries, dict):
        raise DataError(f"boxes file {path} must contain a JSON object keyed by image id, "
                        f"found {type(entries).__name__}; restore it from the Kvasir-SEG release.")
    return entries


def scale_boxes(entry: dict[str, Any], image_size: tuple[int, int], path: Path, case_id: str) -> list[list[float]]:
    """Rescale one id's boxes from the size recorded in the boxes file to ``image_size`` (H, W)."""
    try:
        source_height = float(entry["height"])
        source_width = float(entry["width"])
        boxes = [[float(box[key]) for key in ("xmin", "ymin", "xmax", "ymax")] for box in entry["bbox"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"boxes file {path}: entry '{case_id}' is invalid ({type(error).__name__}: {error}); "
                        f"each entry needs height, width and a bbox list of xmin, ymin, xmax, ymax.") from error
    if source_height <= 0 or source_width <= 0:
        raise DataError(f"boxes file {path}: entry '{case_id}' has image size {source_width} x "
                        f"{source_height}; height and width must be positive.")
    scale_y = image_size[0] / source_height
    scale_x = image_size[1] / source_width
    return [[round(xmin * scale_x, 2), round(ymin * scale_y, 2), round(xmax * scale_x, 2), round(ymax * scale_y, 2)]
            for xmin, ymin, xmax, ymax in boxes]


class KvasirAdapter(DatasetAdapter):
    """Colonoscopy cases of Kvasir-SEG, with polyp masks and polyp boxes."""

    name = "kvasir"
    modality = "colonoscopy"
    label_set = ("polyp",)
    default_folder = "Kvasir-SEG"

    def load_cases(self) -> list[MdsSample]:
        """Read every image that has a mask; images without one are skipped with a warning."""
        image_folder = self.root / "images"
        if not image_folder.is_dir():
            require_cases([], self.root, self.name, self.default_folder, expected="images/ and masks/ folders")
        mask_folder = require_folder(self.root / "masks", self.name, self.default_folder,
                                     "a masks/ folder beside images/")
        boxes_path = self.root / BOXES_FILE
        boxes = read_boxes_file(boxes_path)

        cases: list[MdsSample] = []
        missing_masks: list[str] = []
        image_paths = [path for path in image_folder.iterdir() if path.suffix.lower() in _IMAGE_SUFFIXES]
        for image_path in sorted(image_paths, key=lambda path: natural_key(path.stem)):
            case_id = image_path.stem
            mask_path = _find_file(mask_folder, case_id)
            if mask_path is None:
                missing_masks.append(case_id)
                continue
            image = read_image(image_path)
            mask = read_mask(mask_path, threshold=MASK_THRESHOLD)
            check_mask_size(image, mask, mask_path)
            meta: dict[str, Any] = {}
            if case_id in boxes:
                meta["boxes"] = scale_boxes(boxes[case_id], image.shape[:2], boxes_path, case_id)
            cases.append(MdsSample(
                case_id=case_id,
                dataset=self.name,
                modality=self.modality,
                image=image,
                mask=mask,
                label="polyp",
                label_set=self.label_set,
                group=case_id,
                source=str(image_path),
                meta=meta,
            ))
        warn_skipped(logger, self.name, "without a mask file", missing_masks)
        if boxes:
            without_boxes = sum("boxes" not in case.meta for case in cases)
            if without_boxes:
                logger.warning("kvasir: %d case(s) have no entry in %s and carry no boxes", without_boxes, boxes_path)
        return require_cases(cases, self.root, self.name, self.default_folder)
