"""Benchmark suites: which methods, strategies and datasets ``mdskit bench`` compares.

A suite file (``benchmarks/suites/*.yaml``) fixes everything a fair
comparison must hold constant: one training budget for every method, the
seeds, the datasets and the evaluation split. The bench expands a suite
into cells; a cell is one entry (a method with a test-time scaling
strategy, or a reference that needs no training) evaluated on one set of
test datasets with one seed.

Keys of a suite file:

=====================  ====================================================
``schema``             suite format version, must be 1
``name``               suite name; results folders of different suites
                       are never merged
``description``        free text
``registry``           optional method definitions file, relative to the
                       suite file (default: the project's ``registry.yaml``)
``methods``            method names from the registry
``ttss``               test-time scaling strategies, each run on every
                       method from the same checkpoint
``references``         entries that need no training (see
                       :mod:`mdskit.references`); oracles are flagged
``datasets``           dataset adapter names
``data_root``          folder holding the datasets, relative to the current
                       folder (``--data-root`` overrides it)
``budget``             ``steps`` and ``batch_size``, the same for every method
``seeds``              list of seeds
``split``              evaluation split; only ``test`` is supported
``max_samples``        optional cap on cases per dataset and split
``leave_one_out``      optional: ``methods`` and ``ttss`` to train on every
                       dataset but one and test on that one, for each
                       dataset (or only those in ``datasets``)
``comparisons``        optional list of ``[method_a, method_b]`` pairs whose
                       per-dataset paired differences the leaderboard lists
=====================  ====================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SUITE_SCHEMA = 1
SUITE_KEYS = {"schema", "name", "description", "registry", "methods", "ttss", "references", "datasets",
              "data_root", "budget", "seeds", "split", "max_samples", "leave_one_out", "comparisons"}
REQUIRED_KEYS = ("schema", "name", "datasets", "budget", "seeds")
BUDGET_KEYS = {"steps", "batch_size"}
LEAVE_ONE_OUT_KEYS = {"methods", "ttss", "datasets"}
SPLITS = ("test",)
ALL_TRAIN = "all"


class SuiteError(ConfigError):
    """An invalid suite file or a suite naming something that is not registered."""


@dataclass(frozen=True)
class Budget:
    """The training budget every method of a suite gets."""

    steps: int
    batch_size: int


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-dataset-out cells: train on every dataset but one, test on that one."""

    methods: tuple[str, ...]
    ttss: tuple[str, ...]
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    """A validated suite file."""

    name: str
    path: Path
    datasets: tuple[str, ...]
    budget: Budget
    seeds: tuple[int, ...]
    methods: tuple[str, ...] = ()
    ttss: tuple[str, ...] = ("none",)
    references: tuple[str, ...] = ()
    description: str = ""
    registry: Path | None = None
    data_root: str | None = None
    split: str = "test"
    max_samples: int | None = None
    leave_one_out: LeaveOneOut | None = None
    comparisons: tuple[tuple[str, str], ...] = ()
    document: dict[str, Any] = field(default_factory=dict, compare=False)

    def digest(self) -> str:
        """Hash of the suite's content, without its description and file paths."""
        content = {key: value for key, value in self.document.items()
                   if key not in ("description", "data_root", "registry")}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One evaluated entry of a suite.

    Attributes:
        entry: Method name, or reference name for ``kind == "reference"``.
        kind: ``"method"`` or ``"reference"``.
        ttss: Test-time scaling strategy (``"-"`` for references).
        train_datasets: Datasets the method is trained on (empty for references).
        test_datasets: Datasets it is evaluated on.
        seed: Seed of training, sampling and reference choices.
    """

    entry: str
    kind: str
    ttss: str
    train_datasets: tuple[str, ...]
    test_datasets: tuple[str, ...]
    seed: int

    @property
    def train_key(self) -> str:
        """Folder name of the checkpoint this cell evaluates; cells sharing it train once."""
        return f"{self.entry}.train-{_dataset_tag(self.train_datasets)}.seed{self.seed}"

    @property
    def key(self) -> str:
        """Folder name of the cell, unique within a suite."""
        if self.kind == "reference":
            return f"{self.entry}.test-{_dataset_tag(self.test_datasets)}.seed{self.seed}"
        return f"{self.entry}.{self.ttss}.train-{_dataset_tag(self.train_datasets)}.seed{self.seed}"

    @property
    def leave_one_out(self) -> bool:
        """Whether the cell tests on a dataset it was not trained on."""
        return self.kind == "method" and not set(self.test_datasets) <= set(self.train_datasets)


def _dataset_tag(datasets: tuple[str, ...]) -> str:
    return "+".join(datasets) if datasets else "none"


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file's format (names are checked by :func:`check_names`).

    Raises:
        SuiteError: naming the file, the key and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} not found; give a file such as benchmarks/suites/mds-mini.yaml.")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise SuiteError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise SuiteError(f"{path}: a suite must be a mapping of keys, got {type(document).__name__}.")
    unknown = sorted(set(document) - SUITE_KEYS)
    if unknown:
        raise SuiteError(f"{path}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(SUITE_KEYS))}.")
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise SuiteError(f"{path}: '{missing[0]}' is missing; every suite sets {', '.join(REQUIRED_KEYS)}.")
    if document["schema"] != SUITE_SCHEMA:
        raise SuiteError(f"{path}: schema must be {SUITE_SCHEMA}, got {document['schema']!r}; "
                         "update the file to the current suite format (see mdskit/suites.py).")

    where = str(path)
    datasets = _names(document, "datasets", where, required=True)
    methods = _names(document, "methods", where)
    references = _names(document, "references", where)
    if not methods and not references:
        raise SuiteError(f"{path}: list at least one entry under 'methods' or 'references'.")
    registry = document.get("registry")
    return Suite(
        name=_text(document, "name", where),
        path=path,
        description=" ".join(str(document.get("description", "")).split()),
        registry=(path.parent / str(registry)) if registry else None,
        data_root=str(document["data_root"]) if document.get("data_root") else None,
        datasets=datasets,
        methods=methods,
        ttss=_names(document, "ttss", where) or ("none",),
        references=references,
        budget=_budget(document["budget"], where),
        seeds=_seeds(document["seeds"], where),
        split=_split(document.get("split", "test"), where),
        max_samples=_max_samples(document.get("max_samples"), where),
        leave_one_out=_leave_one_out(document.get("leave_one_out"), datasets, methods, where),
        comparisons=_comparisons(document.get("comparisons") or [], methods, where),
        document=document,
    )


def check_names(suite: Suite, methods: set[str], strategies: set[str], datasets: set[str],
                references: set[str]) -> None:
    """Raise SuiteError when the suite names an unregistered method, strategy, dataset or reference."""
    groups = (("methods", suite.methods, methods, "define it in the registry or fix the name"),
              ("ttss", suite.ttss, strategies, "install the plugin that provides it or fix the name"),
              ("datasets", suite.datasets, datasets, "install the adapter's plugin or fix the name"),
              ("references", suite.references, references, "fix the name"))
    for key, named, known, fix in groups:
        for name in named:
            if name not in known:
                raise SuiteError(f"{suite.path}: {key} names unknown '{name}'; {fix}. "
                                 f"Known: {', '.join(sorted(known)) or 'none'}.")
    if suite.leave_one_out is not None:
        for name in suite.leave_one_out.ttss:
            if name not in strategies:
                raise SuiteError(f"{suite.path}: leave_one_out.ttss names unknown '{name}'. "
                                 f"Known: {', '.join(sorted(strategies))}.")


def plan_cells(suite: Suite) -> list[Cell]:
    """Expand a suite into cells, ordered so that cells sharing a checkpoint follow its training."""
    cells: list[Cell] = []
    everything = suite.datasets
    for seed in suite.seeds:
        for method in suite.methods:
            cells.extend(Cell(method, "method", ttss, everything, everything, seed) for ttss in suite.ttss)
        for reference in suite.references:
            cells.append(Cell(reference, "reference", "-", (), everything, seed))
        if suite.leave_one_out is not None:
            for held_out in suite.leave_one_out.datasets:
                train = tuple(name for name in everything if name != held_out)
                for method in suite.leave_one_out.methods:
                    cells.extend(Cell(method, "method", ttss, train, (held_out,), seed)
                                 for ttss in suite.leave_one_out.ttss)
    return cells


def suite_record(suite: Suite) -> dict[str, Any]:
    """Plain-data form stored in a results folder's manifest."""
    return {"name": suite.name, "schema": SUITE_SCHEMA, "digest": suite.digest(), "budget": asdict(suite.budget),
            "datasets": list(suite.datasets), "split": suite.split, "max_samples": suite.max_samples,
            "comparisons": [list(pair) for pair in suite.comparisons], "document": suite.document}


def _text(document: dict, key: str, where: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{where}: '{key}' must be a non-empty string, got {value!r}.")
    return value.strip()


def _names(document: dict, key: str, where: str, required: bool = False) -> tuple[str, ...]:
    value = document.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise SuiteError(f"{where}: '{key}' must be a list of names, got {value!r}.")
    if required and not value:
        raise SuiteError(f"{where}: '{key}' must list at least one name.")
    duplicates = sorted({item for item in value if value.count(item) > 1})
    if duplicates:
        raise SuiteError(f"{where}: '{key}' lists '{duplicates[0]}' more than once; remove the repeat.")
    return tuple(value)


def _budget(value: Any, where: str) -> Budget:
    if not isinstance(value, dict) or set(value) != BUDGET_KEYS:
        raise SuiteError(f"{where}: 'budget' must be a mapping with exactly the keys steps and batch_size, "
                         f"got {value!r}.")
    for key in ("steps", "batch_size"):
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, int) or item < (0 if key == "steps" else 1):
            raise SuiteError(f"{where}: budget.{key} must be a {'non-negative' if key == 'steps' else 'positive'} "
                             f"integer, got {item!r}.")
    return Budget(value["steps"], value["batch_size"])


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(seed, int) and not isinstance(seed, bool) for seed in value):
        raise SuiteError(f"{where}: 'seeds' must be a non-empty list of integers, got {value!r}.")
    if len(set(value)) != len(value):
        raise SuiteError(f"{where}: 'seeds' lists a seed more than once: {value!r}.")
    return tuple(value)


def _split(value: Any, where: str) -> str:
    if value not in SPLITS:
        raise SuiteError(f"{where}: split {value!r} is not supported; set split: test.")
    return value


def _max_samples(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SuiteError(f"{where}: max_samples must be a positive integer or absent, got {value!r}.")
    return value


def _leave_one_out(value: Any, datasets: tuple[str, ...], methods: tuple[str, ...],
                   where: str) -> LeaveOneOut | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - LEAVE_ONE_OUT_KEYS:
        raise SuiteError(f"{where}: 'leave_one_out' must be a mapping with keys "
                         f"{', '.join(sorted(LEAVE_ONE_OUT_KEYS))}, got {value!r}.")
    if len(datasets) < 2:
        raise SuiteError(f"{where}: leave_one_out needs at least two datasets, the suite lists {len(datasets)}.")
    section = f"{where}: leave_one_out"
    loo_methods = _names(value, "methods", section, required=True)
    held_out = _names(value, "datasets", section) or datasets
    for name in held_out:
        if name not in datasets:
            raise SuiteError(f"{section}.datasets names '{name}', which is not in the suite's datasets "
                             f"({', '.join(datasets)}).")
    for name in loo_methods:
        if name not in methods:
            raise SuiteError(f"{section}.methods names '{name}', which is not in the suite's methods; add it there.")
    return LeaveOneOut(loo_methods, _names(value, "ttss", section) or ("none",), held_out)


def _comparisons(value: Any, methods: tuple[str, ...], where: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    if not isinstance(value, list):
        raise SuiteError(f"{where}: 'comparisons' must be a list of [method_a, method_b] pairs, got {value!r}.")
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2 or not all(name in methods for name in pair):
            raise SuiteError(f"{where}: comparison {pair!r} must name two of the suite's methods "
                             f"({', '.join(methods)}).")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)
