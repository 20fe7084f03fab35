"""Segmentation and diagnosis metrics over lists of :class:`SampleResult`.

The conventions (empty masks, missing diagnoses, pooling) are those stated
in :mod:`mdskit.metrics`. Every metric of an empty result list is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

from mdskit.metrics import Metric, SampleResult

NO_CLASS = -1
"""Class index of a prediction that names no label of its dataset. It matches no true class."""


class GIoU(Metric):
    """Mean of per-sample IoU, where a sample with both masks empty scores 1.0."""

    name = "giou"

    def compute(self, results: Sequence[SampleResult]) -> float:
        if not results:
            return float("nan")
        return float(np.mean([result.iou for result in results]))


class CIoU(Metric):
    """Total intersection over total union, or 1.0 when every mask of the split is empty."""

    name = "ciou"

    def compute(self, results: Sequence[SampleResult]) -> float:
        if not results:
            return float("nan")
        intersection = sum(result.intersection for result in results)
        union = sum(result.union for result in results)
        return 1.0 if union == 0 else intersection / union


class Dice(Metric):
    """Mean of per-sample Dice, where a sample with both masks empty scores 1.0."""

    name = "dice"

    def compute(self, results: Sequence[SampleResult]) -> float:
        if not results:
            return float("nan")
        return float(np.mean([result.dice for result in results]))


class Accuracy(Metric):
    """Share of samples whose parsed diagnosis equals the label, where a missing diagnosis is wrong."""

    name = "accuracy"

    def compute(self, results: Sequence[SampleResult]) -> float:
        if not results:
            return float("nan")
        return float(np.mean([result.correct for result in results]))


class MacroF1(Metric):
    """F1 averaged over the classes of the results' datasets.

    The classes are the (dataset, label) pairs of every dataset's label set,
    so for one dataset they are its labels, and 'normal' in two datasets is
    two classes. A label with no true and no predicted sample scores F1 0.
    A prediction that is None, or names no label of its own dataset, counts
    as a false negative of the true class and a false positive of no class.
    """

    name = "macro_f1"

    def compute(self, results: Sequence[SampleResult]) -> float:
        if not results:
            return float("nan")
        class_index = _class_index(results)
        y_true = [class_index[(result.dataset, result.label)] for result in results]
        y_pred = [class_index.get((result.dataset, result.predicted_label), NO_CLASS) for result in results]
        return float(f1_score(y_true, y_pred, labels=list(range(len(class_index))),
                              average="macro", zero_division=0))


def _class_index(results: Sequence[SampleResult]) -> dict[tuple[str, str], int]:
    """Number the (dataset, label) pairs of every dataset's label set, datasets in sorted order.

    Raises:
        ValueError: Two results of one dataset carry different label sets, or
            a result's true label is not in its label set.
    """
    label_sets: dict[str, tuple[str, ...]] = {}
    for result in results:
        known = label_sets.setdefault(result.dataset, result.label_set)
        if known != result.label_set:
            raise ValueError(
                f"{result.uid}: label set {result.label_set} differs from {known} of another "
                f"'{result.dataset}' sample. Give every sample of a dataset the same label set.")
        if result.label not in result.label_set:
            raise ValueError(
                f"{result.uid}: true label '{result.label}' is not in the label set {result.label_set}. "
                "Add it to the dataset's label set.")

    pairs = [(dataset, label) for dataset in sorted(label_sets) for label in dict.fromkeys(label_sets[dataset])]
    return {pair: index for index, pair in enumerate(pairs)}
