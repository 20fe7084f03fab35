"""The ``mdskit`` command line.

Commands: ``run``, ``train``, ``predict``, ``bench``, ``leaderboard``,
``list`` and ``plugins``. Only this module prints. Errors caused by input
(``MdskitError``) end with one message and exit status 2; an interrupted run
says where its results were kept.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import ConfigError, MdskitError
from .registry import ROLES

console = Console(stderr=True)
output = Console()


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


@click.group()
@click.option("--registry", "registry_path", type=click.Path(path_type=Path),
              help="Method definitions file (default: ./registry.yaml or the project's own).")
@click.option("--plugin", "plugin_files", multiple=True, metavar="PATH",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Load a one-off plugin file (a Python module with @hookimpl functions); repeatable.")
@click.option("--disable-plugin", "disabled", multiple=True, metavar="NAME",
              help="Skip a plugin by name (entry-point name or plugin file stem); repeatable.")
@click.option("-v", "--verbose", is_flag=True, help="Log where weights and data come from.")
@click.pass_context
def main(context: click.Context, registry_path: Path | None, plugin_files: tuple[Path, ...],
         disabled: tuple[str, ...], verbose: bool) -> None:
    """Medical diagnosis segmentation: train, run and compare methods."""
    _configure_logging(verbose)
    context.obj = {"registry": registry_path, "disabled": disabled, "plugin_files": plugin_files}


def _workspace(context: click.Context):
    from .runs import Workspace

    return Workspace.load(context.obj["registry"], tuple(context.obj["disabled"]),
                          tuple(context.obj["plugin_files"]))


@contextmanager
def _user_errors(out: Path | None = None, kept_outputs: str = "saved checkpoints and predicted samples"):
    """Turn input errors and interrupts into one message and an exit status.

    ``kept_outputs`` names what an interrupted command leaves in ``out``.
    """
    try:
        yield
    except MdskitError as error:
        console.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as error:
        # File-system failures (an --out that is a file, no write permission,
        # a full disk) are input problems too, not bugs.
        console.print(f"[bold red]Error:[/] {error}; check the path and its permissions.", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        note = f"; {kept_outputs} are kept in {out}, rerun the same command to resume" if out else ""
        console.print(f"[yellow]Interrupted{escape(note)}.[/]", highlight=False, soft_wrap=True)
        sys.exit(130)


def _data_options(function):
    function = click.option("--data", "data", multiple=True, metavar="NAME=PATH",
                            help="Dataset adapter and its folder, repeatable (busi, kvasir, ph2, shenzhen). "
                                 "Default: the embedded synthetic phantom dataset.")(function)
    function = click.option("--train-steps", type=click.IntRange(min=0),
                            help="Optimizer steps (default: the method's training.steps).")(function)
    function = click.option("--seed", type=int, default=0, show_default=True,
                            help="Seed of initialisation, batch order and sampling.")(function)
    function = click.option("--max-samples", type=click.IntRange(min=1),
                            help="Use at most N cases per dataset and split, covering every label.")(function)
    return function


def _parallel_options(function):
    """Add the options that spread training over processes and save memory."""
    options = [
        click.option("--launcher", type=click.Choice(["none", "pytorch"]),
                     help="How the processes were started: pytorch under torchrun, none for one process "
                          "(default: pytorch when torchrun's variables are set)."),
        click.option("--strategy", type=click.Choice(["ddp", "fsdp", "deepspeed"]), default="ddp",
                     show_default=True,
                     help="Multi-process strategy: ddp (CPU or GPU), fsdp (CPU or GPU, sharded weights and "
                          "optimizer state) or deepspeed (CPU or GPU, ZeRO stage 2: sharded gradients and "
                          "optimizer state)."),
        click.option("--accumulate", "accumulation", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Micro-batches per optimizer step on each process (gradient accumulation); the "
                          "method's batch size must be a multiple of processes x this."),
        click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]),
                     help="Autocast dtype of the training forward pass (default: the method's "
                          "training.precision); float16 needs CUDA."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _lora_options(function):
    """Add the options that override the method's LoRA settings."""
    options = [
        click.option("--lora-rank", type=int,
                     help="LoRA rank r of each adapter, a positive integer (default: the method's "
                          "finetune.lora.r, else 8). Any --lora option turns on LoRA fine-tuning, which freezes "
                          "every weight outside the adapters and the finetune.trainable parts."),
        click.option("--lora-alpha", type=float,
                     help="LoRA scaling numerator, a number above 0. Each adapter's update is scaled by "
                          "alpha / rank (default: the method's finetune.lora.alpha, else 16)."),
        click.option("--lora-dropout", type=float,
                     help="Dropout on each adapter's input, in [0, 1) "
                          "(default: the method's finetune.lora.dropout, else 0.05)."),
        click.option("--lora-targets", metavar="NAMES",
                     help="Comma-separated names of the language model's layers that get adapters, for "
                          "example q_proj,v_proj (default: the method's finetune.lora.target_modules, "
                          "else q_proj,v_proj)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _override_lora(workspace, method: str, rank: int | None, alpha: float | None, dropout: float | None,
                   targets: str | None) -> None:
    """Replace the method's registry.yaml LoRA settings with those given on the command line."""
    from .finetune import override_lora

    overrides = {"r": rank, "alpha": alpha, "dropout": dropout,
                 "target_modules": None if targets is None else [name.strip() for name in targets.split(",")]}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if not overrides:
        return
    # Keep a whole alpha an int, as registry.yaml writes it, so that the
    # same settings give the same run fingerprint.
    if "alpha" in overrides and overrides["alpha"].is_integer():
        overrides["alpha"] = int(overrides["alpha"])
    spec = workspace.registry.method(method)
    if spec.specialist is not None:
        raise ConfigError(f"method '{method}' is a specialist model without a language model, so it takes no "
                          "LoRA adapters; remove the --lora options.")
    where = f"method '{method}' with the --lora options (--lora-rank sets r, --lora-targets sets target_modules)"
    workspace.registry.methods[method] = replace(spec, finetune=override_lora(spec.finetune, overrides, where))


def _tts_options(function):
    """Add the options that override the test-time scaling strategy's parameters."""
    options = [
        click.option("--paths", "num_paths", type=int,
                     help="Sampled paths per request (m), 1 to 64; above 1 needs a temperature above 0."),
        click.option("--temperature", type=float, help="Sampling temperature of the paths, a finite number above 0."),
        click.option("--perturbations", "num_perturbations", type=int,
                     help="Region prompts per path (n), 1 to 16: the RVLS2M prompt and n - 1 perturbed versions."),
        click.option("--questions", "num_questions", type=int,
                     help="Phrasings of the clinical question per request, 1 to 8."),
        click.option("--score", type=str,
                     help="Ground-truth-free score of best-of-n: predicted-iou, logprob or agreement."),
        click.option("--max-fused-paths", "max_fused_paths", type=int,
                     help="Self-consistency: fuse the masks of at most this many of the winning label's paths, "
                          "the most probable first; only those masks are decoded. 0 fuses every voting path."),
    ]
    # click lists options in decorator order, so apply them last to first.
    for option in reversed(options):
        function = option(function)
    return function


@main.command()
@click.argument("method")
@click.option("--ttss", default="none", show_default=True,
              help="Test-time scaling strategy: none (greedy), self-consistency (vote over m sampled paths), "
                   "best-of-n (highest --score), region-perturbation (n region prompts per path), "
                   "prompt-ensemble (vote over phrasings of the question), or oracle (selects with the "
                   "ground truth: an upper bound for evaluation only). `mdskit list` shows every registered strategy.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Trained checkpoint folder; without it the method is trained first.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder (default: runs/METHOD-TTSS); rerunning resumes it.")
@_tts_options
@_data_options
@_parallel_options
@_lora_options
@click.pass_context
def run(context, method, ttss, checkpoint, out, num_paths, temperature, num_perturbations, num_questions, score,
        max_fused_paths, data, train_steps, seed, max_samples, launcher, strategy, accumulation, precision,
        lora_rank, lora_alpha, lora_dropout, lora_targets):
    """Train METHOD (or load --checkpoint) and evaluate it on the test splits.

    Under torchrun every process trains on its share of each batch and
    predicts its share of the test samples; rank 0 writes the outputs.
    """
    from .runs import RunSettings, parse_data_option, run_method

    out = out or Path("runs") / f"{method}-{ttss}"
    with _user_errors(out), _process_group(launcher, strategy, accumulation, precision) as parallel:
        workspace = _workspace(context)
        _override_tts(workspace, ttss, num_perturbations=num_perturbations, num_questions=num_questions,
                      score=score, max_fused_paths=max_fused_paths)
        lora_options = (lora_rank, lora_alpha, lora_dropout, lora_targets)
        if checkpoint is not None and any(value is not None for value in lora_options):
            raise ConfigError("the --lora options set how a method trains, but --checkpoint loads a trained "
                              f"model from {checkpoint}; remove the --lora options or the --checkpoint.")
        _override_lora(workspace, method, *lora_options)
        settings = RunSettings(method=method, data=parse_data_option(data, workspace.components), out=out,
                               ttss=ttss, checkpoint=checkpoint, train_steps=train_steps, seed=seed,
                               num_paths=num_paths, temperature=temperature, max_samples=max_samples)
        _announce_data(workspace, settings.data)
        with _progress() as (on_progress, on_sample):
            result = run_method(settings, workspace, progress=on_progress, on_sample=on_sample, parallel=parallel)
        if not _is_main_process():
            return
        _print_metrics(result.metrics)
        output.print(f"Outputs: {out / 'metrics.json'}, {out / 'predictions.jsonl'}, {out / 'masks'}, "
                     f"{out / 'overlays'}")


def _override_tts(workspace, ttss: str, **overrides) -> None:
    """Put the strategy options given on the command line over its registry.yaml defaults."""
    options = {key: value for key, value in overrides.items() if value is not None}
    if options:
        defaults = workspace.registry.tts_defaults
        defaults[ttss] = {**defaults.get(ttss, {}), **options}


@main.command()
@click.argument("method")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder (default: runs/METHOD-train); the checkpoint goes to OUT/checkpoint.")
@_data_options
@_parallel_options
@_lora_options
@click.pass_context
def train(context, method, out, data, train_steps, seed, max_samples, launcher, strategy, accumulation, precision,
          lora_rank, lora_alpha, lora_dropout, lora_targets):
    """Train METHOD and save a checkpoint without evaluating it.

    For several processes start it with torchrun, for example
    'torchrun --nproc-per-node 2 -m mdskit.cli train METHOD'.
    """
    from .runs import RunSettings, parse_data_option, train_only

    out = out or Path("runs") / f"{method}-train"
    with _user_errors(out), _process_group(launcher, strategy, accumulation, precision) as parallel:
        workspace = _workspace(context)
        _override_lora(workspace, method, lora_rank, lora_alpha, lora_dropout, lora_targets)
        settings = RunSettings(method=method, data=parse_data_option(data, workspace.components), out=out,
                               train_steps=train_steps, seed=seed, max_samples=max_samples)
        _announce_data(workspace, settings.data)
        with _progress() as (on_progress, _):
            result = train_only(settings, workspace, progress=on_progress, parallel=parallel)
        if not _is_main_process():
            return
        if result is not None and result.losses:
            values = ", ".join(f"{key} {value:.3f}" for key, value in result.losses.items())
            output.print(f"Trained steps {result.start_step}-{result.steps} in {result.seconds:.0f} s ({values}).")
        output.print(f"Checkpoint: {out / 'checkpoint'}")


@contextmanager
def _process_group(launcher: str | None, strategy: str, accumulation: int, precision: str | None):
    """Join the process group of a torchrun launch for the block and leave it afterwards."""
    from . import distributed

    parallel = distributed.ParallelSettings(launcher=launcher, strategy=strategy, accumulation=accumulation,
                                            precision=precision)
    distributed.init_process_group(parallel)
    try:
        yield parallel
    finally:
        distributed.shutdown()


def _is_main_process() -> bool:
    from . import distributed

    return distributed.is_main_process()


def _parse_window(context, parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        centre, width = (float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not CENTRE,WIDTH; write for example --window 40,400.") from None
    if not (math.isfinite(centre) and math.isfinite(width)):
        raise click.BadParameter(f"{value!r} has a non-finite centre or width; give finite numbers, for example "
                                 "--window 40,400.")
    if width < 1:
        raise click.BadParameter(f"width {width:g} is below 1; give a positive window width.")
    return centre, width


@main.command()
@click.argument("method")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--question", required=True, help="The clinical question asked about every image.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Trained checkpoint folder (default: runs/METHOD-train/checkpoint, then "
                   "runs/METHOD-none/checkpoint).")
@click.option("--ttss", default="none", show_default=True, help="Test-time scaling strategy.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder for masks, overlays, maps, records and report.html; without it nothing is written.")
@click.option("--window", callback=_parse_window, metavar="CENTRE,WIDTH",
              help="DICOM and NIfTI intensity window in stored units after rescaling (HU for CT); "
                   "default: the DICOM file's window, else the full range (DICOM) or 0.5-99.5 percentiles (NIfTI).")
@click.option("--frame", type=click.IntRange(min=0),
              help="Frame of a multi-frame DICOM or volume of a 4-D NIfTI, from 0.")
@click.option("--axis", type=click.IntRange(0, 2), default=2, show_default=True,
              help="NIfTI voxel axis that --slice indexes.")
@click.option("--slice", "slice_index", type=click.IntRange(min=0), help="NIfTI slice index along --axis, from 0.")
@click.option("--labels", help="Comma-separated diagnoses to read the answer against "
                               "(default: every registered dataset's labels).")
@_tts_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampled paths.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON instead of text.")
@click.pass_context
def predict(context, method, images, question, checkpoint, ttss, out, window, frame, axis, slice_index, labels,
            num_paths, temperature, num_perturbations, num_questions, score, max_fused_paths, seed, as_json):
    """Predict a chain of thought, diagnosis and mask with METHOD for each image file.

    IMAGES may be PNG, JPEG, BMP, TIFF, DICOM or NIfTI files.
    """
    import json

    from .predict import PredictSettings, predict_files

    kept_outputs = "the folders of the images already predicted, with predictions.json and report.html for them,"
    with _user_errors(out, kept_outputs):
        workspace = _workspace(context)
        _override_tts(workspace, ttss, num_perturbations=num_perturbations, num_questions=num_questions,
                      score=score, max_fused_paths=max_fused_paths)
        label_set = tuple(label.strip() for label in labels.split(",") if label.strip()) if labels else None
        settings = PredictSettings(method=method, images=list(images), question=question, checkpoint=checkpoint,
                                   ttss=ttss, out=out, window=window, frame=frame, axis=axis,
                                   slice_index=slice_index, labels=label_set, num_paths=num_paths,
                                   temperature=temperature, seed=seed)
        on_case = None if as_json else _print_case
        cases = predict_files(settings, workspace, on_case=on_case)
        if as_json:
            output.print_json(json.dumps([case.record for case in cases], default=str))
        elif out is not None:
            output.print(f"Report: {out / 'report.html'}; records: {out / 'predictions.json'}", markup=False,
                         highlight=False, soft_wrap=True)


def _print_case(case) -> None:
    record = case.record

    def line(text: str) -> None:
        output.print(text, markup=False, highlight=False, soft_wrap=True)

    output.print(f"[bold]{escape(record['input']['path'])}[/] ({record['seconds']:.1f} s)", highlight=False,
                 soft_wrap=True)
    line(f"  Chain of thought: {record['chain_of_thought'] or '-'}")
    diagnosis = record["diagnosis"] or (f"none of the labels ({record['diagnosis_text']!r})"
                                        if record["diagnosis_text"] else "none")
    line(f"  Diagnosis: {diagnosis}")
    if record["failure"]:
        line(f"  Failure: {record['failure']}")
    line(f"  Mask: {record['mask_area_pixels']} pixels")
    for key, path in case.files.items():
        if key != "image":
            line(f"  {key}: {path}")
    if not record["similarity_map"]["available"]:
        line(f"  similarity: none, {record['similarity_map']['reason']}")


@main.command()
@click.argument("suite_file", metavar="SUITE", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Results folder (default: benchmarks/results/SUITE-NAME); rerunning resumes it.")
@click.option("--data-root", type=click.Path(path_type=Path),
              help="Folder holding the suite's datasets (default: the suite's data_root).")
@click.option("--only", multiple=True, metavar="PATTERN",
              help="Compute only cells whose key matches this glob (for example 'sim4seg.*'); repeatable.")
@click.option("--no-leaderboard", is_flag=True, help="Compute the cells without rendering the leaderboard.")
@click.pass_context
def bench(context, suite_file, out, data_root, only, no_leaderboard):
    """Run every cell of a benchmark SUITE file and render its leaderboard into OUT/leaderboard."""
    from .bench import run_bench
    from .runs import Workspace
    from .suites import load_suite

    with _user_errors(out):
        suite = load_suite(suite_file)
        out = out or Path("benchmarks") / "results" / suite.name
        registry = context.obj["registry"] or suite.registry
        workspace = Workspace.load(registry, tuple(context.obj["disabled"]), tuple(context.obj["plugin_files"]))

        def on_event(kind: str, key: str, status: str) -> None:
            console.print(f"{kind} {key}: {status}", highlight=False)

        with _progress() as (on_progress, on_sample):
            run_bench(suite, out, workspace, data_root=data_root, on_event=on_event, only=tuple(only),
                      progress=on_progress, on_sample=on_sample)
        if not no_leaderboard:
            _render_leaderboard([out], out / "leaderboard", f"mdskit bench {suite_file} --out {out}")


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder of the rendered files (default: RESULTS/leaderboard of the first folder).")
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples per interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
def leaderboard(results, out, resamples, seed):
    """Render Markdown, CSV, JSON, HTML and PNG leaderboards from stored bench RESULTS folders (merged)."""
    with _user_errors():
        _render_leaderboard(list(results), out or results[0] / "leaderboard", None, resamples, seed)


def _render_leaderboard(folders, out: Path, command: str | None, resamples: int = 2000, seed: int = 0) -> None:
    from .bench_report import render
    from .leaderboard import build_leaderboard, load_results

    loaded = load_results(folders)
    written = render(build_leaderboard(loaded, resamples, seed), out, command)
    output.print(f"Leaderboard: {', '.join(str(path) for path in written)}", highlight=False, soft_wrap=True)
    if loaded.unfinished:
        output.print(f"[yellow]{len(loaded.unfinished)} cells are unfinished and left out; rerun the bench.[/]")


@main.command(name="list")
@click.pass_context
def list_command(context):
    """Show methods, registered components and the plugin that provided each."""
    with _user_errors():
        workspace = _workspace(context)
        components = workspace.components
        methods = Table(title="Methods", title_justify="left")
        for column in ("method", "backbone", "prompt", "decoder", "cot", "defined in"):
            methods.add_column(column)
        for name, spec in sorted(workspace.registry.methods.items()):
            if spec.specialist is not None:
                # A specialist has no language model: its model fills the backbone column.
                methods.add_row(name, f"{spec.specialist.type} (specialist)", "-", "-", spec.cot.type, spec.provider)
            else:
                methods.add_row(name, spec.backbone.type, spec.prompt.type if spec.prompt else "-",
                                spec.decoder.type, spec.cot.type, spec.provider)
        output.print(methods)
        table = Table(title="Components", title_justify="left")
        for column in ("role", "name", "plugin"):
            table.add_column(column)
        for role in ROLES:
            for name in components.names(role.key):
                table.add_row(role.title, name, components.providers[role.key][name])
        output.print(table)
        for warning in components.warnings:
            output.print(f"[yellow]Warning:[/] {warning}", highlight=False, soft_wrap=True)
        for failure in components.failures:
            output.print(f"[red]Failed:[/] {failure.message()}", highlight=False, soft_wrap=True)
        for name, reason in sorted(workspace.registry.unavailable.items()):
            output.print(f"[red]Unavailable method {name}:[/] {reason}", highlight=False, soft_wrap=True)


@main.command(name="plugins")
@click.pass_context
def plugins_command(context):
    """Show every plugin found: version, source, what it registered, and failures."""
    with _user_errors():
        components, registry = _plugins_and_methods(context)
        registered = _registrations(components, registry)
        table = Table(title="Plugins (in load order)", title_justify="left")
        for column in ("plugin", "version", "source", "status", "registered"):
            table.add_column(column, overflow="fold")
        for name, info in components.plugins.items():
            version = info.version or "-"
            if info.distribution:
                version = f"{info.distribution} {version}"
            source = f"{info.route}: {info.source}"
            table.add_row(name, version, source, _plugin_status(info, components),
                          "\n".join(registered.get(name, [])) or "-")
        output.print(table)
        for warning in components.warnings:
            output.print(f"Warning: {warning}", highlight=False, soft_wrap=True)
        if components.failures:
            output.print("Failures:")
        for failure in components.failures:
            output.print(f"- {failure.message()}", highlight=False, soft_wrap=True)
        for name, reason in sorted(registry.unavailable.items()):
            output.print(f"- method '{name}' is unavailable: {reason}", highlight=False, soft_wrap=True)


def _plugins_and_methods(context):
    """Load plugins and methods; without a registry file (and no --registry), load the plugins alone."""
    from .methods import MethodRegistry, default_registry_path
    from .plugins import load_plugins

    if context.obj["registry"] is not None or default_registry_path().is_file():
        workspace = _workspace(context)
        return workspace.components, workspace.registry
    components, _ = load_plugins(disabled=context.obj["disabled"], files=context.obj["plugin_files"])
    console.print(f"No registry file at {default_registry_path()}, so methods are not listed; pass --registry PATH.",
                  highlight=False, soft_wrap=True)
    return components, MethodRegistry({}, {}, source="none")


def _registrations(components, registry) -> dict[str, list[str]]:
    """Return, per plugin, lines 'role: name, name' of what it registered."""
    lines: dict[str, list[str]] = {}
    for role in ROLES:
        by_plugin: dict[str, list[str]] = {}
        for name, plugin in sorted(components.providers[role.key].items()):
            by_plugin.setdefault(plugin, []).append(name)
        for plugin, names in by_plugin.items():
            lines.setdefault(plugin, []).append(f"{role.singular}: {', '.join(names)}")
    methods: dict[str, list[str]] = {}
    for name, spec in sorted(registry.methods.items()):
        methods.setdefault(spec.provider, []).append(name)
    for plugin, names in methods.items():
        if plugin in components.plugins:
            lines.setdefault(plugin, []).append(f"method: {', '.join(names)}")
    return lines


def _plugin_status(info, components) -> str:
    if info.status != "loaded":
        return info.status
    problems = sum(failure.plugin == info.name for failure in components.failures)
    return f"loaded, {problems} failure{'s' if problems != 1 else ''}" if problems else "loaded"


def _announce_data(workspace, data: dict[str, str | None]) -> None:
    for name in data:
        adapter = workspace.components.get("dataset", name)
        if adapter.embedded:
            console.print(f"[bold]Data:[/] '{name}': {adapter.description}. Pass --data NAME=PATH for the public "
                          "datasets.", highlight=False, soft_wrap=True)


@contextmanager
def _progress():
    """Progress bars for encoding, training and prediction."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int, values: dict[str, float]) -> None:
            label = {"encode": "Encoding images", "train": "Training"}.get(phase, phase)
            if phase not in tasks:
                tasks[phase] = progress.add_task(label, total=total, info="")
            info = f"loss {values['loss']:.3f}" if "loss" in values else ""
            progress.update(tasks[phase], completed=done, total=total, info=info)

        def on_sample(done: int, total: int) -> None:
            on_progress("Predicting", done, total, {})

        yield on_progress, on_sample


def _print_metrics(metrics: dict) -> None:
    title = f"{metrics['method']} with test-time scaling '{metrics['ttss']}' (test split)"
    if metrics.get("upper_bound"):
        title += " - UPPER BOUND: selected with the ground truth"
    table = Table(title=title, title_justify="left")
    for column in ("dataset", "n", "gIoU", "cIoU", "Dice", "accuracy", "macro-F1"):
        table.add_column(column, justify="right" if column != "dataset" else "left")
    rows = [key for key, value in metrics.items() if isinstance(value, dict) and "n" in value]
    for key in sorted(rows, key=lambda name: (name == "pooled", name)):
        values = metrics[key]
        table.add_row(key, str(values["n"]), *(f"{100 * values[name]:.1f}"
                                                for name in ("giou", "ciou", "dice", "accuracy", "macro_f1")))
    output.print(table)
    output.print("gIoU: mean per-sample IoU (both masks empty = 1); cIoU: total intersection / total union; "
                 "values in %.", highlight=False)


if __name__ == "__main__":
    main()
