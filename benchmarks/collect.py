"""Collect ``metrics.json`` files and reference scores into one Markdown table.

Usage::

    python benchmarks/collect.py RUN_DIR... [--references references.json]

Each RUN_DIR is an ``mdskit run`` output folder. The table has one row per
run (or reference) and dataset, values in percent.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

METRICS = ("giou", "ciou", "dice", "accuracy", "macro_f1")
HEADER = "| method | TTS | dataset | n | gIoU | cIoU | Dice | accuracy | macro-F1 |"


def rows(label: str, strategy: str, table: dict) -> list[str]:
    """Markdown rows of one result table: every dataset, then pooled."""
    names = sorted(key for key, value in table.items() if isinstance(value, dict) and "n" in value and key != "pooled")
    lines = []
    for name in [*names, "pooled"]:
        values = table[name]
        cells = " | ".join(f"{100 * values[metric]:.1f}" for metric in METRICS)
        lines.append(f"| {label} | {strategy} | {name} | {values['n']} | {cells} |")
    return lines


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--references", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON written by benchmarks/references.py --json-out.")
def main(runs: tuple[Path, ...], references: Path | None) -> None:
    """Print one Markdown table of the runs and references."""
    lines = [HEADER, "|" + "---|" * 9]
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        lines += rows(metrics["method"], metrics["ttss"], metrics)
    if references:
        for name, table in json.loads(references.read_text(encoding="utf-8")).items():
            lines += rows(f"reference: {name}", "-", table)
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
