"""Metrics on hand-computed cases, and the per-dataset summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis.extra.numpy import arrays
from mdskit_metrics import Accuracy, CIoU, Dice, GIoU, MacroF1
from mdskit_metrics.plugin import mdskit_metrics

from mdskit.metrics import POOLED, SampleResult, summarize
from mdskit.registry import Components

BUSI_LABELS = ("benign", "malignant", "normal")
PH2_LABELS = ("normal", "atypical", "melanoma")
ALL_METRICS = [GIoU(), CIoU(), Dice(), Accuracy(), MacroF1()]


def mask(rows: list[str]) -> np.ndarray:
    """Build a bool mask from strings in which '#' marks a pixel."""
    return np.array([[char == "#" for char in row] for row in rows])


def scored(predicted: list[str], truth: list[str], uid: str = "busi/1") -> SampleResult:
    return SampleResult.from_masks(uid, "busi", "benign", BUSI_LABELS, "benign", mask(predicted), mask(truth))


def diagnosed(label: str, predicted: str | None, dataset: str = "busi",
              label_set: tuple[str, ...] = BUSI_LABELS, uid: str = "case") -> SampleResult:
    return SampleResult(f"{dataset}/{uid}", dataset, label, label_set, predicted,
                        intersection=0, union=0, predicted_area=0, true_area=0)


# --- segmentation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        (["..", ".."], ["..", ".."], 1.0),  # both empty: LISA scores 1.0
        (["..", ".."], ["#.", ".."], 0.0),  # only the prediction empty
        (["#.", ".."], ["..", ".."], 0.0),  # only the truth empty
        (["##", ".."], ["#.", "#."], 1 / 3),
    ],
)
def test_giou_single_sample(predicted, truth, expected):
    assert GIoU().compute([scored(predicted, truth)]) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        (["..", ".."], ["..", ".."], 1.0),
        (["..", ".."], ["#.", ".."], 0.0),
        (["#.", ".."], ["..", ".."], 0.0),
        (["##", ".."], ["#.", "#."], 0.5),
    ],
)
def test_dice_single_sample(predicted, truth, expected):
    assert Dice().compute([scored(predicted, truth)]) == pytest.approx(expected)


def test_giou_and_ciou_differ():
    # Sample a: intersection 2, union 6, IoU 1/3. Sample b: intersection 1, union 1, IoU 1.
    sample_a = scored(["##..", "##.."], [".##.", ".##."], uid="busi/a")
    sample_b = scored(["#...", "...."], ["#...", "...."], uid="busi/b")

    assert GIoU().compute([sample_a, sample_b]) == pytest.approx((1 / 3 + 1) / 2)
    assert CIoU().compute([sample_a, sample_b]) == pytest.approx(3 / 7)
    assert Dice().compute([sample_a, sample_b]) == pytest.approx((0.5 + 1) / 2)


def test_ciou_all_masks_empty():
    empty = scored(["..", ".."], ["..", ".."])

    assert CIoU().compute([empty, empty]) == 1.0


def test_ciou_empty_sample_adds_nothing():
    partial = scored(["##", ".."], ["#.", "#."], uid="busi/a")
    empty = scored(["..", ".."], ["..", ".."], uid="busi/b")

    assert CIoU().compute([partial, empty]) == pytest.approx(1 / 3)
    assert GIoU().compute([partial, empty]) == pytest.approx((1 / 3 + 1) / 2)


@given(arrays(bool, (3, 4)), arrays(bool, (3, 4)))
def test_segmentation_metrics_bounds(predicted, truth):
    result = SampleResult.from_masks("busi/1", "busi", "benign", BUSI_LABELS, None, predicted, truth)
    iou = GIoU().compute([result])
    dice = Dice().compute([result])

    assert 0.0 <= iou <= dice <= 1.0
    assert CIoU().compute([result]) == pytest.approx(iou)


# --- diagnosis ------------------------------------------------------------------------------------


def test_accuracy_counts_none_wrong():
    results = [diagnosed("benign", "benign"), diagnosed("malignant", None), diagnosed("normal", "benign"),
               diagnosed("normal", "normal")]

    assert Accuracy().compute(results) == pytest.approx(0.5)


def test_macro_f1_three_labels():
    pairs = [("benign", "benign"), ("benign", "malignant"), ("malignant", "malignant"),
             ("malignant", None), ("normal", "normal"), ("normal", "benign")]
    results = [diagnosed(label, predicted, uid=str(i)) for i, (label, predicted) in enumerate(pairs)]

    # benign: TP 1, FP 1, FN 1 -> 1/2. malignant: TP 1, FP 1, FN 1 (the None) -> 1/2.
    # normal: TP 1, FP 0, FN 1 -> 2/3.
    assert MacroF1().compute(results) == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)


def test_macro_f1_absent_label_scores_zero():
    results = [diagnosed("benign", "benign"), diagnosed("malignant", "malignant")]

    assert MacroF1().compute(results) == pytest.approx(2 / 3)


def test_macro_f1_none_is_no_class():
    results = [diagnosed("benign", None, label_set=("benign", "malignant")),
               diagnosed("malignant", "malignant", label_set=("benign", "malignant"))]

    # benign: FN 1 -> 0, and the None adds no false positive anywhere. malignant: 1.
    assert MacroF1().compute(results) == pytest.approx(0.5)


def test_macro_f1_label_outside_set_is_wrong():
    results = [diagnosed("benign", "melanoma", label_set=("benign", "malignant")),
               diagnosed("malignant", "malignant", label_set=("benign", "malignant"))]

    assert MacroF1().compute(results) == pytest.approx(0.5)
    assert Accuracy().compute(results) == pytest.approx(0.5)


def test_macro_f1_pooled_keeps_datasets_apart():
    busi = ("benign", "normal")
    ph2 = ("normal", "melanoma")
    results = [
        diagnosed("normal", "normal", "busi", busi, "1"),
        diagnosed("benign", "normal", "busi", busi, "2"),
        diagnosed("normal", "normal", "ph2", ph2, "1"),
        diagnosed("melanoma", "melanoma", "ph2", ph2, "2"),
    ]

    # busi/normal: TP 1, FP 1 -> 2/3. busi/benign: 0. ph2/normal: 1. ph2/melanoma: 1.
    # Merging the two 'normal' classes would give (0.8 + 0 + 1) / 3 = 0.6 instead.
    assert MacroF1().compute(results) == pytest.approx((2 / 3 + 0 + 1 + 1) / 4)


def test_macro_f1_inconsistent_label_sets():
    results = [diagnosed("benign", "benign", label_set=("benign", "malignant")),
               diagnosed("benign", "benign", label_set=("benign", "normal"))]

    with pytest.raises(ValueError, match="busi/case: label set .* differs from .* of another 'busi' sample"):
        MacroF1().compute(results)


def test_macro_f1_label_not_in_set():
    results = [diagnosed("cyst", "benign")]

    with pytest.raises(ValueError, match="busi/case: true label 'cyst' is not in the label set"):
        MacroF1().compute(results)


@pytest.mark.parametrize("metric", ALL_METRICS, ids=lambda metric: metric.name)
def test_metric_of_no_results_is_nan(metric):
    assert math.isnan(metric.compute([]))


# --- summary --------------------------------------------------------------------------------------


def test_summarize_layout_and_counts():
    hit = ["#.", ".."]
    miss = [".#", ".."]
    results = [
        SampleResult.from_masks("ph2/1", "ph2", "melanoma", PH2_LABELS, "normal", mask(miss), mask(hit)),
        SampleResult.from_masks("busi/1", "busi", "benign", BUSI_LABELS, "benign", mask(hit), mask(hit)),
        SampleResult.from_masks("busi/2", "busi", "normal", BUSI_LABELS, "normal", mask(hit), mask(hit)),
        SampleResult.from_masks("busi/3", "busi", "malignant", BUSI_LABELS, None, mask(hit), mask(hit)),
    ]

    summary = summarize(results, [GIoU(), Accuracy()])

    assert list(summary) == ["busi", "ph2", POOLED]
    assert summary["busi"] == {"giou": pytest.approx(1.0), "accuracy": pytest.approx(2 / 3), "n": 3}
    assert summary["ph2"] == {"giou": pytest.approx(0.0), "accuracy": pytest.approx(0.0), "n": 1}
    # Pooled is count-weighted: 3 of 4 masks are hits, not the mean (1.0 + 0.0) / 2 of the datasets.
    assert summary[POOLED] == {"giou": pytest.approx(0.75), "accuracy": pytest.approx(0.5), "n": 4}


def test_summarize_no_results():
    summary = summarize([], [GIoU()])

    assert list(summary) == [POOLED]
    assert summary[POOLED]["n"] == 0
    assert math.isnan(summary[POOLED]["giou"])


def test_summarize_rejects_reserved_dataset_name():
    results = [diagnosed("benign", "benign", dataset=POOLED)]

    with pytest.raises(ValueError, match="dataset name 'pooled' is reserved"):
        summarize(results, [Accuracy()])


def test_summarize_rejects_duplicate_metrics():
    with pytest.raises(ValueError, match="metric names must be unique, got giou"):
        summarize([], [GIoU(), GIoU()])


def test_summarize_rejects_metric_named_n():
    class Count(Accuracy):
        name = "n"

    with pytest.raises(ValueError, match="a metric is named 'n'"):
        summarize([], [Count()])


# --- plugin ---------------------------------------------------------------------------------------


def test_plugin_registers_metrics():
    components = Components()
    for metric in mdskit_metrics():
        components.register("metric", metric, "metrics")

    assert components.failures == []
    assert components.names("metric") == ["accuracy", "ciou", "dice", "giou", "macro_f1"]
