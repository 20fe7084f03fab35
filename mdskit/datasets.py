"""Dataset adapters: the interface, and deterministic splits.

An adapter reads one public dataset in its published folder layout and
returns :class:`~mdskit.sample.MdsSample` objects. Questions and target
answers are filled in later by :func:`mdskit.cot.attach_text`, so every
adapter gets the same templates and chain-of-thought generator.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

from .errors import DataError
from .sample import MdsSample

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


class DatasetAdapter:
    """Base class of dataset adapters.

    Subclasses set the class attributes and implement :meth:`load_cases`.

    Attributes:
        name: Registry name, also used in ``--data NAME=PATH``.
        modality: Imaging modality of every case.
        label_set: Every diagnosis label, in a fixed order.
        default_folder: Folder name of the public release, used to find the
            dataset below a data root.
        embedded: True for a dataset that is generated in memory and needs
            no folder; its constructor accepts ``root=None``.
        description: One line saying what the data is, shown when a run
            uses an embedded dataset.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    label_set: ClassVar[tuple[str, ...]]
    default_folder: ClassVar[str] = ""
    embedded: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"dataset folder {self.root} for '{self.name}' does not exist; "
                f"pass the folder of the public release with --data {self.name}=PATH."
            )

    def load_cases(self) -> list[MdsSample]:
        """Read every usable case, with image, mask, label and group."""
        raise NotImplementedError

    def load_split(self, split: str) -> list[MdsSample]:
        """Read the cases of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}.")
        return split_cases(self.load_cases())[split]


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_cases(cases: list[MdsSample]) -> dict[str, list[MdsSample]]:
    """Split cases into train, val and test, deterministically.

    Cases of one dataset that share a ``group`` always land in the same
    split, even when their labels differ. Groups are stratified by dataset
    and by the label of their first case in case-id order. Within each
    stratum, groups are ordered by a hash of their key and cut 60/20/20.
    The result depends neither on file order nor on the machine, and a
    list that pools several datasets is split per dataset.
    """
    groups: dict[tuple[str, str], list[MdsSample]] = defaultdict(list)
    for case in sorted(cases, key=lambda case: (case.dataset, case.case_id)):
        groups[(case.dataset, case.group or case.case_id)].append(case)
    keys_by_stratum: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for key, members in groups.items():
        keys_by_stratum[(key[0], members[0].label)].append(key)

    splits: dict[str, list[MdsSample]] = {name: [] for name in SPLITS}
    for (_, label), keys in sorted(keys_by_stratum.items()):
        keys.sort(key=lambda key: (_stable_hash(f"{label}/{key[1]}"), key))
        n_train = round(len(keys) * SPLIT_FRACTIONS[0])
        n_val = round(len(keys) * SPLIT_FRACTIONS[1])
        cuts = {"train": keys[:n_train], "val": keys[n_train:n_train + n_val], "test": keys[n_train + n_val:]}
        for name, split_keys in cuts.items():
            for key in split_keys:
                splits[name].extend(groups[key])
    for name in SPLITS:
        splits[name].sort(key=lambda case: (case.dataset, case.case_id))
    return splits
