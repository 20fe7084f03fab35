"""The ``mdskit`` command line: ``run``, ``train`` and ``list``.

Only this module prints. Errors caused by input (``MdskitError``) end with
one message and exit status 2; an interrupted run says where its results
were kept.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import MdskitError
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
@click.option("--disable-plugin", "disabled", multiple=True, metavar="NAME",
              help="Skip a plugin of the mdskit.plugins entry-point group; repeatable.")
@click.option("-v", "--verbose", is_flag=True, help="Log where weights and data come from.")
@click.pass_context
def main(context: click.Context, registry_path: Path | None, disabled: tuple[str, ...], verbose: bool) -> None:
    """Medical diagnosis segmentation: train, run and compare methods."""
    _configure_logging(verbose)
    context.obj = {"registry": registry_path, "disabled": disabled}


def _workspace(context: click.Context):
    from .runs import Workspace

    return Workspace.load(context.obj["registry"], tuple(context.obj["disabled"]))


@contextmanager
def _user_errors(out: Path | None = None):
    """Turn input errors and interrupts into one message and an exit status."""
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
        kept = (f"; saved checkpoints and predicted samples are kept in {out}, rerun the same command to resume"
                if out else "")
        console.print(f"[yellow]Interrupted{kept}.[/]")
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
@click.option("--paths", "num_paths", type=int,
              help="Sampled paths per request (m), 1 to 64; above 1 needs a temperature above 0.")
@click.option("--temperature", type=float, help="Sampling temperature of the paths, a finite number above 0.")
@click.option("--perturbations", "num_perturbations", type=int,
              help="Region prompts per path (n), 1 to 16: the RVLS2M prompt and n - 1 perturbed versions.")
@click.option("--questions", "num_questions", type=int,
              help="Phrasings of the clinical question per request, 1 to 8.")
@click.option("--score", type=str,
              help="Ground-truth-free score of best-of-n: predicted-iou, logprob or agreement.")
@_data_options
@click.pass_context
def run(context, method, ttss, checkpoint, out, num_paths, temperature, num_perturbations, num_questions, score,
        data, train_steps, seed, max_samples):
    """Train METHOD (or load --checkpoint) and evaluate it on the test splits."""
    from .runs import RunSettings, parse_data_option, run_method

    out = out or Path("runs") / f"{method}-{ttss}"
    with _user_errors(out):
        workspace = _workspace(context)
        _override_tts(workspace, ttss, num_perturbations=num_perturbations, num_questions=num_questions,
                      score=score)
        settings = RunSettings(method=method, data=parse_data_option(data, workspace.components), out=out,
                               ttss=ttss, checkpoint=checkpoint, train_steps=train_steps, seed=seed,
                               num_paths=num_paths, temperature=temperature, max_samples=max_samples)
        _announce_data(workspace, settings.data)
        with _progress() as (on_progress, on_sample):
            result = run_method(settings, workspace, progress=on_progress, on_sample=on_sample)
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
@click.pass_context
def train(context, method, out, data, train_steps, seed, max_samples):
    """Train METHOD and save a checkpoint without evaluating it."""
    from .runs import RunSettings, parse_data_option, train_only

    out = out or Path("runs") / f"{method}-train"
    with _user_errors(out):
        workspace = _workspace(context)
        settings = RunSettings(method=method, data=parse_data_option(data, workspace.components), out=out,
                               train_steps=train_steps, seed=seed, max_samples=max_samples)
        _announce_data(workspace, settings.data)
        with _progress() as (on_progress, _):
            result = train_only(settings, workspace, progress=on_progress)
        if result is not None and result.losses:
            values = ", ".join(f"{key} {value:.3f}" for key, value in result.losses.items())
            output.print(f"Trained steps {result.start_step}-{result.steps} in {result.seconds:.0f} s ({values}).")
        output.print(f"Checkpoint: {out / 'checkpoint'}")


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
        for failure in components.failures:
            output.print(f"[red]plugin {failure.plugin} failed:[/] {failure.reason}", highlight=False)


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
