"""Deterministic train/val/test splits that never divide a group of near-duplicates."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdskit.datasets import SPLITS, split_cases
from mdskit.errors import DataError
from mdskit.sample import MdsSample
from mdskit_datasets.busi import BusiAdapter
from mdskit_datasets.phantom import PhantomAdapter

_EMPTY_IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)
_EMPTY_MASK = np.zeros((2, 2), dtype=bool)


def _case(case_id: str, label: str = "a", group: str = "", dataset: str = "toy") -> MdsSample:
    return MdsSample(case_id=case_id, dataset=dataset, modality="test", image=_EMPTY_IMAGE, mask=_EMPTY_MASK,
                     label=label, label_set=("a", "b", "c"), group=group)


def _ids(splits) -> dict[str, list[str]]:
    return {name: [case.uid for case in cases] for name, cases in splits.items()}


def _check_partition(cases, splits) -> None:
    """Every case lands in exactly one split, and no group spans two splits."""
    assert set(splits) == set(SPLITS)
    assigned = Counter(case.uid for cases_in_split in splits.values() for case in cases_in_split)
    assert assigned == Counter(case.uid for case in cases)
    split_of_group: dict[tuple[str, str], set[str]] = {}
    for name, cases_in_split in splits.items():
        for case in cases_in_split:
            split_of_group.setdefault((case.dataset, case.group or case.case_id), set()).add(name)
    spanning = {group: names for group, names in split_of_group.items() if len(names) > 1}
    assert not spanning


def test_split_deterministic_and_order_free():
    cases = [_case(f"c{index}", label="ab"[index % 2], group=f"g{index // 3}") for index in range(60)]
    first = _ids(split_cases(cases))
    shuffled = list(cases)
    random.Random(7).shuffle(shuffled)
    assert _ids(split_cases(shuffled)) == first
    assert _ids(split_cases(list(reversed(cases)))) == first


def test_split_partition_with_groups():
    cases = [_case(f"c{index}", label="abc"[index % 3], group=f"g{index // 4}") for index in range(90)]
    _check_partition(cases, split_cases(cases))


def test_split_group_with_mixed_labels_stays_together():
    cases = [_case(f"c{index}", label="a") for index in range(20)]
    cases += [_case("x1", label="a", group="dup"), _case("x2", label="b", group="dup")]
    splits = split_cases(cases)
    homes = {name for name, members in splits.items() for case in members if case.group == "dup"}
    assert len(homes) == 1


def test_split_fractions_per_label():
    cases = [_case(f"c{index:03d}", label="ab"[index % 2]) for index in range(200)]
    splits = split_cases(cases)
    for label in "ab":
        counts = {name: sum(case.label == label for case in members) for name, members in splits.items()}
        assert counts == {"train": 60, "val": 20, "test": 20}


def test_split_pooled_equals_per_dataset():
    """A pooled list is split as if each dataset were split alone.

    The group keys of dataset "two" equal case ids of dataset "one", which
    must not merge their cases.
    """
    first_cases = [_case(f"c{index}", label="ab"[index % 2], dataset="one") for index in range(23)]
    second_cases = [_case(f"c{index}", label="a", dataset="two", group=f"c{index // 2}") for index in range(17)]
    pooled = split_cases(first_cases + second_cases)
    _check_partition(first_cases + second_cases, pooled)
    for dataset, cases in (("one", first_cases), ("two", second_cases)):
        alone = _ids(split_cases(cases))
        within = {name: [uid for uid in uids if uid.startswith(f"{dataset}/")] for name, uids in _ids(pooled).items()}
        assert within == alone


def test_split_empty_input():
    assert split_cases([]) == {"train": [], "val": [], "test": []}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.sampled_from("abc")), max_size=60))
def test_split_partition_property(groups_and_labels):
    cases = [_case(f"c{index}", label=label, group=f"g{group}")
             for index, (group, label) in enumerate(groups_and_labels)]
    splits = split_cases(cases)
    _check_partition(cases, splits)
    assert _ids(split_cases(list(reversed(cases)))) == _ids(splits)


def test_split_phantom():
    cases = PhantomAdapter(case_count=30).load_cases()
    splits = split_cases(cases)
    _check_partition(cases, splits)
    assert [len(splits[name]) for name in SPLITS] == [18, 6, 6]


def test_load_split_rejects_unknown_name():
    with pytest.raises(DataError, match=r"unknown split 'dev'; choose one of train, val, test"):
        PhantomAdapter(case_count=3).load_split("dev")


@pytest.mark.data
def test_split_busi_keeps_duplicates_together(dataset_folder):
    adapter = BusiAdapter(dataset_folder("busi"))
    cases = adapter.load_cases()
    splits = split_cases(cases)
    _check_partition(cases, splits)
    assert _ids(splits) == _ids(split_cases(adapter.load_cases()))
    for label, total in {"benign": 45, "malignant": 45, "normal": 30}.items():
        train = sum(case.label == label for case in splits["train"])
        assert abs(train - 0.6 * total) <= 2
    test_ids = {case.case_id for case in adapter.load_split("test")}
    assert test_ids == {case.case_id for case in splits["test"]}
