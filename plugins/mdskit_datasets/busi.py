"""BUSI: the Breast Ultrasound Images dataset (Al-Dhabyani et al., Data in Brief 2020).

Layout of the public release::

    Dataset_BUSI_with_GT/<class>/<class> (N).png          the image
    Dataset_BUSI_with_GT/<class>/<class> (N)_mask.png     the lesion mask
    Dataset_BUSI_with_GT/<class>/<class> (N)_mask_1.png   extra lesions, if any

``<class>`` is the diagnosis: benign, malignant or normal. A case with
several lesions has one mask file per lesion and its mask is their union.
Normal cases have an all-zero mask. The images are greyscale stored as RGB.
The release contains near-duplicate scans, and a few scans are reportedly
filed under both benign and malignant. Near-duplicates therefore share a
``group``, and groups whose members disagree on the label are dropped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from mdskit.datasets import DatasetAdapter
from mdskit.imageio import check_mask_size, read_image, read_mask
from mdskit.sample import MdsSample

from .common import natural_key, require_cases, warn_skipped
from .duplicates import assign_near_duplicate_groups, drop_conflicting_groups

logger = logging.getLogger(__name__)

_MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?\.png$", re.IGNORECASE)


class BusiAdapter(DatasetAdapter):
    """Breast ultrasound cases of BUSI, with lesion masks and near-duplicate groups."""

    name = "busi"
    modality = "ultrasound"
    label_set = ("benign", "malignant", "normal")
    default_folder = "Dataset_BUSI_with_GT"

    def load_cases(self) -> list[MdsSample]:
        """Read every case that has an image and at least one mask file."""
        class_folders = [self.root / label for label in self.label_set if (self.root / label).is_dir()]
        if not class_folders:
            require_cases([], self.root, self.name, self.default_folder,
                          expected="class folders benign/, malignant/ and normal/")
        missing_classes = [label for label in self.label_set if not (self.root / label).is_dir()]
        if missing_classes:
            logger.warning("busi: class folder(s) %s missing in %s; loading the other classes",
                           ", ".join(missing_classes), self.root)

        cases: list[MdsSample] = []
        missing_masks: list[str] = []
        for folder in class_folders:
            cases.extend(self._load_class(folder, missing_masks))
        warn_skipped(logger, self.name, "without a mask file", missing_masks)
        require_cases(cases, self.root, self.name, self.default_folder)

        shared_groups = assign_near_duplicate_groups(cases)
        if shared_groups:
            logger.info("busi: %d group(s) of near-duplicate images found", shared_groups)
        return drop_conflicting_groups(cases, logger, self.name)

    def _load_class(self, folder: Path, missing_masks: list[str]) -> list[MdsSample]:
        label = folder.name
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for path in folder.iterdir():
            if path.suffix.lower() != ".png" or not path.is_file():
                continue
            match = _MASK_NAME.match(path.name)
            if match:
                masks.setdefault(match["stem"], []).append(path)
            else:
                images[path.stem] = path

        orphans = sorted(set(masks) - set(images), key=natural_key)
        if orphans:
            logger.warning("busi: %d mask group(s) in %s have no image and are ignored: %s",
                           len(orphans), folder, ", ".join(orphans[:5]))

        cases = []
        for stem in sorted(images, key=natural_key):
            mask_paths = sorted(masks.get(stem, []), key=lambda path: natural_key(path.name))
            if not mask_paths:
                missing_masks.append(f"{label}/{stem}")
                continue
            cases.append(self._load_case(stem, label, images[stem], mask_paths))
        return cases

    def _load_case(self, stem: str, label: str, image_path: Path, mask_paths: list[Path]) -> MdsSample:
        image = read_image(image_path)
        mask = np.zeros(image.shape[:2], dtype=bool)
        for mask_path in mask_paths:
            lesion = read_mask(mask_path)
            check_mask_size(image, lesion, mask_path)
            mask |= lesion
        return MdsSample(
            case_id=stem,
            dataset=self.name,
            modality=self.modality,
            image=image,
            mask=mask,
            label=label,
            label_set=self.label_set,
            group=stem,
            source=str(image_path),
            meta={"mask_files": [path.name for path in mask_paths]},
        )
