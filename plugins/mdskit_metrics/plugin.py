"""Registers the first-party metrics with mdskit."""

from __future__ import annotations

from mdskit.plugins import hookimpl

from .metrics import Accuracy, CIoU, Dice, GIoU, MacroF1


@hookimpl
def mdskit_metrics() -> list[type]:
    """Return the gIoU, cIoU, Dice, accuracy and macro-F1 metric classes."""
    return [GIoU, CIoU, Dice, Accuracy, MacroF1]
