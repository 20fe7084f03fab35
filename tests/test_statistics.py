"""Bootstrap intervals and paired comparisons against known cases."""

from __future__ import annotations

import numpy as np
import pytest

from mdskit.metrics import SampleResult, summarize
from mdskit.plugins import load_plugins
from mdskit.statistics import (METRICS, SampleTable, UnpairedSamplesError, bootstrap_interval, metric_values,
                               paired_comparison, percentiles, point_estimate, resample_indices)

LABEL_SETS = {"ph2": ["common nevus", "atypical nevus", "melanoma"], "busi": ["normal", "benign", "malignant"]}


def record(index: int, dataset: str, intersection: int, union: int, predicted: int, true: int, label: str,
           predicted_label: str | None) -> dict:
    return {"id": f"{dataset}/{index:03d}", "dataset": dataset, "intersection": intersection, "union": union,
            "predicted_area": predicted, "true_area": true, "true_diagnosis": label,
            "predicted_diagnosis": predicted_label}


def random_records(seed: int, count: int = 40) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        dataset = "ph2" if index % 2 else "busi"
        labels = LABEL_SETS[dataset]
        true_area = int(rng.integers(0, 50))
        predicted_area = int(rng.integers(0, 50))
        intersection = int(rng.integers(0, min(true_area, predicted_area) + 1))
        union = true_area + predicted_area - intersection
        label = labels[int(rng.integers(0, len(labels)))]
        guess = rng.choice([*labels, None])
        records.append(record(index, dataset, intersection, union, predicted_area, true_area, label, guess))
    return records


def as_results(records: list[dict]) -> list[SampleResult]:
    return [SampleResult(item["id"], item["dataset"], item["true_diagnosis"], tuple(LABEL_SETS[item["dataset"]]),
                         item["predicted_diagnosis"], item["intersection"], item["union"], item["predicted_area"],
                         item["true_area"]) for item in records]


@pytest.fixture(scope="module")
def metric_plugins():
    components, _ = load_plugins()
    return [components.get("metric", name)() for name in METRICS]


def test_point_estimates_match_run_metrics(metric_plugins):
    records = random_records(1)
    table = SampleTable.from_records(records, LABEL_SETS)
    expected = summarize(as_results(records), metric_plugins)["pooled"]
    for metric in METRICS:
        assert point_estimate(table, metric) == pytest.approx(expected[metric], abs=1e-12), metric


def test_resampled_values_match_run_metrics(metric_plugins):
    records = sorted(random_records(2), key=lambda item: item["id"])
    table = SampleTable.from_records(records, LABEL_SETS)
    indices = resample_indices(len(records), 5, seed=3)
    for metric, plugin in zip(METRICS, metric_plugins):
        values = metric_values(table, metric, indices)
        for row, value in zip(indices, values):
            resampled = as_results([records[index] for index in row])
            assert value == pytest.approx(plugin.compute(resampled), abs=1e-12), metric


def test_interval_of_two_samples_by_hand():
    # IoU 0 and 1: resampled means are 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0 and 1.
    records = [record(0, "ph2", 0, 10, 5, 5, "melanoma", "melanoma"), record(1, "ph2", 10, 10, 10, 10,
                                                                            "melanoma", "melanoma")]
    interval = bootstrap_interval(SampleTable.from_records(records, LABEL_SETS), "giou", resamples=4000, seed=0)
    assert interval.value == 0.5
    assert interval.low == 0.0
    assert interval.high == 1.0
    assert interval.n == 2


def test_constant_values_give_a_point_interval():
    records = [record(index, "busi", 5, 10, 5, 10, "benign", "benign") for index in range(20)]
    table = SampleTable.from_records(records, LABEL_SETS)
    for metric, expected in (("giou", 0.5), ("ciou", 0.5), ("accuracy", 1.0)):
        interval = bootstrap_interval(table, metric)
        assert (interval.value, interval.low, interval.high) == pytest.approx((expected, expected, expected))


def test_interval_contains_the_estimate_and_is_reproducible():
    table = SampleTable.from_records(random_records(4), LABEL_SETS)
    for metric in METRICS:
        first = bootstrap_interval(table, metric, seed=7)
        second = bootstrap_interval(table, metric, seed=7)
        assert first == second
        assert first.low <= first.value <= first.high, metric


def test_identical_methods_are_not_significant():
    table = SampleTable.from_records(random_records(5), LABEL_SETS)
    for metric in METRICS:
        comparison = paired_comparison(table, table, metric)
        assert comparison.difference == 0.0
        assert comparison.low == 0.0
        assert comparison.high == 0.0
        assert not comparison.significant
        if comparison.wilcoxon_p is not None:
            assert comparison.wilcoxon_p == 1.0


def test_constant_shift_is_significant():
    rng = np.random.default_rng(6)
    worse, better = [], []
    for index in range(30):
        union = 100
        base = int(rng.integers(10, 60))
        worse.append(record(index, "busi", base, union, base, union, "benign", "benign"))
        better.append(record(index, "busi", base + 20, union, base + 20, union, "benign", "benign"))
    table_better = SampleTable.from_records(better, LABEL_SETS)
    table_worse = SampleTable.from_records(worse, LABEL_SETS)
    comparison = paired_comparison(table_better, table_worse, "giou")
    assert comparison.difference == pytest.approx(0.2)
    assert comparison.low == pytest.approx(0.2)
    assert comparison.high == pytest.approx(0.2)
    assert comparison.significant
    assert comparison.wilcoxon_p < 1e-4
    ciou = paired_comparison(table_better, table_worse, "ciou")
    assert ciou.significant and ciou.wilcoxon_p is None


def test_noisy_small_difference_is_within_noise():
    rng = np.random.default_rng(8)
    first, second = [], []
    for index in range(12):
        union = 100
        a, b = (int(value) for value in rng.integers(0, 100, size=2))
        first.append(record(index, "ph2", a, union, a, union, "melanoma", "melanoma"))
        second.append(record(index, "ph2", b, union, b, union, "melanoma", "melanoma"))
    comparison = paired_comparison(SampleTable.from_records(first, LABEL_SETS),
                                   SampleTable.from_records(second, LABEL_SETS), "dice")
    assert comparison.low < 0 < comparison.high
    assert not comparison.significant


def test_unpaired_samples_raise():
    records = random_records(9, count=6)
    with pytest.raises(UnpairedSamplesError, match="same samples"):
        paired_comparison(SampleTable.from_records(records, LABEL_SETS),
                          SampleTable.from_records(records[:-1], LABEL_SETS), "giou")


def test_macro_f1_counts_every_label_of_the_set():
    # Only 'benign' occurs and is always right: F1 1 for it, 0 for the two absent labels.
    records = [record(index, "busi", 1, 1, 1, 1, "benign", "benign") for index in range(4)]
    assert point_estimate(SampleTable.from_records(records, LABEL_SETS), "macro_f1") == pytest.approx(1 / 3)


def test_percentiles():
    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0]) == [3.0, pytest.approx(4.6)]
    assert percentiles([]) == [None, None]
