"""Diagnosis chain-of-thought (CoT) generators: the interface.

A generator writes the target answer of a training sample: modality, then
findings, then the diagnosis, then ``[SEG]``. The answer format is a
contract shared with :func:`parse_diagnosis`, which reads the diagnosis back
from generated text: the diagnosis follows the marker ``Diagnosis:``.
"""

from __future__ import annotations

from typing import ClassVar

from .sample import MdsSample

DIAGNOSIS_MARKER = "Diagnosis:"


class CotGenerator:
    """Base class of chain-of-thought generators."""

    name: ClassVar[str]

    def generate(self, sample: MdsSample) -> str:
        """Write the target answer for ``sample``; it must contain ``[SEG]``."""
        raise NotImplementedError


def parse_diagnosis(text: str, label_set: tuple[str, ...]) -> str | None:
    """Read the diagnosis from an answer; None when it names no valid label."""
    raise NotImplementedError
