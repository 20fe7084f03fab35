"""First-party mdskit plugin: metrics."""

from .metrics import Accuracy, CIoU, Dice, GIoU, MacroF1

__all__ = ["Accuracy", "CIoU", "Dice", "GIoU", "MacroF1"]
