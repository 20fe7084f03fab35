"""Render a leaderboard (from :func:`mdskit.leaderboard.build_leaderboard`) to files.

Outputs, all written atomically into one folder: ``leaderboard.md``,
``leaderboard.csv`` (one row per entry and dataset, with intervals, costs
and provenance), ``leaderboard.json``, a self-contained ``leaderboard.html``
(sortable table, per-dataset view, plots embedded as PNG) and
``quality-vs-latency.png`` and ``quality-vs-training.png``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from .checkpoint import atomic_write_text  # noqa: E402
from .leaderboard import main_entries  # noqa: E402
from .metrics import POOLED  # noqa: E402
from .statistics import METRICS  # noqa: E402

logger = logging.getLogger(__name__)

METRIC_TITLES = {"giou": "gIoU", "ciou": "cIoU", "dice": "Dice", "accuracy": "accuracy", "macro_f1": "macro-F1"}
PLOTS = {"quality-vs-latency.png": ("latency_median_seconds", "median inference latency per sample (s)"),
         "quality-vs-training.png": ("train_wall_seconds", "training wall time (s)")}
CSV_COST_KEYS = ("train_wall_seconds", "latency_median_seconds", "latency_p90_seconds", "paths_per_sample",
                 "peak_memory_mib", "train_peak_memory_mib", "trainable_parameters", "parameters")


def render(leaderboard: dict[str, Any], out: Path, command: str | None = None) -> list[Path]:
    """Write every output format into ``out``; return the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {name: plot_png(leaderboard, key, title) for name, (key, title) in PLOTS.items()}
    written = []
    for name, text in (("leaderboard.md", markdown(leaderboard, command)), ("leaderboard.csv", csv_text(leaderboard)),
                       ("leaderboard.json", json.dumps(leaderboard, indent=2, default=str) + "\n"),
                       ("leaderboard.html", html_page(leaderboard, plots, command))):
        atomic_write_text(out / name, text)
        written.append(out / name)
    for name, data in plots.items():
        temporary = out / (name + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(out / name)
        written.append(out / name)
    return written


def percent(interval: dict[str, Any]) -> str:
    """Format a metric interval as ``value [low, high]`` in percent."""
    if interval["value"] != interval["value"]:
        return "-"
    return f"{100 * interval['value']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def _marked(leaderboard: dict, entry: dict, dataset: str, metric: str) -> str:
    """Format the interval text, bold for the best entry and with '≈' when within noise of it."""
    text = percent(entry["metrics"][dataset][metric])
    rank = leaderboard["ranking"].get(str(entry["seed"]), {}).get(dataset, {}).get(metric)
    if rank is None or entry["leave_one_out"]:
        return text
    if rank["best"] == entry["key"]:
        return f"**{text}**"
    if entry["key"] in rank["within_noise"]:
        return f"≈ {text}"
    return text


def _cost_cells(entry: dict) -> list[str]:
    cost = entry["cost"]

    def number(key: str, fmt: str) -> str:
        value = cost.get(key)
        return "-" if value is None else format(value, fmt)

    trainable, total = cost.get("trainable_parameters"), cost.get("parameters")
    parameters = "-" if total is None else f"{(trainable or 0) / 1e6:.2f} / {total / 1e6:.2f}"
    train = number("train_wall_seconds", ".0f")
    if cost.get("train_resumed_from_step"):
        train += " †"
    return [train,
            f"{number('latency_median_seconds', '.3f')} / {number('latency_p90_seconds', '.3f')}",
            number("paths_per_sample", ".1f"), number("peak_memory_mib", ".0f"), parameters]


def _sorted_entries(entries: list[dict]) -> list[dict]:
    kinds = {"method": 0, "reference": 1}
    return sorted(entries, key=lambda entry: (entry["oracle"], kinds.get(entry["kind"], 2), entry["entry"],
                                              entry["ttss"], entry["seed"]))


def markdown(leaderboard: dict[str, Any], command: str | None = None) -> str:
    """Render the leaderboard as Markdown."""
    suite = leaderboard["suite"]
    budget = suite["budget"]
    stats = leaderboard["statistics"]
    entries = _sorted_entries(main_entries(leaderboard["entries"]))
    lines = [f"# Leaderboard: suite `{suite['name']}`", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    lines += [
        f"Budget: {budget['steps']} steps of batch {budget['batch_size']} for every trained method; "
        f"datasets: {', '.join(suite['datasets'])}; split: {suite['split']}; "
        f"samples per dataset: {suite['max_samples'] or 'all'}.",
        "",
        f"Values in %, each with its {100 * stats['level']:.0f}% {stats['interval']} ({stats['resamples']} "
        f"resamples, seed {stats['seed']}). **Bold**: the best non-oracle entry; ≈: {stats['within_noise']} "
        "(paired bootstrap), so its lead is within noise. Entries marked (oracle) read the ground truth at test "
        "time and are never ranked.",
        "",
        "## Pooled over all test datasets",
        "",
        "| entry | TTS | seed | gIoU | cIoU | Dice | accuracy | macro-F1 | train (s) | latency median / p90 (s) | "
        "paths per sample | peak RSS (MiB) | params trainable / total (M) |",
        "|---|---|---|" + "---|" * 10,
    ]
    for entry in entries:
        values = [_marked(leaderboard, entry, POOLED, metric) for metric in METRICS]
        lines.append(f"| {entry['label']} | {entry['ttss']} | {entry['seed']} | " + " | ".join(values) + " | "
                     + " | ".join(_cost_cells(entry)) + " |")

    datasets = sorted({dataset for entry in entries for dataset in entry["metrics"] if dataset != POOLED})
    for dataset in datasets:
        lines += ["", f"## {dataset}", "", "| entry | TTS | seed | n | gIoU | cIoU | Dice | accuracy | macro-F1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for entry in entries:
            if dataset not in entry["metrics"]:
                continue
            row = entry["metrics"][dataset]
            values = [_marked(leaderboard, entry, dataset, metric) for metric in METRICS]
            lines.append(f"| {entry['label']} | {entry['ttss']} | {entry['seed']} | {row['dice']['n']} | "
                         + " | ".join(values) + " |")

    if any(entry["cost"].get("train_resumed_from_step") for entry in entries):
        lines += ["", "† Training resumed from a checkpoint, so the time covers only the steps after it."]
    lines += _leave_one_out_section(leaderboard)
    lines += _comparison_section(leaderboard)
    lines += _provenance_section(leaderboard)
    if leaderboard["unfinished"]:
        lines += ["", "## Unfinished cells", "", "Not in the tables above; rerun the bench to finish them:", ""]
        lines += [f"- {item}" for item in leaderboard["unfinished"]]
    return "\n".join(lines) + "\n"


def _leave_one_out_section(leaderboard: dict) -> list[str]:
    entries = [entry for entry in leaderboard["entries"] if entry["leave_one_out"]]
    if not entries:
        return []
    lines = ["", "## Leave one dataset out", "",
             "Trained on every other dataset with the same budget, tested on the held-out dataset's test split. "
             "In-domain: the same entry trained on every dataset, on the same test split (- when the suite "
             "has no such entry).",
             "", "| entry | TTS | seed | held-out dataset | trained on | gIoU | cIoU | Dice | accuracy | macro-F1 | "
             "in-domain Dice | in-domain accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in _sorted_entries(entries):
        held_out = entry["test_datasets"][0]
        values = [percent(entry["metrics"][held_out][metric]) for metric in METRICS]
        in_domain = _in_domain_metrics(leaderboard, entry, held_out)
        reference = [percent(in_domain[metric]) if in_domain else "-" for metric in ("dice", "accuracy")]
        lines.append(f"| {entry['label']} | {entry['ttss']} | {entry['seed']} | {held_out} | "
                     f"{', '.join(entry['train_datasets'])} | " + " | ".join(values + reference) + " |")
    return lines


def _in_domain_metrics(leaderboard: dict, entry: dict, dataset: str) -> dict | None:
    """Metrics on ``dataset`` of the same entry, strategy and seed trained with that dataset, or None."""
    for other in main_entries(leaderboard["entries"]):
        if (other["entry"], other["ttss"], other["seed"]) == (entry["entry"], entry["ttss"], entry["seed"]) \
                and dataset in other["train_datasets"] and dataset in other["metrics"]:
            return other["metrics"][dataset]
    return None


def _comparison_section(leaderboard: dict) -> list[str]:
    rows = leaderboard["comparisons"]
    if not rows:
        return []
    lines = ["", "## Paired comparisons", "",
             "Difference a - b in points on the same samples, with the paired bootstrap interval; p: Wilcoxon "
             "signed-rank (per-sample metrics only). * marks an interval that excludes 0.", "",
             "| a - b | TTS | test | dataset | gIoU | cIoU | Dice | accuracy | macro-F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for metric in METRICS:
            comparison = row["metrics"][metric]
            text = (f"{100 * comparison['difference']:+.1f} [{100 * comparison['low']:+.1f}, "
                    f"{100 * comparison['high']:+.1f}]")
            if comparison["wilcoxon_p"] is not None:
                text += f" p={comparison['wilcoxon_p']:.2g}"
            cells.append(text + (" *" if comparison["significant"] else ""))
        test = "+".join(row["test_datasets"])
        lines.append(f"| {row['a']} - {row['b']} | {row['ttss']} | {test} | {row['dataset']} | "
                     + " | ".join(cells) + " |")
    return lines


def _provenance_section(leaderboard: dict) -> list[str]:
    lines = ["", "## Provenance", "", "| cell | config hash | mdskit | git commit | device | CPU | CPU threads | platform |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in _sorted_entries(leaderboard["entries"]):
        source = entry.get("provenance") or {}
        commit = (source.get("git_commit") or "-")[:12]
        if entry.get("uncommitted_changes"):
            commit += " (with uncommitted changes)"
        oracle = " (oracle)" if entry["oracle"] else ""
        lines.append(f"| {entry['key']}{oracle} | {entry['config_hash']} | "
                     f"{source.get('mdskit_version', '-')} | {commit} | {source.get('device', '-')} | "
                     f"{(entry.get('hardware') or {}).get('cpu') or '-'} | "
                     f"{source.get('cpu_threads', '-')} | {source.get('platform', '-')} |")
    packages = next((entry["provenance"].get("packages") for entry in leaderboard["entries"]
                     if entry.get("provenance")), None)
    if packages:
        lines += ["", "Packages: " + ", ".join(f"{name} {value}" for name, value in sorted(packages.items())) + "."]
    lines += ["", "Metric conventions:", ""] + [f"- {name}: {text}" for name, text in
                                                 leaderboard["conventions"].items()]
    return lines


def csv_text(leaderboard: dict[str, Any]) -> str:
    """Render one CSV row per entry and dataset (pooled included): intervals, costs, provenance, conventions."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["entry", "oracle", "kind", "ttss", "seed", "train_datasets", "test_datasets", "leave_one_out",
              "dataset", "n"]
    for metric in METRICS:
        header += [metric, f"{metric}_low", f"{metric}_high"]
    header += list(CSV_COST_KEYS)
    header += ["budget_steps", "budget_batch_size", "config_hash", "mdskit_version", "git_commit", "device",
               "cpu_threads", "platform", "packages", "metric_conventions"]
    writer.writerow(header)
    conventions = "; ".join(f"{name}: {text}" for name, text in leaderboard["conventions"].items())
    for entry in _sorted_entries(leaderboard["entries"]):
        source = entry.get("provenance") or {}
        budget = entry.get("budget") or {}
        for dataset, row in entry["metrics"].items():
            values = [entry["entry"], entry["oracle"], entry["kind"], entry["ttss"], entry["seed"],
                      "+".join(entry["train_datasets"]), "+".join(entry["test_datasets"]), entry["leave_one_out"],
                      dataset, row["dice"]["n"]]
            for metric in METRICS:
                values += [row[metric]["value"], row[metric]["low"], row[metric]["high"]]
            values += [entry["cost"].get(key) for key in CSV_COST_KEYS]
            packages = ";".join(f"{name}={value}" for name, value in sorted((source.get("packages") or {}).items()))
            values += [budget.get("steps"), budget.get("batch_size"), entry["config_hash"],
                       source.get("mdskit_version"), source.get("git_commit"), source.get("device"),
                       source.get("cpu_threads"), source.get("platform"), packages, conventions]
            writer.writerow(values)
    return buffer.getvalue()


def plot_png(leaderboard: dict[str, Any], cost_key: str, cost_title: str) -> bytes:
    """Pooled Dice and accuracy against one cost, with bootstrap intervals, as PNG bytes."""
    entries = _sorted_entries(main_entries(leaderboard["entries"]))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for axis, metric in zip(axes, ("dice", "accuracy")):
        for entry in entries:
            cost = entry["cost"].get(cost_key)
            if cost is None:
                continue
            interval = entry["metrics"][POOLED][metric]
            value = 100 * interval["value"]
            error = [[value - 100 * interval["low"]], [100 * interval["high"] - value]]
            axis.errorbar([max(cost, 1e-4)], [value], yerr=error, fmt="*" if entry["oracle"] else "o", capsize=3,
                          label=f"{entry['label']}, {entry['ttss']}")
        axis.set_xscale("log")
        axis.set_xlabel(cost_title)
        axis.set_ylabel(f"pooled {METRIC_TITLES[metric]} (%)")
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    figure.suptitle(f"{leaderboard['suite']['name']}: quality versus {cost_title}", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


HTML_SCRIPT = """
function sortTable(header) {
  const table = header.closest('table');
  const index = Array.from(header.parentNode.children).indexOf(header);
  const ascending = header.dataset.order !== 'ascending';
  header.dataset.order = ascending ? 'ascending' : 'descending';
  const rows = Array.from(table.tBodies[0].rows);
  rows.sort((a, b) => {
    const x = a.cells[index].dataset.value, y = b.cells[index].dataset.value;
    const nx = parseFloat(x), ny = parseFloat(y);
    const order = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
    return ascending ? order : -order;
  });
  rows.forEach(row => table.tBodies[0].appendChild(row));
}
function showDataset(name) {
  document.querySelectorAll('table.dataset').forEach(t => { t.hidden = t.dataset.dataset !== name; });
}
"""

HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; }
th { background: #f0f0f0; cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
td.best { font-weight: bold; }
tr.oracle { color: #7a4b00; background: #fff7e6; }
img { max-width: 100%; }
"""


def html_page(leaderboard: dict[str, Any], plots: dict[str, bytes], command: str | None = None) -> str:
    """Render a self-contained HTML page: a sortable table per dataset, a dataset selector and the plots."""
    suite = leaderboard["suite"]
    entries = _sorted_entries(main_entries(leaderboard["entries"]))
    datasets = [POOLED] + sorted({dataset for entry in entries for dataset in entry["metrics"] if dataset != POOLED})
    escape = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(suite['name'])} "
             f"leaderboard</title><style>{HTML_STYLE}</style><script>{HTML_SCRIPT}</script></head><body>",
             f"<h1>Leaderboard: suite {escape(suite['name'])}</h1>"]
    if command:
        parts.append(f"<p>Command: <code>{escape(command)}</code></p>")
    stats = leaderboard["statistics"]
    parts.append(f"<p>Budget: {suite['budget']['steps']} steps of batch {suite['budget']['batch_size']}. Values in %, "
                 f"with {100 * stats['level']:.0f}% {escape(stats['interval'])} intervals ({stats['resamples']} "
                 f"resamples). Bold: best non-oracle entry; ≈: within noise of it. Click a column to sort.</p>")

    options = "".join(f"<option value='{escape(name)}'>{escape(name)}</option>" for name in datasets)
    parts.append(f"<label>Dataset: <select onchange='showDataset(this.value)'>{options}</select></label>")
    for dataset in datasets:
        parts.append(_html_table(leaderboard, entries, dataset, hidden=dataset != POOLED))

    for name, data in plots.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<h2>{escape(name[:-4].replace('-', ' '))}</h2><img alt='{escape(name)}' "
                     f"src='data:image/png;base64,{encoded}'>")

    # Both sections start with a blank line, a heading, a blank line and a paragraph.
    for section in (_leave_one_out_section(leaderboard), _comparison_section(leaderboard)):
        if section:
            parts.append(f"<h2>{escape(section[1].lstrip('# '))}</h2><p>{escape(section[3])}</p>")
            parts.append(_markdown_table_to_html([line for line in section if line.startswith("|")]))

    conventions = "".join(f"<li><b>{escape(name)}</b>: {escape(text)}</li>"
                          for name, text in leaderboard["conventions"].items())
    parts.append(f"<h2>Metric conventions</h2><ul>{conventions}</ul></body></html>")
    return "\n".join(parts) + "\n"


def _markdown_table_to_html(lines: list[str]) -> str:
    """Convert a Markdown table (header, rule, rows) into a sortable HTML table."""
    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    escape = html.escape
    head = "".join(f"<th onclick='sortTable(this)'>{escape(cell)}</th>" for cell in cells(lines[0]))
    rows = []
    for line in lines[2:]:
        row = "".join(f"<td data-value='{escape(cell)}'>{escape(cell)}</td>" for cell in cells(line))
        rows.append(f"<tr>{row}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _html_table(leaderboard: dict, entries: list[dict], dataset: str, hidden: bool) -> str:
    escape = html.escape
    headers = ["entry", "TTS", "seed", "n"] + [METRIC_TITLES[metric] for metric in METRICS]
    if dataset == POOLED:
        headers += ["train (s)", "latency median (s)", "latency p90 (s)", "paths per sample", "peak RSS (MiB)",
                    "trainable params"]
    head = "".join(f"<th onclick='sortTable(this)'>{escape(title)}</th>" for title in headers)
    rows = []
    for entry in entries:
        if dataset not in entry["metrics"]:
            continue
        row = entry["metrics"][dataset]
        cells = [(entry["label"], entry["label"]), (entry["ttss"], entry["ttss"]), (entry["seed"], entry["seed"]),
                 (row["dice"]["n"], row["dice"]["n"])]
        for metric in METRICS:
            cells.append((row[metric]["value"], _marked(leaderboard, entry, dataset, metric).replace("**", "")))
        if dataset == POOLED:
            for key, fmt in (("train_wall_seconds", ".0f"), ("latency_median_seconds", ".3f"),
                             ("latency_p90_seconds", ".3f"), ("paths_per_sample", ".1f"),
                             ("peak_memory_mib", ".0f"), ("trainable_parameters", ",")):
                value = entry["cost"].get(key)
                cells.append((value if value is not None else "", "-" if value is None else format(value, fmt)))
        rank = leaderboard["ranking"].get(str(entry["seed"]), {}).get(dataset, {})
        html_cells = []
        for index, (value, text) in enumerate(cells):
            metric = METRICS[index - 4] if 4 <= index < 4 + len(METRICS) else None
            best = metric is not None and rank.get(metric, {}).get("best") == entry["key"]
            css = " class='best'" if best else ""
            html_cells.append(f"<td{css} data-value='{escape(str(value))}'>{escape(str(text))}</td>")
        css_row = " class='oracle'" if entry["oracle"] else ""
        rows.append(f"<tr{css_row}>" + "".join(html_cells) + "</tr>")
    hidden_attribute = " hidden" if hidden else ""
    return (f"<table class='dataset' data-dataset='{escape(dataset)}'{hidden_attribute}><caption>{escape(dataset)}"
            f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
