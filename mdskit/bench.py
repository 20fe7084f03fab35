"""``mdskit bench SUITE``: every cell of a suite through the code path of ``mdskit run``.

A results folder holds::

    suite.json                     manifest: suite, results schema, cell folders
    computed.jsonl                 one line per training or cell computed here
    train/KEY-HASH/checkpoint/     one checkpoint per (method, train datasets, seed)
    train/KEY-HASH/train.json      training wall time, parameters, provenance
    cells/KEY-HASH/                one ``mdskit run`` output folder per cell,
                                   plus cell.json (config hash, costs, provenance)

Methods train once per (method, train datasets, seed) with ``train_only``
and every test-time scaling strategy is evaluated from that checkpoint with
``run_method``. Both resume on their own: a killed bench keeps finished
training steps and predicted samples. A cell whose ``cell.json`` exists
with the same config hash is reused without loading anything. HASH, a
digest of everything that changes a cell's results, is part of the folder
name, so a changed suite computes new folders and never overwrites old ones.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .build import build_model
from .errors import DataError, MdskitError
from .metrics import CONVENTIONS
from .outputs import append_jsonl, provenance, write_json
from .references import ORACLE_REFERENCES, REFERENCE_NAMES, run_reference
from .runs import RunSettings, Workspace, _stratified_head, open_datasets, run_method, train_only
from .suites import SUITE_SCHEMA, Budget, Cell, Suite, check_names, plan_cells, suite_record
from .training import ProgressCallback

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = 1
"""Version of the results folder layout; the leaderboard rejects other versions."""
MANIFEST = "suite.json"
CELL_RECORD = "cell.json"
TRAIN_RECORD = "train.json"
COMPUTED_LOG = "computed.jsonl"

EventCallback = Callable[[str, str, str], None]
"""Called as ``on_event(kind, key, status)``; kind is ``train`` or ``cell``, status ``start``, ``done`` or ``reused``."""


class ResultsError(MdskitError):
    """A results folder of another suite or schema, or a missing or corrupt result file."""


@dataclass
class BenchContext:
    """Settings, workspace and dataset folders shared by the cells of one bench."""

    suite: Suite
    out: Path
    workspace: Workspace
    data: dict[str, str | None]
    on_event: EventCallback | None = None
    progress: ProgressCallback | None = None
    on_sample: Callable[[int, int], None] | None = None

    def event(self, kind: str, key: str, status: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, key, status)


def run_bench(suite: Suite, out: Path, workspace: Workspace | None = None, data_root: str | Path | None = None,
              on_event: EventCallback | None = None, only: tuple[str, ...] = (),
              progress: ProgressCallback | None = None,
              on_sample: Callable[[int, int], None] | None = None) -> list[Path]:
    """Compute (or reuse) the cells of ``suite`` in ``out``; return the cell folders in suite order.

    Args:
        only: Glob patterns of cell keys (``sim4seg.*``); when given, only
            matching cells are computed, so machines can share a suite and
            ``mdskit leaderboard`` merges their folders.
        progress, on_sample: Progress callbacks passed to training and
            prediction, as ``mdskit run`` takes them.
    """
    workspace = workspace or Workspace.load(suite.registry)
    components = workspace.components
    check_names(suite, set(workspace.registry.methods), set(components.names("tts")),
                set(components.names("dataset")), set(REFERENCE_NAMES))
    context = BenchContext(suite, Path(out), with_budget(workspace, suite.budget),
                           dataset_folders(suite, components, data_root), on_event, progress, on_sample)
    cells = plan_cells(suite)
    folders = {cell.key: cell_folder(context, cell) for cell in cells}
    claim_results(context.out, suite, {key: str(folder.relative_to(context.out)) for key, folder in folders.items()})

    if only:
        cells = [cell for cell in cells if any(fnmatch.fnmatchcase(cell.key, pattern) for pattern in only)]
        if not cells:
            raise ResultsError(f"no cell key of suite '{suite.name}' matches {', '.join(only)}; keys look like "
                               f"{next(iter(folders))}.")
    for cell in cells:
        folder = folders[cell.key]
        if _finished(folder, cell_hash(context, cell)):
            logger.info("reusing finished cell %s", folder)
            context.event("cell", cell.key, "reused")
            continue
        if cell.kind == "reference":
            _run_reference_cell(context, cell, folder)
        else:
            _run_method_cell(context, cell, folder)
    return [folders[cell.key] for cell in cells]


def with_budget(workspace: Workspace, budget: Budget) -> Workspace:
    """Return a workspace whose methods all train with the suite's steps and batch size."""
    methods = {name: replace(spec, training=replace(spec.training, steps=budget.steps, batch_size=budget.batch_size))
               for name, spec in workspace.registry.methods.items()}
    return Workspace(workspace.components, replace(workspace.registry, methods=methods))


def dataset_folders(suite: Suite, components, data_root: str | Path | None) -> dict[str, str | None]:
    """Map each dataset of the suite to its folder (None for embedded datasets)."""
    root = data_root if data_root is not None else suite.data_root
    folders: dict[str, str | None] = {}
    for name in suite.datasets:
        if components.get("dataset", name).embedded:
            folders[name] = None
        elif root is None:
            raise DataError(f"{suite.path}: dataset '{name}' needs a folder; set data_root in the suite "
                            "or pass --data-root DIR.")
        else:
            folders[name] = str(root)
    return folders


def claim_results(out: Path, suite: Suite, cells: dict[str, str]) -> None:
    """Create the manifest of ``out``, or check that ``out`` contains results of the same suite."""
    path = out / MANIFEST
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if path.is_file():
        stored = read_manifest(path)
        if stored["suite"]["name"] != suite.name:
            raise ResultsError(f"{out} contains results of suite '{stored['suite']['name']}', not '{suite.name}'; "
                               "pass another --out for this suite.")
        _check_same_setting(out, stored["suite"], suite_record(suite))
        created = stored.get("created", created)
    elif out.is_dir() and any(out.iterdir()):
        raise ResultsError(f"{out} is not empty and has no {MANIFEST}, so it is not a bench results folder; "
                           "pass an empty or new folder as --out.")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"results_schema": RESULTS_SCHEMA, "suite": suite_record(suite), "created": created,
                      "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cells": cells})


# Results computed under another value of these keys would be silently left
# out of the leaderboard, so a results folder keeps them fixed.
FIXED_SUITE_KEYS = ("budget", "datasets", "split", "max_samples")


def _check_same_setting(out: Path, stored: dict[str, Any], current: dict[str, Any]) -> None:
    for key in FIXED_SUITE_KEYS:
        if stored.get(key) != current.get(key):
            raise ResultsError(f"{out} contains results of suite '{current['name']}' with {key} "
                               f"{stored.get(key)!r}, but the suite file now sets {current.get(key)!r}; pass a new "
                               "--out for the changed suite, or restore the old value.")


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a results manifest and check its schema version."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path} is unreadable ({error}); rerun 'mdskit bench SUITE --out {path.parent}' "
                           "to rewrite it.") from error
    schema = manifest.get("results_schema") if isinstance(manifest, dict) else None
    if schema != RESULTS_SCHEMA:
        raise ResultsError(f"{path} has results schema {schema!r}, this mdskit reads {RESULTS_SCHEMA}; rerun the "
                           "suite with this version into a new folder (finished cells are not converted).")
    if manifest.get("suite", {}).get("schema") != SUITE_SCHEMA:
        raise ResultsError(f"{path} was written for suite schema {manifest.get('suite', {}).get('schema')!r}, "
                           f"this mdskit reads {SUITE_SCHEMA}; rerun the suite into a new folder.")
    return manifest


def _digest(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_hash(context: BenchContext, cell: Cell) -> str:
    """Digest of everything that changes a checkpoint: method, budget, train datasets, seed, sample cap."""
    spec = context.workspace.registry.method(cell.entry)
    return _digest({"method": spec.as_dict(), "train": list(cell.train_datasets), "seed": cell.seed,
                    "max_samples": context.suite.max_samples, "results_schema": RESULTS_SCHEMA})


def cell_hash(context: BenchContext, cell: Cell) -> str:
    """Digest of everything that changes a cell's results; dataset folders are left out."""
    content: dict[str, Any] = {"cell": asdict(cell), "split": context.suite.split,
                               "max_samples": context.suite.max_samples, "results_schema": RESULTS_SCHEMA}
    if cell.kind == "method":
        content["train"] = train_hash(context, cell)
        content["tts_params"] = context.workspace.registry.tts_defaults.get(cell.ttss, {})
    return _digest(content)


def cell_folder(context: BenchContext, cell: Cell) -> Path:
    return context.out / "cells" / f"{cell.key}-{cell_hash(context, cell)[:8]}"


def train_folder(context: BenchContext, cell: Cell) -> Path:
    return context.out / "train" / f"{cell.train_key}-{train_hash(context, cell)[:8]}"


def _finished(folder: Path, config_hash: str) -> bool:
    path = folder / CELL_RECORD
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logger.warning("%s is unreadable; the cell is computed again", path)
        return False
    return record.get("config_hash") == config_hash


def _log_computed(context: BenchContext, kind: str, key: str, **details: Any) -> None:
    append_jsonl(context.out / COMPUTED_LOG, {"kind": kind, "key": key, **details,
                                              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _count_records(path: Path) -> int:
    """Count the complete records of a JSON-lines file; a line cut short by a crash is not one."""
    count = 0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                json.loads(line)
            except json.JSONDecodeError:
                continue
            count += 1
    return count


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (``getrusage`` max RSS), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware() -> dict[str, Any]:
    """Describe the machine: CPU model, logical cores, memory and accelerator."""
    model = platform.processor() or None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        memory_gib = None
    return {"cpu": model, "logical_cores": os.cpu_count(), "memory_gib": memory_gib,
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def uncommitted_changes() -> bool | None:
    """Whether the source tree of this mdskit has uncommitted changes to tracked files (None outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        completed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(completed.stdout.strip()) if completed.returncode == 0 else None


def _train(context: BenchContext, cell: Cell) -> tuple[Path, dict[str, Any]]:
    """Train the cell's checkpoint unless a finished one exists; return its folder and record."""
    folder = train_folder(context, cell)
    record_path = folder / TRAIN_RECORD
    config_hash = train_hash(context, cell)
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("config_hash") == config_hash:
            context.event("train", cell.train_key, "reused")
            return folder, record

    context.event("train", cell.train_key, "start")
    settings = RunSettings(method=cell.entry, data={name: context.data[name] for name in cell.train_datasets},
                           out=folder, train_steps=context.suite.budget.steps, seed=cell.seed,
                           max_samples=context.suite.max_samples)
    started = time.perf_counter()
    result = train_only(settings, context.workspace, progress=context.progress)
    wall_seconds = time.perf_counter() - started
    spec = context.workspace.registry.method(cell.entry)
    model = build_model(spec, context.workspace.components, folder / "checkpoint")
    record = {
        "config_hash": config_hash,
        "method": cell.entry,
        "train_datasets": list(cell.train_datasets),
        "seed": cell.seed,
        "budget": asdict(context.suite.budget),
        "wall_seconds": round(wall_seconds, 2),
        "optimizer_seconds": round(result.seconds, 2) if result else None,
        "resumed_from_step": result.start_step if result else None,
        "steps": result.steps if result else None,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable_parameters": sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad),
        "peak_memory_mib": round(peak_memory_mib(), 1),
        "provenance": provenance(cell.seed, model.device),
    }
    del model
    write_json(record_path, record)
    _log_computed(context, "train", cell.train_key, resumed_from_step=record["resumed_from_step"])
    context.event("train", cell.train_key, "done")
    return folder, record


def _run_method_cell(context: BenchContext, cell: Cell, folder: Path) -> None:
    checkpoint_folder, training = _train(context, cell)
    context.event("cell", cell.key, "start")
    predictions = folder / "predictions.jsonl"
    before = _count_records(predictions)
    # NOTE: run_method's folder fingerprint includes the checkpoint and data paths, so an unfinished
    # cell resumes only from the same results and data folders; finished cells are reused anywhere.
    settings = RunSettings(method=cell.entry, data={name: context.data[name] for name in cell.test_datasets},
                           out=folder, ttss=cell.ttss, checkpoint=(checkpoint_folder / "checkpoint").resolve(),
                           seed=cell.seed, max_samples=context.suite.max_samples)
    started = time.perf_counter()
    result = run_method(settings, context.workspace, on_sample=context.on_sample)
    cost = {
        "train_wall_seconds": training["wall_seconds"],
        "train_resumed_from_step": training["resumed_from_step"],
        "parameters": training["parameters"],
        "trainable_parameters": training["trainable_parameters"],
        "eval_wall_seconds": round(time.perf_counter() - started, 2),
        "train_peak_memory_mib": training["peak_memory_mib"],
        "peak_memory_mib": round(peak_memory_mib(), 1),
    }
    _finish_cell(context, cell, folder, result.metrics, cost, before)


def _run_reference_cell(context: BenchContext, cell: Cell, folder: Path) -> None:
    context.event("cell", cell.key, "start")
    components = context.workspace.components
    adapters = open_datasets(components, {name: context.data[name] for name in cell.test_datasets})
    samples = []
    for name, adapter in adapters.items():
        cases = adapter.load_split(context.suite.split)
        if context.suite.max_samples is not None:
            cases = _stratified_head(cases, context.suite.max_samples)
        samples.extend(cases)
    before = _count_records(folder / "predictions.jsonl")
    started = time.perf_counter()
    metrics = run_reference(cell.entry, adapters, samples, folder, components,
                            provenance(cell.seed, torch.device("cpu")))
    cost = {"train_wall_seconds": 0.0, "train_resumed_from_step": None, "parameters": None,
            "trainable_parameters": 0, "eval_wall_seconds": round(time.perf_counter() - started, 2),
            "train_peak_memory_mib": None, "peak_memory_mib": round(peak_memory_mib(), 1)}
    if cell.entry == "litemedsam-gt-box":
        decoder = components.get("decoder", "litemedsam")
        cost["parameters"] = sum(parameter.numel() for parameter in decoder().parameters())
    _finish_cell(context, cell, folder, metrics, cost, before)


def _finish_cell(context: BenchContext, cell: Cell, folder: Path, metrics: dict[str, Any], cost: dict[str, Any],
                 lines_before: int) -> None:
    new_samples = _count_records(folder / "predictions.jsonl") - lines_before
    record = {
        "results_schema": RESULTS_SCHEMA,
        "suite": context.suite.name,
        "key": cell.key,
        "config_hash": cell_hash(context, cell),
        **asdict(cell),
        "oracle": cell.entry in ORACLE_REFERENCES,
        "leave_one_out": cell.leave_one_out,
        "budget": asdict(context.suite.budget) if cell.kind == "method" else None,
        "max_samples": context.suite.max_samples,
        "label_sets": _label_sets(context, cell),
        "tts_params": metrics.get("tts_params"),
        "cost": cost,
        "hardware": hardware(),
        "uncommitted_changes": uncommitted_changes(),
        "conventions": CONVENTIONS,
        "provenance": metrics.get("provenance"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(folder / CELL_RECORD, record)
    _log_computed(context, "cell", cell.key, new_samples=new_samples)
    context.event("cell", cell.key, "done")


def _label_sets(context: BenchContext, cell: Cell) -> dict[str, list[str]]:
    components = context.workspace.components
    return {name: list(components.get("dataset", name).label_set) for name in cell.test_datasets}
