"""Confidence intervals and paired comparisons over per-sample results.

Every interval is a percentile bootstrap over samples with a fixed seed.
Each resample draws n samples with replacement and recomputes the metric
from them. So metrics that are not per-sample means get intervals too:
cIoU is the ratio of summed intersections and unions, and macro-F1 comes
from class counts. Paired comparisons apply the same resampled indices to both
methods, which must have been scored on the same samples, and bootstrap
the difference. For the per-sample metrics (gIoU, Dice, accuracy) the
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, zero
differences dropped) is reported beside it.

A difference counts as significant when its bootstrap interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

METRICS = ("giou", "ciou", "dice", "accuracy", "macro_f1")
PER_SAMPLE_METRICS = ("giou", "dice", "accuracy")
DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
NO_CLASS = -1


@dataclass(frozen=True)
class SampleTable:
    """Per-sample arrays of one entry on one set of samples, in a fixed sample order.

    Attributes:
        ids: Sample ids, ``dataset/case_id``.
        intersection, union, predicted_area, true_area: Pixel counts.
        true_class: Index of the sample's (dataset, label) class.
        predicted_class: Index of the predicted (dataset, label) class, or
            -1 when the predicted diagnosis is no label of the sample's dataset.
        num_classes: Number of (dataset, label) classes over the datasets'
            whole label sets, as the macro-F1 metric counts them.
    """

    ids: tuple[str, ...]
    intersection: np.ndarray
    union: np.ndarray
    predicted_area: np.ndarray
    true_area: np.ndarray
    true_class: np.ndarray
    predicted_class: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], label_sets: dict[str, Sequence[str]]) -> SampleTable:
        """Build the table from ``predictions.jsonl`` records, sorted by id.

        Args:
            records: Records with ``id``, ``dataset``, ``true_diagnosis``,
                ``predicted_diagnosis`` and the four pixel counts.
            label_sets: Label set of each dataset of the records.
        """
        records = sorted(records, key=lambda record: record["id"])
        datasets = sorted({record["dataset"] for record in records})
        classes = {(dataset, label): index for index, (dataset, label) in enumerate(
            (dataset, label) for dataset in datasets for label in dict.fromkeys(label_sets[dataset]))}

        def column(key: str) -> np.ndarray:
            return np.array([record[key] for record in records], dtype=np.float64)

        return cls(
            ids=tuple(record["id"] for record in records),
            intersection=column("intersection"), union=column("union"),
            predicted_area=column("predicted_area"), true_area=column("true_area"),
            true_class=np.array([classes[(record["dataset"], record["true_diagnosis"])] for record in records],
                                dtype=np.int64),
            predicted_class=np.array([classes.get((record["dataset"], record["predicted_diagnosis"]), NO_CLASS)
                                      for record in records], dtype=np.int64),
            num_classes=len(classes),
        )

    def per_sample(self, metric: str) -> np.ndarray:
        """Per-sample values of gIoU (IoU), Dice or accuracy (0 or 1)."""
        if metric == "giou":
            return np.where(self.union == 0, 1.0, self.intersection / np.maximum(self.union, 1))
        if metric == "dice":
            total = self.predicted_area + self.true_area
            return np.where(total == 0, 1.0, 2 * self.intersection / np.maximum(total, 1))
        if metric == "accuracy":
            return (self.predicted_class == self.true_class).astype(np.float64)
        raise ValueError(f"{metric} is not a per-sample metric; choose one of {', '.join(PER_SAMPLE_METRICS)}")


def metric_values(table: SampleTable, metric: str, indices: np.ndarray) -> np.ndarray:
    """Compute ``metric`` on each row of resampled ``indices`` (R x n); returns R values."""
    if metric in PER_SAMPLE_METRICS:
        return table.per_sample(metric)[indices].mean(axis=1)
    if metric == "ciou":
        union = table.union[indices].sum(axis=1)
        return np.where(union == 0, 1.0, table.intersection[indices].sum(axis=1) / np.maximum(union, 1))
    if metric == "macro_f1":
        return _macro_f1(table, indices)
    raise ValueError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")


def _macro_f1(table: SampleTable, indices: np.ndarray) -> np.ndarray:
    """Macro-F1 over every class, a class with no true and no predicted sample scoring 0."""
    classes = np.arange(table.num_classes)
    true = table.true_class[indices][..., None] == classes
    predicted = table.predicted_class[indices][..., None] == classes
    true_positive = (true & predicted).sum(axis=1)
    false_positive = (~true & predicted).sum(axis=1)
    false_negative = (true & ~predicted).sum(axis=1)
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = np.where(denominator == 0, 0.0, 2 * true_positive / np.maximum(denominator, 1))
    return f1.mean(axis=1)


def point_estimate(table: SampleTable, metric: str) -> float:
    """Compute the metric on all samples, as ``mdskit run`` does."""
    return float(metric_values(table, metric, np.arange(len(table))[None, :])[0])


def resample_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    """Return ``resamples`` x ``count`` sample indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


@dataclass(frozen=True)
class Interval:
    """A metric value with its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_interval(table: SampleTable, metric: str, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       level: float = DEFAULT_LEVEL) -> Interval:
    """Percentile bootstrap interval of ``metric`` over samples; NaN for an empty table."""
    if len(table) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    values = metric_values(table, metric, resample_indices(len(table), resamples, seed))
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point_estimate(table, metric), float(low), float(high), len(table))


@dataclass(frozen=True)
class Comparison:
    """Paired difference ``a - b`` of one metric on the same samples.

    Attributes:
        difference: Metric of a minus metric of b on all samples.
        low, high: Percentile bootstrap interval of the difference.
        wilcoxon_p: Two-sided Wilcoxon signed-rank p-value of the
            per-sample differences (1.0 when every difference is 0), or
            None for cIoU and macro-F1, which have no per-sample values.
        significant: Whether the interval excludes 0.
    """

    difference: float
    low: float
    high: float
    wilcoxon_p: float | None
    n: int

    @property
    def significant(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {"difference": self.difference, "low": self.low, "high": self.high, "wilcoxon_p": self.wilcoxon_p,
                "n": self.n, "significant": self.significant}


class UnpairedSamplesError(ValueError):
    """Two tables that do not hold the same samples, so they cannot be compared pairwise."""


def paired_comparison(table_a: SampleTable, table_b: SampleTable, metric: str,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = DEFAULT_LEVEL) -> Comparison:
    """Paired bootstrap (and, for per-sample metrics, Wilcoxon) comparison of a and b on the same samples.

    Raises:
        UnpairedSamplesError: The tables hold different sample ids.
    """
    if table_a.ids != table_b.ids:
        only_a = sorted(set(table_a.ids) - set(table_b.ids))[:3]
        only_b = sorted(set(table_b.ids) - set(table_a.ids))[:3]
        raise UnpairedSamplesError(f"paired comparison needs the same samples; only in a: {only_a}, only in b: {only_b}")
    count = len(table_a)
    if count == 0:
        return Comparison(float("nan"), float("nan"), float("nan"), None, 0)
    indices = resample_indices(count, resamples, seed)
    differences = metric_values(table_a, metric, indices) - metric_values(table_b, metric, indices)
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2])
    difference = point_estimate(table_a, metric) - point_estimate(table_b, metric)
    return Comparison(difference, float(low), float(high), _wilcoxon(table_a, table_b, metric), count)


def _wilcoxon(table_a: SampleTable, table_b: SampleTable, metric: str) -> float | None:
    if metric not in PER_SAMPLE_METRICS:
        return None
    differences = table_a.per_sample(metric) - table_b.per_sample(metric)
    if not np.any(differences != 0):
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


def percentiles(values: Sequence[float], quantiles: Sequence[float] = (0.5, 0.9)) -> list[float | None]:
    """Quantiles of ``values`` (linear interpolation); None for each when ``values`` is empty."""
    if len(values) == 0:
        return [None for _ in quantiles]
    return [float(value) for value in np.quantile(np.asarray(values, dtype=np.float64), quantiles)]
