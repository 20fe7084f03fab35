"""Quality of test-time scaling strategies against the number of candidates.

For every test case the candidates are generated once, at the largest
counts: m sampled paths with n region prompts each, and the greedy answers
of up to three phrasings of the question with up to four region prompts
each. Every strategy is then run on the first k of them. Path i is sampled
with its own seed, so the first k paths of m are the paths a run with
m = k samples (the sampling tests check this). Per-case results go to a
JSON-lines file, one line per case, so an interrupted run resumes.

Outputs: a Markdown table and a PNG plot of accuracy, gIoU, cIoU and Dice
against m (and n), per dataset, every strategy beside the oracle (an upper
bound that selects with the ground truth), and the share of the oracle's
gain over greedy decoding that each ground-truth-free strategy recovers.

Example (from the project folder):

    python benchmarks/tts_curves.py --method sim4seg --checkpoint runs/sim4seg-train/checkpoint \\
        --data busi=../shared/data --data kvasir=../shared/data \\
        --data ph2=../shared/data --data shenzhen=../shared/data \\
        --cases runs/tts-curves-sim4seg.jsonl --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from mdskit.build import build_model
from mdskit.evaluation import SamplingPlan, sample_candidates, select
from mdskit.metrics import SampleResult, summarize
from mdskit.outputs import append_jsonl, read_jsonl, write_json
from mdskit.runs import METRIC_NAMES, Workspace, load_split, open_datasets, parse_data_option
from mdskit_tts import BestOfN, Greedy, Oracle, SelfConsistency

logger = logging.getLogger("tts_curves")

PATH_COUNTS = (1, 2, 4, 8)
PERTURBATION_COUNTS = (1, 2)
GREEDY_PERTURBATION_COUNTS = (1, 2, 4)
QUESTION_COUNTS = (1, 2, 3)
SCORES = ("predicted-iou", "logprob", "agreement")
CURVE_METRICS = ("accuracy", "giou", "ciou", "dice")
MIN_ORACLE_GAIN = 0.005
"""Smallest oracle gain (0.5 points) that a recovered share is computed for,
because a share of a smaller gain is mostly noise."""


def configurations(max_paths: int, max_perturbations: int) -> list[tuple[str, str, int, int, int]]:
    """List (key, strategy, m, n, phrasings) of every configuration that is scored."""
    rows = [("greedy", "none", 1, 1, 1)]
    for paths in [count for count in PATH_COUNTS if count <= max_paths]:
        for perturbations in [count for count in PERTURBATION_COUNTS if count <= max_perturbations]:
            suffix = f"m{paths}-n{perturbations}"
            rows.append((f"self-consistency/{suffix}", "self-consistency", paths, perturbations, 1))
            rows.append((f"self-consistency:every-mask/{suffix}", "self-consistency:every-mask", paths,
                         perturbations, 1))
            for score in SCORES:
                rows.append((f"best-of-n:{score}/{suffix}", f"best-of-n:{score}", paths, perturbations, 1))
            rows.append((f"oracle/{suffix}", "oracle", paths, perturbations, 1))
    for perturbations in greedy_perturbation_counts(max_perturbations):
        rows.append((f"region-perturbation/m1-n{perturbations}", "region-perturbation", 1, perturbations, 1))
        rows.append((f"oracle-greedy/m1-n{perturbations}", "oracle", 1, perturbations, 1))
    for questions in QUESTION_COUNTS:
        rows.append((f"prompt-ensemble/q{questions}", "prompt-ensemble", 1, 1, questions))
        rows.append((f"oracle-greedy/q{questions}", "oracle", 1, 1, questions))
    return rows


def greedy_perturbation_counts(max_perturbations: int) -> tuple[int, ...]:
    """Region prompts of the greedy answers: up to 4, or only 1 when the method cannot perturb (LISA)."""
    return GREEDY_PERTURBATION_COUNTS if max_perturbations > 1 else (1,)


def strategy_for(name: str):
    """Build the selector of a configuration; counts do not matter for selection."""
    if name == "none":
        return Greedy()
    if name in ("self-consistency", "region-perturbation", "prompt-ensemble"):
        return SelfConsistency(num_paths=1)
    if name == "self-consistency:every-mask":
        return SelfConsistency(num_paths=1, max_fused_paths=0)
    if name == "oracle":
        return Oracle(num_paths=1)
    return BestOfN(num_paths=1, score=name.split(":", 1)[1])


def score_case(model, sample, args) -> dict:
    """Generate one case's candidates once and score every configuration on its subsets."""
    sampled, _ = sample_candidates(model, sample, SamplingPlan(args.max_paths, args.temperature, True,
                                                               args.max_perturbations, 1), seed=args.seed)
    greedy_plan = SamplingPlan(1, 1.0, False, max(greedy_perturbation_counts(args.max_perturbations)),
                               max(QUESTION_COUNTS))
    greedy, _ = sample_candidates(model, sample, greedy_plan, seed=args.seed)
    results = {}
    for key, name, paths, perturbations, questions in configurations(args.max_paths, args.max_perturbations):
        if key.startswith(("self-consistency/", "self-consistency:", "best-of-n", "oracle/")):
            pool = [c for c in sampled if c.sampled_path < paths and c.perturbation < perturbations]
        else:
            pool = [c for c in greedy
                    if c.question_index < questions and c.perturbation < perturbations]
        selection = select(strategy_for(name), pool, sample)
        mask = selection.mask.cpu().numpy().astype(bool)
        scored = SampleResult.from_masks(sample.uid, sample.dataset, sample.label, sample.label_set,
                                         selection.diagnosis, mask, sample.mask)
        results[key] = [scored.predicted_label, scored.intersection, scored.union, scored.predicted_area,
                        scored.true_area]
    return {"id": sample.uid, "dataset": sample.dataset, "label": sample.label,
            "label_set": list(sample.label_set), "results": results}


def summaries(records: list[dict], metrics) -> dict[str, dict]:
    """Compute the metrics of every configuration per dataset and pooled."""
    keys = list(records[0]["results"])
    table = {}
    for key in keys:
        results = [SampleResult(record["id"], record["dataset"], record["label"], tuple(record["label_set"]),
                                *record["results"][key]) for record in records]
        table[key] = summarize(results, metrics)
    return table


def recovered_share(table: dict, dataset: str, metric: str, strategy_key: str, oracle_key: str) -> str:
    """Format (strategy - greedy) / (oracle - greedy) in %, or n/a below :data:`MIN_ORACLE_GAIN`."""
    greedy = table["greedy"][dataset][metric]
    oracle_gain = table[oracle_key][dataset][metric] - greedy
    if oracle_gain < MIN_ORACLE_GAIN:
        return "n/a"
    return f"{100 * (table[strategy_key][dataset][metric] - greedy) / oracle_gain:.0f}%"


def markdown(table: dict, args, wall_s: float, cases: int) -> str:
    """Write the curves as Markdown tables."""
    datasets = [name for name in table["greedy"]]
    lines = [f"# Test-time scaling curves: {args.method}", "",
             f"Command: `{args.command}`", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, Python "
             f"{platform.python_version()}, torch {torch.__version__}. {cases} test cases; candidates generated "
             f"once per case (m = {args.max_paths} sampled paths at temperature {args.temperature}, "
             f"n = {args.max_perturbations} region prompts per path; greedy answers of 3 phrasings with "
             f"{max(greedy_perturbation_counts(args.max_perturbations))} region prompts each), wall time of this "
             f"invocation {wall_s / 60:.1f} min (resumed runs count only the cases they computed).", "",
             "`oracle` selects with the ground truth (true diagnosis first, then IoU): an UPPER BOUND, not a "
             "usable strategy. `self-consistency` fuses the masks of at most 3 of the winning label's paths "
             "(its default), `self-consistency:every-mask` those of every voting path. Values in %; "
             "accuracy / gIoU / cIoU / Dice.", ""]

    lines += ["## Share of the oracle's gain over greedy that each strategy recovers", "",
              "(strategy - greedy) / (oracle - greedy) for accuracy and Dice, n/a where the oracle gains "
              "less than 0.5 points. Each sampling strategy is compared with the oracle over the same "
              "m x n candidates, region-perturbation (where the method has a region prompt) with the oracle "
              "over the same greedy answer's 4 region prompts (oracle-greedy/m1-n4), and prompt-ensemble "
              "with the oracle over the same 3 greedy answers "
              "(oracle-greedy/q3). The gain column is that of the oracle over m sampled paths with n = 1.", ""]
    header = "| dataset | metric | oracle gain (points) | " + " | ".join(_recovery_columns(args)) + " |"
    lines += [header, "|" + "---|" * (3 + len(_recovery_columns(args)))]
    for dataset in datasets:
        for metric in ("accuracy", "dice"):
            gain = table[f"oracle/m{args.max_paths}-n1"][dataset][metric] - table["greedy"][dataset][metric]
            cells = [recovered_share(table, dataset, metric, strategy_key, oracle_key)
                     for strategy_key, oracle_key in _recovery_pairs(args)]
            lines.append(f"| {dataset} | {metric} | {100 * gain:+.1f} (m={args.max_paths}) | " + " | ".join(cells)
                         + " |")
    lines.append("")

    lines += ["## Every configuration", ""]
    for dataset in datasets:
        lines += [f"### {dataset} (n = {table['greedy'][dataset]['n']})", "",
                  "| configuration | accuracy | gIoU | cIoU | Dice |", "|---|---|---|---|---|"]
        for key, values in table.items():
            row = values[dataset]
            label = f"{key} (upper bound)" if key.startswith("oracle") else key
            lines.append(f"| {label} | " + " | ".join(f"{100 * row[name]:.1f}" for name in CURVE_METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def _recovery_pairs(args) -> list[tuple[str, str]]:
    m = args.max_paths
    pairs = [(f"self-consistency/m{m}-n1", f"oracle/m{m}-n1"),
             (f"self-consistency:every-mask/m{m}-n1", f"oracle/m{m}-n1")]
    pairs += [(f"best-of-n:{score}/m{m}-n1", f"oracle/m{m}-n1") for score in SCORES]
    if args.max_perturbations > 1:
        pairs.append((f"self-consistency/m{m}-n2", f"oracle/m{m}-n2"))
    if args.max_perturbations > 1:
        pairs.append(("region-perturbation/m1-n4", "oracle-greedy/m1-n4"))
    pairs.append(("prompt-ensemble/q3", "oracle-greedy/q3"))
    return pairs


def _recovery_columns(args) -> list[str]:
    return [strategy.replace("/", " ") for strategy, _ in _recovery_pairs(args)]


def plot(table: dict, args, path: Path) -> None:
    """Draw every metric against m, one row per dataset, n = 1 solid and n = 2 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(table["greedy"])
    figure, axes = plt.subplots(len(datasets), len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS),
                                                                             2.8 * len(datasets)), squeeze=False)
    paths = [count for count in PATH_COUNTS if count <= args.max_paths]
    strategies = ["self-consistency", "self-consistency:every-mask", *[f"best-of-n:{score}" for score in SCORES],
                  "oracle"]
    colours = dict(zip(strategies, ["tab:blue", "tab:purple", "tab:orange", "tab:green", "tab:red", "black"]))
    for row, dataset in enumerate(datasets):
        for column, metric in enumerate(CURVE_METRICS):
            axis = axes[row][column]
            for strategy in strategies:
                for perturbations, style in ((1, "-"), (2, "--")):
                    if perturbations > args.max_perturbations:
                        continue
                    values = [100 * table[f"{strategy}/m{m}-n{perturbations}"][dataset][metric] for m in paths]
                    label = f"{strategy} n={perturbations}" + (" (upper bound)" if strategy == "oracle" else "")
                    axis.plot(paths, values, style, marker="o", color=colours[strategy], label=label)
            axis.axhline(100 * table["greedy"][dataset][metric], color="grey", linestyle=":", label="greedy")
            axis.ticklabel_format(axis="y", useOffset=False)
            axis.set_xscale("log", base=2)
            axis.set_xticks(paths, [str(m) for m in paths])
            axis.set_title(f"{dataset}: {metric}")
            axis.set_xlabel("sampled paths m")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.suptitle(f"{args.method}: test-time scaling against m (oracle = upper bound with the ground truth)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="sim4seg")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--cases", required=True, type=Path, help="JSON-lines file of per-case results (resumed).")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--max-paths", type=int, default=8)
    parser.add_argument("--max-perturbations", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-samples", type=int)
    args = parser.parse_args()
    args.command = "python benchmarks/tts_curves.py " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items()
        if key not in ("command", "data") and value is not None) + "".join(f" --data {item}" for item in args.data)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    workspace = Workspace.load()
    spec = workspace.registry.method(args.method)
    adapters = open_datasets(workspace.components, parse_data_option(tuple(args.data), workspace.components))
    model = build_model(spec, workspace.components, args.checkpoint)
    samples = load_split(adapters, "test", spec, workspace.components, args.max_samples, args.seed)

    done = {record["id"]: record for record in read_jsonl(args.cases)}
    args.cases.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for index, sample in enumerate(samples):
        if sample.uid in done:
            continue
        record = score_case(model, sample, args)
        append_jsonl(args.cases, record)
        done[sample.uid] = record
        logger.info("%d/%d %s (%.0f s)", index + 1, len(samples), sample.uid, time.perf_counter() - started)
    wall_s = time.perf_counter() - started

    records = [done[sample.uid] for sample in samples]
    metrics = [workspace.components.get("metric", name)() for name in METRIC_NAMES]
    table = summaries(records, metrics)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"tts-curves-{args.method}"
    write_json(args.results / f"{stem}.json", {"command": args.command, "cases": len(records),
                                                "wall_s_this_run": round(wall_s, 1), "table": table})
    (args.results / f"{stem}.md").write_text(markdown(table, args, wall_s, len(records)), encoding="utf-8")
    plot(table, args, args.results / f"{stem}.png")
    logger.info("wrote %s.{md,json,png} in %s", stem, args.results)


if __name__ == "__main__":
    main()
