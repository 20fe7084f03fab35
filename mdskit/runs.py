"""Train and evaluate a method on datasets: the work behind ``mdskit run``.

The command line only parses options and shows progress. Everything a run
does lives here, so the benchmark harness and the tests call the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .build import build_cot_generator, build_model, build_specialist, build_tts
from .checkpoint import checkpoint_step, read_record, recover_folder
from .cot import attach_text
from .datasets import DatasetAdapter
from .distributed import ParallelSettings
from .errors import ConfigError, DataError, MdskitError
from .finetune import apply_finetuning
from .evaluation import predict, prediction_record, result_from_record
from .methods import MethodRegistry, MethodSpec, load_methods
from .metrics import CONVENTIONS, SampleResult, summarize
from .model import MdsModel
from .outputs import append_jsonl, overlay, provenance, read_jsonl, rewrite_jsonl, save_png, write_json
from .registry import Components
from .sample import MdsSample
from .specialist import SpecialistModel, train_labels
from .specialist_training import SpecialistTrainer
from .training import ProgressCallback, Trainer, TrainResult

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "phantom"
METRIC_NAMES = ("giou", "ciou", "dice", "accuracy", "macro_f1")


@dataclass
class Workspace:
    """Loaded plugins and method definitions."""

    components: Components
    registry: MethodRegistry

    @classmethod
    def load(cls, registry_path: str | Path | None = None, disabled: tuple[str, ...] = (),
             plugin_files: tuple[str | Path, ...] = ()) -> Workspace:
        """Load the plugins (with the registry's and the given plugin files) and ``registry.yaml``."""
        return cls(*load_methods(registry_path, disabled, plugin_files))


@dataclass
class RunSettings:
    """Options of one ``mdskit run`` or ``mdskit train``.

    Attributes:
        method: Method name from ``registry.yaml``.
        data: Dataset adapter name -> folder (None for embedded datasets).
        out: Output folder; an existing one with the same settings is resumed.
        ttss: Test-time scaling strategy name.
        checkpoint: Trained checkpoint folder; None trains one in ``out``.
        train_steps: Step budget; None takes the method's default.
        seed: Seed of batch order, initialisation and sampling.
        num_paths: Overrides the strategy's number of paths.
        temperature: Overrides the strategy's sampling temperature.
        max_samples: Cap on the samples per dataset and split (None: all).
    """

    method: str
    data: dict[str, str | None] = field(default_factory=lambda: {DEFAULT_DATASET: None})
    out: Path = Path("runs/default")
    ttss: str = "none"
    checkpoint: Path | None = None
    train_steps: int | None = None
    seed: int = 0
    num_paths: int | None = None
    temperature: float | None = None
    max_samples: int | None = None

    def fingerprint(self, spec: MethodSpec, tts_params: dict[str, Any]) -> str:
        """Hash of everything that changes a run's results."""
        settings = asdict(self)
        settings.update(out=None, method=spec.as_dict(), tts_params=tts_params,
                        checkpoint=str(self.checkpoint) if self.checkpoint else None)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_data_option(values: tuple[str, ...], components: Components) -> dict[str, str | None]:
    """Turn ``NAME=PATH`` options into a dataset mapping (the embedded default when empty)."""
    if not values:
        return {DEFAULT_DATASET: None}
    data: dict[str, str | None] = {}
    for value in values:
        name, separator, path = value.partition("=")
        name = name.strip()
        adapter = components.get("dataset", name)
        if not adapter.embedded and not path.strip():
            raise DataError(f"--data {value}: give a folder as {name}=PATH.")
        data[name] = path or None
    return data


def open_datasets(components: Components, data: dict[str, str | None]) -> dict[str, DatasetAdapter]:
    """Instantiate the adapters. A PATH may also be a folder that contains the public folder."""
    adapters = {}
    for name, path in data.items():
        adapter_class = components.get("dataset", name)
        if getattr(adapter_class, "embedded", False):
            adapters[name] = adapter_class(None)
            continue
        root = Path(path)
        nested = root / adapter_class.default_folder if adapter_class.default_folder else None
        if nested is not None and nested.is_dir():
            root = nested
        adapters[name] = adapter_class(root)
    return adapters


def load_split(adapters: dict[str, DatasetAdapter], split: str, spec: MethodSpec, components: Components,
               max_samples: int | None, seed: int) -> list[MdsSample]:
    """Samples of one split of every dataset, with question and target answer attached."""
    generator = build_cot_generator(spec, components)
    samples: list[MdsSample] = []
    for name, adapter in adapters.items():
        cases = adapter.load_split(split)
        if max_samples is not None:
            cases = _stratified_head(cases, max_samples)
        if not cases:
            where = f" in {adapter.root}" if adapter.root else ""
            raise DataError(f"dataset '{name}' has no {split} cases{where}; check the folder.")
        samples.extend(cases)
    attach_text(samples, generator, seed=seed)
    return samples


def _stratified_head(cases: list[MdsSample], limit: int) -> list[MdsSample]:
    """Take the first ``limit`` cases round-robin over labels, so every label appears."""
    by_label: dict[str, list[MdsSample]] = {}
    for case in cases:
        by_label.setdefault(case.label, []).append(case)
    chosen: list[MdsSample] = []
    queues = [list(group) for _, group in sorted(by_label.items())]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


@dataclass
class RunResult:
    """Outcome of ``run_method``: metrics and where outputs went."""

    metrics: dict[str, Any]
    out: Path
    train: TrainResult | None


def prepare_model(workspace: Workspace, spec: MethodSpec, settings: RunSettings,
                  adapters: dict[str, DatasetAdapter], progress: ProgressCallback | None,
                  parallel: ParallelSettings | None = None
                  ) -> tuple[MdsModel | SpecialistModel, TrainResult | None]:
    """Load the given checkpoint, or train (resuming) one under ``out/checkpoint``.

    In a multi-process run every process builds the model from the same
    seed, and DDP copies rank 0's weights to the others when it wraps it.
    """
    if settings.checkpoint is not None:
        return build_model(spec, workspace.components, settings.checkpoint), None

    check_parallel(spec, parallel)
    folder = settings.out / "checkpoint"
    with distributed.main_process_first():
        if distributed.is_main_process():
            recover_folder(folder)
    train_samples = load_split(adapters, "train", spec, workspace.components, settings.max_samples, settings.seed)
    start = 0
    torch.manual_seed(settings.seed)
    if spec.specialist is not None:
        return _prepare_specialist(workspace, spec, settings, folder, train_samples, progress)
    if folder.exists():
        start = int(read_record(folder)["step"])
        model = build_model(spec, workspace.components, folder)
        logger.info("resuming training from %s at step %d", folder, start)
    else:
        model = build_model(spec, workspace.components)
        model.backbone.setup([text for sample in train_samples for text in (sample.question, sample.answer)])
        model.rebuild_projection()
    if spec.finetune is not None:
        apply_finetuning(model, spec.finetune)
    trainer = Trainer(model, spec, train_samples, folder, steps=settings.train_steps, seed=settings.seed,
                      progress=progress, parallel=parallel)
    result = trainer.fit(start_step=start)
    if trainer.shards_weights:
        # The trained weights exist whole only in the checkpoint that rank 0 wrote.
        model = build_model(spec, workspace.components, folder)
    return model, result


def check_parallel(spec: MethodSpec, parallel: ParallelSettings | None) -> None:
    """Reject a batch split or strategy that cannot run, before data or weights are loaded.

    Raises:
        ConfigError: the batch does not split evenly over processes and
            accumulation steps, float16 is asked for without CUDA, or
            DeepSpeed is missing or cannot run on the training device.
    """
    parallel = parallel or ParallelSettings()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    distributed.check_strategy(replace(parallel, precision=spec.training.precision), distributed.world_size(), device)
    distributed.micro_batch_size(spec.training.batch_size, distributed.world_size(), parallel.accumulation)


def with_precision(spec: MethodSpec, parallel: ParallelSettings | None) -> MethodSpec:
    """Return ``spec`` with the forward precision that ``parallel`` overrides, if any.

    The precision changes the results, so it enters the method record that
    fingerprints runs and checkpoints.
    """
    if parallel is None or parallel.precision is None or parallel.precision == spec.training.precision:
        return spec
    return replace(spec, training=replace(spec.training, precision=parallel.precision))


def _prepare_specialist(workspace: Workspace, spec: MethodSpec, settings: RunSettings, folder: Path,
                        train_samples: list[MdsSample],
                        progress: ProgressCallback | None) -> tuple[SpecialistModel, TrainResult]:
    """Train (resuming) a specialist method's model under ``folder``.

    Raises:
        ConfigError: the run has several processes; the specialist trains in one.
    """
    if distributed.world_size() > 1:
        raise ConfigError(f"method '{spec.name}' is a specialist, which trains in one process only; "
                          "start it without torchrun.")
    start = 0
    if folder.exists():
        start = int(read_record(folder)["step"])
        model = build_specialist(spec, workspace.components, folder)
        logger.info("resuming training from %s at step %d", folder, start)
    else:
        model = build_specialist(spec, workspace.components, labels=train_labels(train_samples))
    trainer = SpecialistTrainer(model, spec, train_samples, folder, steps=settings.train_steps, seed=settings.seed,
                                progress=progress)
    return model, trainer.fit(start_step=start)


def run_method(settings: RunSettings, workspace: Workspace | None = None,
               progress: ProgressCallback | None = None,
               on_sample: Callable[[int, int], None] | None = None,
               parallel: ParallelSettings | None = None) -> RunResult:
    """Train (or load) a method, evaluate it on the test splits and write the outputs.

    In a multi-process run (see :mod:`mdskit.distributed`) every process
    trains on its share of each batch and predicts its share of the test
    samples. Rank 0 writes the records and the metrics.
    """
    workspace = workspace or Workspace.load()
    spec = with_precision(workspace.registry.method(settings.method), parallel)
    strategy = build_tts(settings.ttss, workspace.components, workspace.registry,
                         settings.num_paths, settings.temperature)
    tts_params = strategy.params()
    out = settings.out
    adapters = open_datasets(workspace.components, settings.data)
    with distributed.main_process_first():
        _claim_folder(out, settings.fingerprint(spec, tts_params), settings, tts_params, method=spec.as_dict())

    model, train_result = prepare_model(workspace, spec, settings, adapters, progress, parallel)
    test_samples = load_split(adapters, "test", spec, workspace.components, settings.max_samples, settings.seed)
    results = _evaluate(model, test_samples, strategy, settings, on_sample)

    metrics = {
        "method": spec.name,
        "ttss": settings.ttss,
        "tts_params": tts_params,
        **_upper_bound_note(strategy),
        **summarize(results, [workspace.components.get("metric", name)() for name in METRIC_NAMES]),
        "conventions": CONVENTIONS,
        "data": {name: _describe(adapter) for name, adapter in adapters.items()},
        "provenance": {**provenance(settings.seed, model.device), "train_steps": _trained_steps(spec, settings),
                       "checkpoint": str(settings.checkpoint or out / "checkpoint")},
    }
    if distributed.is_main_process():
        write_json(out / "metrics.json", metrics)
    distributed.barrier()
    return RunResult(metrics, out, train_result)


def _upper_bound_note(strategy) -> dict[str, Any]:
    """Mark the metrics of a strategy that selects with the ground truth as an upper bound."""
    if not strategy.uses_ground_truth:
        return {}
    return {"upper_bound": True,
            "upper_bound_note": f"'{strategy.name}' selects each answer with the ground truth: these metrics are "
                                "an upper bound on test-time scaling, not results a deployed model can reach."}


def train_only(settings: RunSettings, workspace: Workspace | None = None,
               progress: ProgressCallback | None = None,
               parallel: ParallelSettings | None = None) -> TrainResult | None:
    """Train a method into ``out/checkpoint`` without evaluating it."""
    workspace = workspace or Workspace.load()
    spec = with_precision(workspace.registry.method(settings.method), parallel)
    # The learning rate is constant and batch order depends only on the seed,
    # so a checkpoint's first N steps do not depend on the budget: rerunning
    # with a larger --train-steps continues training.
    adapters = open_datasets(workspace.components, settings.data)
    with distributed.main_process_first():
        _claim_folder(settings.out, replace(settings, train_steps=None).fingerprint(spec, {}), settings,
                      method=spec.as_dict(), resumable=("train_steps",))
    _, result = prepare_model(workspace, spec, settings, adapters, progress, parallel)
    return result


def _trained_steps(spec: MethodSpec, settings: RunSettings) -> int:
    """Steps the evaluated model was trained for: the checkpoint's, else the budget."""
    if settings.checkpoint is not None:
        return checkpoint_step(settings.checkpoint)
    return spec.training.steps if settings.train_steps is None else settings.train_steps


def _describe(adapter: DatasetAdapter) -> str:
    return adapter.description if adapter.embedded else str(adapter.root)


def _claim_folder(out: Path, fingerprint: str, settings: RunSettings, tts_params: dict[str, Any] | None = None,
                  method: dict[str, Any] | None = None, resumable: tuple[str, ...] = ()) -> None:
    """Create ``out`` or check that it belongs to a run with the same settings.

    Args:
        method: The method's definition, stored so that a rerun with another
            definition (for example other --lora values) is named as such.
        resumable: Settings that a rerun may change, such as ``train_steps``
            of a training that continues.
    """
    record_path = out / "run.json"
    current = {key: str(value) for key, value in asdict(settings).items()}
    method_digest = _digest(method) if method is not None else None
    if record_path.is_file():
        stored = json.loads(record_path.read_text(encoding="utf-8"))
        if stored.get("fingerprint") != fingerprint:
            changed = sorted(key for key, value in stored.get("settings", {}).items()
                             if value != current.get(key) and key != "out" and key not in resumable)
            if stored.get("method_digest") not in (None, method_digest):
                changed.append("the method definition")
            stored_tts = stored.get("tts_params")
            if isinstance(stored_tts, dict) and tts_params is not None:
                changed += sorted(f"strategy {key}" for key in set(stored_tts) | set(tts_params)
                                  if stored_tts.get(key) != tts_params.get(key))
            verb = "differs" if len(changed) == 1 else "differ"
            detail = f" ({', '.join(changed)} {verb})" if changed else " (the method definition differs)"
            raise MdskitError(
                f"{out} contains a run of method {stored.get('method')} with other settings{detail}; "
                "pass another --out or delete the folder.")
        logger.info("resuming the run in %s", out)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(record_path, {"fingerprint": fingerprint, "method": settings.method, "ttss": settings.ttss,
                             "settings": current, "tts_params": tts_params or {}, "method_digest": method_digest})


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _evaluate(model: MdsModel | SpecialistModel, samples: list[MdsSample], strategy, settings: RunSettings,
              on_sample: Callable[[int, int], None] | None) -> list[SampleResult]:
    """Predict every sample not yet in ``predictions.jsonl`` and score all of them.

    With several processes the pending samples are predicted in rounds of
    one sample per rank. After each round every rank receives all records
    of the round, and rank 0 appends them in sample order, so an interrupted
    run keeps every finished round and the file never lists a sample twice.
    """
    path = settings.out / "predictions.jsonl"
    by_uid = {sample.uid: sample for sample in samples}
    done = {record["id"]: record for record in read_jsonl(path) if record.get("id") in by_uid}
    distributed.barrier()
    if distributed.is_main_process():
        rewrite_jsonl(path, list(done.values()))
    if done:
        logger.info("%d of %d samples already predicted in %s", len(done), len(samples), path)

    pending = [sample for sample in samples if sample.uid not in done]
    processes, rank = distributed.world_size(), distributed.rank()
    for start in range(0, len(pending), processes):
        round_samples = pending[start:start + processes]
        record = None
        if rank < len(round_samples):
            record = _predict_record(model, round_samples[rank], strategy, settings)
        for gathered in distributed.all_gather_objects(record):
            if gathered is None:
                continue
            done[gathered["id"]] = gathered
            if distributed.is_main_process():
                append_jsonl(path, gathered)
        if on_sample and distributed.is_main_process():
            on_sample(len(done), len(samples))
    return [result_from_record(done[sample.uid], sample) for sample in samples]


def _predict_record(model: MdsModel, sample: MdsSample, strategy, settings: RunSettings) -> dict:
    """Predict one sample, save its images and return its ``predictions.jsonl`` record."""
    started = time.perf_counter()
    prediction = predict(model, sample, strategy, seed=settings.seed)
    seconds = time.perf_counter() - started
    result = prediction.score()
    _save_images(settings.out, prediction)
    # Inference latency of the sample (all paths), for the benchmark's cost columns.
    return {**prediction_record(prediction, result), "seconds": round(seconds, 4)}


def _save_images(out: Path, prediction) -> None:
    sample = prediction.sample
    name = f"{sample.dataset}/{sample.case_id.replace('/', '_')}.png"
    save_png(out / "masks" / name, prediction.mask)
    save_png(out / "overlays" / name, overlay(sample.image, prediction.mask))
    agreement = (prediction.agreement.detach().cpu().float().numpy() * 255).round()
    save_png(out / "agreement" / name, agreement.astype("uint8"))
