"""Leaderboards from stored bench results: loading, merging and statistics.

:func:`load_results` reads one or more results folders of ``mdskit bench``
(for example from several machines running parts of one suite), checks that
they belong to the same suite, schema and budget, and reads every finished
cell's per-sample predictions strictly. :func:`build_leaderboard` turns
them into one plain-data leaderboard: per dataset and pooled, each metric
with its bootstrap interval, the costs, provenance, which entries are
within noise of the best, and the suite's paired comparisons.
:mod:`mdskit.bench_report` renders it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bench import CELL_RECORD, MANIFEST, RESULTS_SCHEMA, ResultsError, read_manifest
from .metrics import CONVENTIONS, POOLED
from .statistics import (DEFAULT_LEVEL, DEFAULT_RESAMPLES, METRICS, Comparison, SampleTable, UnpairedSamplesError,
                         bootstrap_interval, paired_comparison, percentiles)

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "dataset", "predicted_diagnosis", "true_diagnosis", "intersection", "union",
                   "predicted_area", "true_area")
SUITE_FIELDS_TO_MATCH = ("name", "schema", "budget", "datasets", "split", "max_samples")


@dataclass
class CellResult:
    """A finished cell: its ``cell.json`` record and per-sample predictions."""

    folder: Path
    record: dict[str, Any]
    samples: list[dict[str, Any]]

    @property
    def key(self) -> str:
        return self.record["key"]

    @property
    def label(self) -> str:
        """Display name; an oracle is always flagged in it."""
        name = self.record["entry"]
        return f"{name} (oracle)" if self.record.get("oracle") else name

    def table(self, dataset: str | None = None) -> SampleTable:
        """Per-sample table of one dataset, or of all of them (pooled) when ``dataset`` is None."""
        records = [sample for sample in self.samples if dataset is None or sample["dataset"] == dataset]
        return SampleTable.from_records(records, self.record["label_sets"])


@dataclass
class Results:
    """Cells of one suite, possibly merged from several results folders."""

    suite: dict[str, Any]
    folders: list[Path]
    cells: list[CellResult]
    unfinished: list[str] = field(default_factory=list)


def load_results(folders: list[Path]) -> Results:
    """Read and merge results folders of one suite.

    Raises:
        ResultsError: a folder without a manifest, of another suite, schema
            or budget, a cell that two folders computed with different
            configurations, or a missing or corrupt result file.
    """
    if not folders:
        raise ResultsError("give at least one results folder of 'mdskit bench'.")
    suite: dict[str, Any] | None = None
    first: Path | None = None
    cells: dict[str, CellResult] = {}
    unfinished: list[str] = []
    for folder in folders:
        manifest_path = Path(folder) / MANIFEST
        if not Path(folder).is_dir():
            raise ResultsError(f"results folder {folder} does not exist; give the folder that was passed to "
                               "'mdskit bench --out'.")
        if not manifest_path.is_file():
            raise ResultsError(f"{folder} has no {MANIFEST}, so it is not a results folder of 'mdskit bench'; "
                               "give the folder that was passed to --out.")
        manifest = read_manifest(manifest_path)
        if suite is None:
            suite, first = manifest["suite"], manifest_path
        else:
            _check_same_suite(suite, first, manifest["suite"], manifest_path)
        for key, relative in manifest["cells"].items():
            cell_folder = Path(folder) / relative
            if not (cell_folder / CELL_RECORD).is_file():
                unfinished.append(f"{key} ({folder})")
                continue
            cell = read_cell(cell_folder, suite["name"])
            if key in cells:
                _check_same_cell(cells[key], cell)
                continue
            cells[key] = cell
    # A cell that one folder finished is not unfinished.
    unfinished = [item for item in unfinished if item.split(" (")[0] not in cells]
    return Results(suite, [Path(folder) for folder in folders], list(cells.values()), unfinished)


def _check_same_suite(expected: dict, expected_path: Path, found: dict, found_path: Path) -> None:
    for key in SUITE_FIELDS_TO_MATCH:
        if expected.get(key) != found.get(key):
            raise ResultsError(
                f"{found_path} is from suite '{found.get('name')}' with {key} {found.get(key)!r}, but {expected_path} "
                f"has {key} {expected.get(key)!r}; merge only results of the same suite and budget, or render "
                "each folder on its own.")


def _check_same_cell(first: CellResult, other: CellResult) -> None:
    if first.record["config_hash"] != other.record["config_hash"]:
        raise ResultsError(
            f"cell {first.key} was computed with different configurations in {first.folder} and {other.folder} "
            f"(config hash {first.record['config_hash']} and {other.record['config_hash']}); delete the stale "
            "folder or render the folders separately.")
    logger.info("cell %s is in %s and %s with the same config hash; using the first", first.key, first.folder,
                other.folder)


def read_cell(folder: Path, suite_name: str) -> CellResult:
    """Read a finished cell strictly: every predictions line must parse and carry the scored fields."""
    record_path = folder / CELL_RECORD
    fix = f"delete {folder} and rerun 'mdskit bench' on the suite to compute the cell again"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ResultsError(f"{record_path} is corrupt ({error}); {fix}.") from error
    if record.get("results_schema") != RESULTS_SCHEMA:
        raise ResultsError(f"{record_path} has results schema {record.get('results_schema')!r}, this mdskit reads "
                           f"{RESULTS_SCHEMA}; rerun the suite into a new folder.")
    if record.get("suite") != suite_name:
        raise ResultsError(f"{record_path} belongs to suite '{record.get('suite')}', not '{suite_name}'; {fix}.")
    samples = _read_predictions(folder / "predictions.jsonl", fix)
    expected = _expected_count(folder / "metrics.json", fix)
    if len(samples) != expected:
        raise ResultsError(f"{folder / 'predictions.jsonl'} contains {len(samples)} samples but metrics.json counts "
                           f"{expected}; {fix}.")
    return CellResult(folder, record, samples)


def _read_predictions(path: Path, fix: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ResultsError(f"{path} is missing; {fix}.")
    samples: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultsError(f"{path}, line {number}, is not valid JSON ({error.msg}); {fix}.") from error
        missing = [key for key in REQUIRED_FIELDS if not isinstance(sample, dict) or key not in sample]
        if missing:
            raise ResultsError(f"{path}, line {number}, lacks the field '{missing[0]}'; {fix}.")
        if sample["id"] in seen:
            raise ResultsError(f"{path}, line {number}, repeats sample {sample['id']}; {fix}.")
        seen.add(sample["id"])
        samples.append(sample)
    return samples


def _expected_count(path: Path, fix: str) -> int:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))[POOLED]["n"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ResultsError(f"{path} is missing or corrupt ({error}); {fix}.") from error


def build_leaderboard(results: Results, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Compute every number a leaderboard shows, as plain data (the JSON output)."""
    entries = [_entry(cell, resamples, seed, level) for cell in results.cells]
    cells = {cell.key: cell for cell in results.cells}
    return {
        "suite": results.suite,
        "results_folders": [str(folder) for folder in results.folders],
        "statistics": {"interval": "percentile bootstrap over samples", "resamples": resamples, "seed": seed,
                       "level": level, "paired_test": "paired bootstrap of the difference; Wilcoxon signed-rank "
                       "for gIoU, Dice and accuracy", "within_noise": "the paired interval of the difference "
                       "to the best non-oracle entry contains 0"},
        "conventions": CONVENTIONS,
        "entries": entries,
        "ranking": _ranking(entries, cells, resamples, seed, level),
        "comparisons": _comparisons(results, cells, resamples, seed, level),
        "unfinished": results.unfinished,
    }


def _entry(cell: CellResult, resamples: int, seed: int, level: float) -> dict[str, Any]:
    record = cell.record
    datasets = sorted({sample["dataset"] for sample in cell.samples})
    metrics: dict[str, dict[str, Any]] = {}
    for dataset in [*datasets, POOLED]:
        table = cell.table(None if dataset == POOLED else dataset)
        metrics[dataset] = {metric: bootstrap_interval(table, metric, resamples, seed, level).as_dict()
                            for metric in METRICS}
    seconds = [sample["seconds"] for sample in cell.samples if isinstance(sample.get("seconds"), (int, float))]
    median, p90 = percentiles(seconds)
    paths = [len(sample.get("candidates") or []) for sample in cell.samples]
    cost = dict(record.get("cost") or {})
    cost.update(latency_median_seconds=median, latency_p90_seconds=p90,
                paths_per_sample=float(np.mean(paths)) if paths else None)
    return {
        "key": cell.key, "label": cell.label, "entry": record["entry"], "kind": record["kind"], "ttss": record["ttss"],
        "oracle": bool(record.get("oracle")), "leave_one_out": bool(record.get("leave_one_out")),
        "train_datasets": record["train_datasets"], "test_datasets": record["test_datasets"], "seed": record["seed"],
        "config_hash": record["config_hash"], "budget": record.get("budget"), "tts_params": record.get("tts_params"),
        "metrics": metrics, "cost": cost, "provenance": _portable_provenance(record.get("provenance"), cell.folder),
        "hardware": record.get("hardware"),
        "uncommitted_changes": record.get("uncommitted_changes"),
        "folder": str(cell.folder),
    }


def _portable_provenance(provenance: dict[str, Any] | None, cell_folder: Path) -> dict[str, Any] | None:
    """Return the provenance with a checkpoint inside the results folder given relative to that folder.

    Bench cells record the absolute checkpoint path; a leaderboard shared
    between machines names it as ``train/KEY-HASH/checkpoint`` instead.
    """
    if not provenance or not provenance.get("checkpoint"):
        return provenance
    results = Path(cell_folder).resolve().parent.parent
    checkpoint = Path(provenance["checkpoint"]).resolve()
    if not checkpoint.is_relative_to(results):
        return provenance
    return {**provenance, "checkpoint": str(checkpoint.relative_to(results))}


def main_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries evaluated in-domain (not leave-one-dataset-out)."""
    return [entry for entry in entries if not entry["leave_one_out"]]


def _ranking(entries: list[dict[str, Any]], cells: dict[str, CellResult], resamples: int, seed: int,
             level: float) -> dict[str, Any]:
    """Per seed, dataset and metric: the best non-oracle entry and those within noise of it."""
    ranking: dict[str, Any] = {}
    for run_seed in sorted({entry["seed"] for entry in main_entries(entries)}):
        group = [entry for entry in main_entries(entries) if entry["seed"] == run_seed and not entry["oracle"]]
        datasets = sorted({dataset for entry in group for dataset in entry["metrics"]})
        seed_ranking: dict[str, Any] = {}
        for dataset in datasets:
            seed_ranking[dataset] = {}
            members = [entry for entry in group if dataset in entry["metrics"]]
            for metric in METRICS:
                best = max(members, key=lambda entry: _value(entry, dataset, metric))
                table_best = cells[best["key"]].table(None if dataset == POOLED else dataset)
                within = []
                for entry in members:
                    if entry is best:
                        continue
                    table = cells[entry["key"]].table(None if dataset == POOLED else dataset)
                    comparison = _compare(cells[entry["key"]], cells[best["key"]], table, table_best, metric,
                                          resamples, seed, level)
                    if not comparison.significant:
                        within.append(entry["key"])
                seed_ranking[dataset][metric] = {"best": best["key"], "within_noise": within}
        ranking[str(run_seed)] = seed_ranking
    return ranking


def _compare(cell_a: CellResult, cell_b: CellResult, table_a: SampleTable, table_b: SampleTable, metric: str,
             resamples: int, seed: int, level: float) -> Comparison:
    try:
        return paired_comparison(table_a, table_b, metric, resamples, seed, level)
    except UnpairedSamplesError as error:
        raise ResultsError(f"{cell_a.folder} and {cell_b.folder} were scored on different samples ({error}); "
                           "rerun both cells with the same suite so that they can be compared.") from error


def _value(entry: dict[str, Any], dataset: str, metric: str) -> float:
    value = entry["metrics"][dataset][metric]["value"]
    return float("-inf") if value != value else value


def _comparisons(results: Results, cells: dict[str, CellResult], resamples: int, seed: int,
                 level: float) -> list[dict[str, Any]]:
    """The suite's paired comparisons: method a minus method b, per strategy, seed and dataset."""
    rows = []
    by_identity = {(cell.record["entry"], cell.record["ttss"], tuple(cell.record["train_datasets"]),
                    tuple(cell.record["test_datasets"]), cell.record["seed"]): cell for cell in cells.values()}
    for method_a, method_b in results.suite.get("comparisons") or []:
        for (entry, ttss, train, test, run_seed), cell_a in sorted(by_identity.items()):
            if entry != method_a:
                continue
            cell_b = by_identity.get((method_b, ttss, train, test, run_seed))
            if cell_b is None:
                continue
            datasets = sorted({sample["dataset"] for sample in cell_a.samples})
            for dataset in [*datasets, POOLED] if len(datasets) > 1 else datasets:
                key = None if dataset == POOLED else dataset
                table_a, table_b = cell_a.table(key), cell_b.table(key)
                row = {"a": method_a, "b": method_b, "ttss": ttss, "train_datasets": list(train),
                       "test_datasets": list(test), "seed": run_seed, "dataset": dataset, "metrics": {}}
                for metric in METRICS:
                    row["metrics"][metric] = _compare(cell_a, cell_b, table_a, table_b, metric, resamples, seed,
                                                      level).as_dict()
                rows.append(row)
    return rows
