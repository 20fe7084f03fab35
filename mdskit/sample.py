"""The MDS sample: one image, its mask, a question and the target answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MdsSample:
    """One case of a medical diagnosis segmentation dataset.

    Attributes:
        case_id: Identifier that is unique within ``dataset``.
        dataset: Name of the dataset adapter that produced the sample.
        modality: Imaging modality, for example ``"ultrasound"``.
        image: H x W x 3 uint8 RGB array in the image's own pixel frame.
        mask: H x W bool array, True on the finding; all False when the image
            shows no finding (for example a normal breast ultrasound).
        label: The diagnosis, one of ``label_set``.
        label_set: Every diagnosis the dataset can have, in a fixed order.
        question: The clinical question asked about the image.
        answer: The target answer: chain of thought, diagnosis and ``[SEG]``.
        group: Key shared by near-duplicate cases; splits never divide a group.
        source: Path of the image file, or a description for generated data.
        meta: Dataset-specific extras (boxes, spreadsheet columns, ...).
    """

    case_id: str
    dataset: str
    modality: str
    image: np.ndarray
    mask: np.ndarray
    label: str
    label_set: tuple[str, ...]
    question: str = ""
    answer: str = ""
    group: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        """Identifier that is unique across datasets: ``dataset/case_id``."""
        return f"{self.dataset}/{self.case_id}"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])
