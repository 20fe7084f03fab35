"""Diagnosis chain-of-thought (CoT) generators: the interface.

A generator writes the target answer of a training sample: modality, then
findings, then the diagnosis, then ``[SEG]``. The answer format is a
contract shared with :func:`parse_diagnosis`, which reads the diagnosis back
from generated text: the diagnosis follows the marker ``Diagnosis:``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

from . import SEG_TOKEN
from .errors import PluginError
from .questions import question_for
from .sample import MdsSample

DIAGNOSIS_MARKER = "Diagnosis:"

_MARKER_PATTERN = re.compile(r"diagnosis\s*:", re.IGNORECASE)
# The diagnosis ends at the first sentence end or line break after the marker.
_DIAGNOSIS_END = re.compile(r"[.;\n]")


class CotGenerator:
    """Base class of chain-of-thought generators."""

    name: ClassVar[str]

    def generate(self, sample: MdsSample) -> str:
        """Write the target answer for ``sample``; it must contain ``[SEG]``."""
        raise NotImplementedError


def _label_pattern(label: str) -> re.Pattern[str]:
    """Match ``label`` as whole words, case-insensitively, allowing any spaces or hyphens between words."""
    words = [re.escape(word) for word in label.split()]
    return re.compile(r"(?<![\w-])" + r"[\s-]+".join(words) + r"(?![\w-])", re.IGNORECASE)


def parse_diagnosis(text: str, label_set: tuple[str, ...]) -> str | None:
    """Read the diagnosis from an answer; None when it names no valid label.

    The diagnosis is the label named in the text between the first
    ``Diagnosis:`` marker (any case) and the next full stop, semicolon or
    line break. When several labels are named, the one that starts first
    wins, and at the same start the longest, so "atypical nevus" is never
    read as a shorter label it contains. The label is returned as spelled
    in ``label_set``.
    """
    marker = _MARKER_PATTERN.search(text)
    if marker is None:
        return None
    rest = text[marker.end():]
    end = _DIAGNOSIS_END.search(rest)
    segment = rest[:end.start()] if end else rest

    best: tuple[int, int, str] | None = None
    for label in sorted(label_set, key=len, reverse=True):
        match = _label_pattern(label).search(segment)
        if match is None:
            continue
        # Earlier start wins, then the longer label (labels are tried longest first).
        key = (match.start(), -len(label), label)
        if best is None or key < best:
            best = key
    return best[2] if best else None


def attach_text(samples: Iterable[MdsSample], generator: CotGenerator, seed: int = 0) -> list[MdsSample]:
    """Fill ``question`` and ``answer`` of every sample in place, and return the samples.

    The question comes from :func:`mdskit.questions.question_for` with
    ``seed``, the answer from ``generator``.

    Raises:
        PluginError: The generator wrote an answer without ``[SEG]``, or one
            from which :func:`parse_diagnosis` does not read back the label.
    """
    generator_name = getattr(generator, "name", type(generator).__name__)
    filled = []
    for sample in samples:
        answer = generator.generate(sample)
        if SEG_TOKEN not in answer:
            raise PluginError(f"chain-of-thought generator {generator_name!r} wrote an answer without "
                              f"{SEG_TOKEN} for {sample.uid}: {answer!r}; every answer must contain it.")
        parsed = parse_diagnosis(answer, sample.label_set)
        if parsed != sample.label:
            raise PluginError(f"chain-of-thought generator {generator_name!r} wrote an answer for "
                              f"{sample.uid} whose diagnosis reads as {parsed!r}, not the label "
                              f"{sample.label!r}: {answer!r}; write '{DIAGNOSIS_MARKER} {sample.label}.'")
        sample.question = question_for(sample, seed)
        sample.answer = answer
        filled.append(sample)
    return filled
