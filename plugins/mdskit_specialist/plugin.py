"""Hook implementations of the specialist plugin."""

from __future__ import annotations

from mdskit.plugins import hookimpl

from .model import SegmentationClassifier


@hookimpl
def mdskit_specialists() -> list[type]:
    """Return the specialist model classes."""
    return [SegmentationClassifier]
