"""Leaderboards from stored bench results: rendering, merging and bad results folders.

The results come from reference entries (no training) scored on real PH2
and BUSI images, so these tests run in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mdskit.bench import COMPUTED_LOG, ResultsError, run_bench
from mdskit.bench_report import render
from mdskit.cli import main
from mdskit.leaderboard import build_leaderboard, load_results
from mdskit.runs import Workspace
from mdskit.suites import load_suite

SUITE = """
    schema: 1
    name: {name}
    datasets: [ph2, busi]
    references: {references}
    budget: {{steps: 2, batch_size: 2}}
    seeds: [0]
    max_samples: 3
"""


@pytest.fixture(scope="module")
def workspace():
    return Workspace.load()


def bench(tmp_path: Path, data_root: Path, workspace, references: str, name: str = "refs",
          out: str = "results") -> Path:
    path = tmp_path / f"{name}-{out}.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name=name, references=references)), encoding="utf-8")
    run_bench(load_suite(path), tmp_path / out, workspace, data_root=data_root)
    return tmp_path / out


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_root, workspace):
    folder = tmp_path_factory.mktemp("bench")
    return bench(folder, data_root, workspace, "[empty-mask, whole-image]")


@pytest.fixture(scope="module")
def rendered(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    leaderboard = build_leaderboard(load_results([results]), resamples=500)
    render(leaderboard, out, "mdskit bench refs.yaml --out results")
    return out, leaderboard


def test_markdown_lists_entries_with_intervals(rendered):
    out, leaderboard = rendered
    text = (out / "leaderboard.md").read_text()
    assert "# Leaderboard: suite `refs`" in text
    assert "mdskit bench refs.yaml --out results" in text
    for heading in ("## Pooled over all test datasets", "## busi", "## ph2", "## Provenance"):
        assert heading in text
    pooled = leaderboard["entries"][0]["metrics"]["pooled"]
    assert pooled["dice"]["n"] == 6
    rows = [line for line in text.splitlines() if line.startswith("| whole-image |")]
    assert len(rows) == 3
    whole_image = next(entry for entry in leaderboard["entries"] if entry["entry"] == "whole-image")
    dice = whole_image["metrics"]["pooled"]["dice"]
    assert f"{100 * dice['value']:.1f} [{100 * dice['low']:.1f}, {100 * dice['high']:.1f}]" in rows[0]


def test_whole_image_leads_empty_mask_on_dice(rendered):
    _, leaderboard = rendered
    ranking = leaderboard["ranking"]["0"]["pooled"]["dice"]
    assert ranking["best"].startswith("whole-image")
    # Every real case has a finding, so the empty mask scores Dice 0 on each of them.
    empty = next(entry for entry in leaderboard["entries"] if entry["entry"] == "empty-mask")
    assert empty["metrics"]["ph2"]["dice"]["value"] == 0.0


def test_html_is_self_contained_and_sortable(rendered):
    out, _ = rendered
    page = (out / "leaderboard.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "function sortTable" in page
    assert "onclick='sortTable(this)'" in page
    assert "data:image/png;base64," in page
    assert "<select onchange='showDataset(this.value)'>" in page
    for dataset in ("pooled", "ph2", "busi"):
        assert f"data-dataset='{dataset}'" in page
    assert "src='http" not in page
    assert "<link" not in page


def test_csv_json_and_png_outputs(rendered):
    out, leaderboard = rendered
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert len(rows) == 2 * 3
    assert {row["dataset"] for row in rows} == {"ph2", "busi", "pooled"}
    for row in rows:
        assert row["config_hash"]
        assert row["mdskit_version"]
        assert "torch=" in row["packages"]
        assert "LISA" in row["metric_conventions"]
        assert float(row["dice_low"]) <= float(row["dice"]) <= float(row["dice_high"])
    stored = json.loads((out / "leaderboard.json").read_text())
    assert stored["statistics"]["resamples"] == 500
    assert len(stored["entries"]) == len(leaderboard["entries"])
    for name in ("quality-vs-latency.png", "quality-vs-training.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_finished_cells(results, data_root, workspace):
    log = (results / COMPUTED_LOG).read_text()
    records = {path: path.stat().st_mtime_ns for path in results.rglob("*.json*")}
    suite_path = next(results.parent.glob("refs-*.yaml"))
    run_bench(load_suite(suite_path), results, workspace, data_root=data_root)
    assert (results / COMPUTED_LOG).read_text() == log
    for path, mtime in records.items():
        if path.name != "suite.json":
            assert path.stat().st_mtime_ns == mtime, path


def test_leaderboard_command_merges_folders(tmp_path, data_root, workspace):
    first = bench(tmp_path, data_root, workspace, "[empty-mask]", out="machine-a")
    second = bench(tmp_path, data_root, workspace, "[whole-image]", out="machine-b")
    result = CliRunner().invoke(main, ["leaderboard", str(first), str(second), "--out", str(tmp_path / "merged"),
                                       "--resamples", "200"])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged" / "leaderboard.json").read_text())
    assert sorted(entry["entry"] for entry in merged["entries"]) == ["empty-mask", "whole-image"]


def test_cells_split_over_two_folders_merge(tmp_path, data_root, workspace):
    path = tmp_path / "shared.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name="shared", references="[empty-mask, whole-image]")))
    suite = load_suite(path)
    run_bench(suite, tmp_path / "a", workspace, data_root=data_root, only=("empty-mask.*",))
    run_bench(suite, tmp_path / "b", workspace, data_root=data_root, only=("whole-image.*",))
    assert load_results([tmp_path / "a"]).unfinished
    merged = load_results([tmp_path / "a", tmp_path / "b"])
    assert sorted(cell.record["entry"] for cell in merged.cells) == ["empty-mask", "whole-image"]
    assert merged.unfinished == []
    with pytest.raises(ResultsError, match="no cell key"):
        run_bench(suite, tmp_path / "a", workspace, data_root=data_root, only=("sim4seg.*",))


def test_merging_another_suite_is_rejected(tmp_path, results, data_root, workspace):
    other = bench(tmp_path, data_root, workspace, "[empty-mask]", name="other-suite")
    with pytest.raises(ResultsError, match="suite 'other-suite'") as error:
        load_results([results, other])
    assert "suite.json" in str(error.value)
    result = CliRunner().invoke(main, ["leaderboard", str(results), str(other)])
    assert result.exit_code == 2
    assert "merge only results of the same suite" in result.output


def test_older_schema_is_rejected(tmp_path, results):
    copy = tmp_path / "old"
    copy.mkdir()
    manifest = json.loads((results / "suite.json").read_text())
    manifest["results_schema"] = 0
    (copy / "suite.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match="results schema 0") as error:
        load_results([copy])
    assert str(copy / "suite.json") in str(error.value)


def test_corrupt_predictions_are_rejected(tmp_path, results):
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(results, copy)
    predictions = next((copy / "cells").glob("whole-image*")) / "predictions.jsonl"
    lines = predictions.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    predictions.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsError, match="line 2, is not valid JSON") as error:
        load_results([copy])
    assert str(predictions) in str(error.value)
    assert "rerun 'mdskit bench'" in str(error.value)


def test_merging_a_changed_cell_is_rejected(tmp_path, results):
    import shutil

    copy = tmp_path / "changed"
    shutil.copytree(results, copy)
    record_path = next((copy / "cells").glob("empty-mask*")) / "cell.json"
    record = json.loads(record_path.read_text())
    record["config_hash"] = "0" * 16
    record_path.write_text(json.dumps(record))
    with pytest.raises(ResultsError, match="computed with different configurations") as error:
        load_results([results, copy])
    assert str(record_path.parent) in str(error.value)


def test_missing_manifest_is_rejected(tmp_path):
    with pytest.raises(ResultsError, match="not a results folder"):
        load_results([tmp_path])


def test_bench_into_another_suites_folder_is_rejected(tmp_path, results, data_root, workspace):
    path = tmp_path / "other.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name="other", references="[empty-mask]")))
    with pytest.raises(ResultsError, match="contains results of suite 'refs'"):
        run_bench(load_suite(path), results, workspace, data_root=data_root)


def test_bench_with_changed_budget_is_rejected(tmp_path, results, data_root, workspace):
    path = tmp_path / "refs.yaml"
    changed = SUITE.replace("steps: 2", "steps: 3")
    path.write_text(textwrap.dedent(changed.format(name="refs", references="[empty-mask]")))
    with pytest.raises(ResultsError, match="budget .* but the suite file now sets") as error:
        run_bench(load_suite(path), results, workspace, data_root=data_root)
    assert "pass a new --out" in str(error.value)


def test_bench_into_run_folder_is_rejected(tmp_path, data_root, workspace):
    path = tmp_path / "refs.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name="refs", references="[empty-mask]")))
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "metrics.json").write_text("{}")
    with pytest.raises(ResultsError, match="is not empty and has no suite.json"):
        run_bench(load_suite(path), run_folder, workspace, data_root=data_root)
    assert sorted(item.name for item in run_folder.iterdir()) == ["metrics.json"]


def test_checkpoint_path_relative_to_results(tmp_path):
    from mdskit.leaderboard import _portable_provenance

    cell_folder = tmp_path / "results" / "cells" / "a.none.train-ph2.seed0-1234abcd"
    inside = tmp_path / "results" / "train" / "a.train-ph2.seed0-5678" / "checkpoint"
    outside = tmp_path / "elsewhere" / "checkpoint"
    portable = _portable_provenance({"checkpoint": str(inside), "seed": 0}, cell_folder)
    assert portable == {"checkpoint": "train/a.train-ph2.seed0-5678/checkpoint", "seed": 0}
    assert _portable_provenance({"checkpoint": str(outside)}, cell_folder) == {"checkpoint": str(outside)}
    assert _portable_provenance(None, cell_folder) is None
