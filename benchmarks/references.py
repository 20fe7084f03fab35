"""Trivial reference scores on the test splits: the floor every method must clear.

References:
    empty mask      predicts no finding anywhere;
    whole image     marks every pixel;
    majority label  the most frequent diagnosis of the dataset's train split.

Each reference is scored with the same metrics and conventions as
``mdskit run``. The mask references carry the majority diagnosis, so their
accuracy column is the majority-label accuracy.

Usage::

    python benchmarks/references.py --data busi=../shared/data --data ph2=../shared/data
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mdskit.metrics import SampleResult, summarize
from mdskit.references import majority_label, mask_predictor
from mdskit.runs import METRIC_NAMES, Workspace, open_datasets, parse_data_option

# Display names of the package's references (mdskit/references.py), as in the committed tables.
REFERENCES = {"empty mask": "empty-mask", "whole image": "whole-image"}


def reference_results(adapters, components) -> dict[str, list[SampleResult]]:
    """Score every reference on the test split of each dataset."""
    results: dict[str, list[SampleResult]] = {name: [] for name in REFERENCES}
    predictors = {name: mask_predictor(reference, components) for name, reference in REFERENCES.items()}
    for adapter in adapters.values():
        majority = majority_label(adapter)
        for case in adapter.load_split("test"):
            for name, predict_mask in predictors.items():
                results[name].append(SampleResult.from_masks(
                    case.uid, case.dataset, case.label, case.label_set, majority, predict_mask(case), case.mask))
    return results


@click.command()
@click.option("--data", multiple=True, metavar="NAME=PATH", help="Dataset adapter and folder, repeatable.")
@click.option("--json-out", type=click.Path(path_type=Path), help="Also write the scores as JSON.")
def main(data: tuple[str, ...], json_out: Path | None) -> None:
    """Print the reference scores as a Markdown table."""
    workspace = Workspace.load()
    adapters = open_datasets(workspace.components, parse_data_option(data, workspace.components))
    metrics = [workspace.components.get("metric", name)() for name in METRIC_NAMES]
    scores = {name: summarize(results, metrics) for name, results in reference_results(adapters, workspace.components).items()}
    click.echo("| reference | dataset | n | gIoU | cIoU | Dice | accuracy | macro-F1 |")
    click.echo("|---|---|---|---|---|---|---|---|")
    for name, table in scores.items():
        for dataset, values in table.items():
            cells = " | ".join(f"{100 * values[metric]:.1f}" for metric in METRIC_NAMES)
            click.echo(f"| {name} | {dataset} | {values['n']} | {cells} |")
    if json_out:
        json_out.write_text(json.dumps(scores, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
