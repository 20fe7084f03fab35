"""Shenzhen chest X-ray set (Jaeger et al., QIMS 2014) with lung masks.

Layout of the public release with the lung-mask annotation::

    ChinaSet_AllFiles/CXR_png/CHNCXR_nnnn_L.png
    ChinaSet_AllFiles/mask/CHNCXR_nnnn_L_mask.png
    ChinaSet_AllFiles/ClinicalReadings/CHNCXR_nnnn_L.txt   (optional)

The digit ``L`` is the diagnosis: 0 normal, 1 tuberculosis. The mask covers
both lungs, not the tuberculosis lesion. The lung annotation covers only
part of the full release, so images without a mask are skipped with one
warning. A clinical reading, when present, is stored in
``meta["clinical_reading"]``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mdskit.datasets import DatasetAdapter
from mdskit.imageio import check_mask_size, read_image, read_mask
from mdskit.sample import MdsSample

from .common import natural_key, require_cases, require_folder, warn_skipped

logger = logging.getLogger(__name__)

LABEL_BY_DIGIT = {"0": "normal", "1": "tuberculosis"}
_IMAGE_NAME = re.compile(r"^(?P<case>CHNCXR_\d+_(?P<digit>[01]))\.png$", re.IGNORECASE)


class ShenzhenAdapter(DatasetAdapter):
    """Chest X-ray cases of the Shenzhen set, with lung masks and the tuberculosis label."""

    name = "shenzhen"
    modality = "chest X-ray"
    label_set = ("normal", "tuberculosis")
    default_folder = "ChinaSet_AllFiles"

    def load_cases(self) -> list[MdsSample]:
        """Read every image whose name carries a label digit and that has a lung mask."""
        image_folder = self.root / "CXR_png"
        if not image_folder.is_dir():
            require_cases([], self.root, self.name, self.default_folder, expected="CXR_png/ and mask/ folders")
        mask_folder = require_folder(self.root / "mask", self.name, self.default_folder,
                                     "a mask/ folder of lung masks beside CXR_png/")
        readings_folder = self.root / "ClinicalReadings"

        cases: list[MdsSample] = []
        missing_masks: list[str] = []
        unnamed: list[str] = []
        for image_path in sorted(image_folder.iterdir(), key=lambda path: natural_key(path.name)):
            if image_path.suffix.lower() != ".png":
                continue
            match = _IMAGE_NAME.match(image_path.name)
            if match is None:
                unnamed.append(image_path.name)
                continue
            case_id = match["case"]
            mask_path = mask_folder / f"{case_id}_mask.png"
            if not mask_path.is_file():
                missing_masks.append(case_id)
                continue
            cases.append(self._load_case(case_id, LABEL_BY_DIGIT[match["digit"]], image_path, mask_path,
                                         readings_folder / f"{case_id}.txt"))
        warn_skipped(logger, self.name, "whose file name lacks the label suffix _0 or _1", unnamed)
        warn_skipped(logger, self.name, "without a lung mask file", missing_masks)
        return require_cases(cases, self.root, self.name, self.default_folder)

    def _load_case(self, case_id: str, label: str, image_path: Path, mask_path: Path,
                   reading_path: Path) -> MdsSample:
        image = read_image(image_path)
        mask = read_mask(mask_path)
        check_mask_size(image, mask, mask_path)
        meta = {"mask_target": "lungs"}
        if reading_path.is_file():
            meta["clinical_reading"] = " ".join(reading_path.read_text(encoding="latin-1").split())
        return MdsSample(
            case_id=case_id,
            dataset=self.name,
            modality=self.modality,
            image=image,
            mask=mask,
            label=label,
            label_set=self.label_set,
            group=case_id,
            source=str(image_path),
            meta=meta,
        )
