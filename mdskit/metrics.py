"""Metrics: per-sample results and the metric interface.

Conventions (stated in every ``metrics.json``):

- A predicted mask is ``logits > 0``.
- gIoU is the mean of per-sample IoU; a sample whose prediction and ground
  truth are both empty scores 1.0 (LISA's convention).
- cIoU is the total intersection over the total union of a split, 1.0 when
  the total union is 0 (every mask of the split empty).
- Dice is the mean of per-sample Dice, 1.0 when both masks are empty.
- A sample with no ``[SEG]`` is scored with an empty mask; a sample whose
  answer names no valid diagnosis counts as wrong. Nothing is dropped.
- Macro-F1 averages F1 over a dataset's whole label set, so a label with
  no true and no predicted sample scores 0. Pooled over several datasets,
  the classes are (dataset, label) pairs.
- Every metric of an empty result list is NaN.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

CONVENTIONS = {
    "mask": "prediction = logits > 0, compared at the image's own resolution",
    "giou": "mean of per-sample IoU; both masks empty scores 1.0 (LISA)",
    "ciou": "total intersection / total union over the split; 1.0 when the total union is 0",
    "dice": "mean of per-sample Dice; both masks empty scores 1.0",
    "accuracy": "share of samples whose parsed diagnosis equals the label; no valid diagnosis counts as wrong",
    "macro_f1": ("F1 averaged over the dataset's label set, a label with no true and no predicted sample "
                 "scoring 0; pooled over (dataset, label) pairs"),
    "failures": "samples without [SEG] get an empty mask and are scored, never dropped",
    "pooled": "count-weighted over all samples; per-dataset rows are each dataset alone",
}


@dataclass
class SampleResult:
    """The scored outcome of one sample.

    Attributes:
        uid: ``dataset/case_id``.
        dataset: Dataset name.
        label: True diagnosis.
        label_set: The dataset's diagnosis labels.
        predicted_label: Parsed diagnosis, or None when the answer had none.
        intersection: Pixels in both the predicted and the true mask.
        union: Pixels in either mask.
        predicted_area: Pixels in the predicted mask.
        true_area: Pixels in the true mask.
    """

    uid: str
    dataset: str
    label: str
    label_set: tuple[str, ...]
    predicted_label: str | None
    intersection: int
    union: int
    predicted_area: int
    true_area: int

    @classmethod
    def from_masks(cls, uid: str, dataset: str, label: str, label_set: tuple[str, ...],
                   predicted_label: str | None, predicted: np.ndarray, truth: np.ndarray) -> SampleResult:
        """Score one sample from H x W boolean masks of the same shape."""
        if predicted.shape != truth.shape:
            raise ValueError(f"{uid}: predicted mask {predicted.shape} and true mask {truth.shape} differ in size.")
        predicted = predicted.astype(bool)
        truth = truth.astype(bool)
        return cls(uid, dataset, label, tuple(label_set), predicted_label,
                   intersection=int(np.logical_and(predicted, truth).sum()),
                   union=int(np.logical_or(predicted, truth).sum()),
                   predicted_area=int(predicted.sum()), true_area=int(truth.sum()))

    @property
    def iou(self) -> float:
        """Intersection over union; 1.0 when both masks are empty."""
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def dice(self) -> float:
        """Dice coefficient; 1.0 when both masks are empty."""
        total = self.predicted_area + self.true_area
        return 1.0 if total == 0 else 2 * self.intersection / total

    @property
    def correct(self) -> bool:
        """Whether the parsed diagnosis equals the label."""
        return self.predicted_label is not None and self.predicted_label == self.label


class Metric:
    """Base class of metrics over a list of sample results."""

    name: ClassVar[str]

    def compute(self, results: Sequence[SampleResult]) -> float:
        """The metric's value over ``results``; NaN when ``results`` is empty."""
        raise NotImplementedError


POOLED = "pooled"
"""Key of the row that :func:`summarize` computes over all samples together."""


def summarize(results: Sequence[SampleResult], metrics: Sequence[Metric]) -> dict[str, dict[str, float | int]]:
    """Compute every metric per dataset and pooled over all samples.

    Args:
        results: Scored samples of one or more datasets.
        metrics: Metric instances, whose names become the row keys.

    Returns:
        ``{dataset: {metric_name: value, ..., "n": count}, ..., "pooled": {...}}``
        with datasets in sorted order and ``"pooled"`` last. The pooled row
        treats all samples as one split, so it is weighted by sample count.
        With no results, only the pooled row is returned, with NaN values
        and ``n`` 0.

    Raises:
        ValueError: Two metrics share a name, a metric is named ``"n"``, or
            a dataset is named ``"pooled"``.
    """
    names = [metric.name for metric in metrics]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"metric names must be unique, got {', '.join(duplicates)} more than once.")
    if "n" in names:
        raise ValueError("a metric is named 'n', which is the sample-count key of a summary row. Rename the metric.")

    by_dataset: dict[str, list[SampleResult]] = defaultdict(list)
    for result in results:
        by_dataset[result.dataset].append(result)
    if POOLED in by_dataset:
        raise ValueError(f"dataset name '{POOLED}' is reserved for the pooled summary row. Rename the dataset.")

    summary = {dataset: _summary_row(by_dataset[dataset], metrics) for dataset in sorted(by_dataset)}
    summary[POOLED] = _summary_row(results, metrics)
    return summary


def _summary_row(results: Sequence[SampleResult], metrics: Sequence[Metric]) -> dict[str, float | int]:
    row: dict[str, float | int] = {metric.name: float(metric.compute(results)) for metric in metrics}
    row["n"] = len(results)
    return row
