"""``mdskit bench`` end to end on real images, killed mid-run and resumed.

A tiny Sim4Seg from the tiny suite's registry trains for two steps on two
PH2 and two BUSI cases. The bench evaluates it with greedy decoding and
self-consistency, beside an empty-mask reference and a leave-one-dataset-out
cell.
The first bench process is killed while the second cell is predicting; the
second process must finish the suite without repeating finished work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mdskit.bench import COMPUTED_LOG
from mdskit.bench_report import markdown as render_markdown
from mdskit.bench_report import percent
from mdskit.leaderboard import build_leaderboard, load_results

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
SUITE = """
    schema: 1
    name: resume-check
    registry: {registry}
    datasets: [ph2, busi]
    methods: [tiny-sim4seg]
    ttss: [none, self-consistency]
    references: [empty-mask]
    budget: {{steps: 2, batch_size: 2}}
    seeds: [0]
    max_samples: 2
    leave_one_out:
      methods: [tiny-sim4seg]
      ttss: [none]
      datasets: [ph2]
"""
START_TIMEOUT = 600


def bench_command(suite: Path, out: Path, data_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from mdskit.cli import main; main()", "bench", str(suite), "--out", str(out),
            "--data-root", str(data_root), *extra]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def cell(out: Path, prefix: str) -> Path:
    matches = list((out / "cells").glob(f"{prefix}-*"))
    assert len(matches) == 1, matches
    return matches[0]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_root):
    """Run the bench, kill it while the self-consistency cell predicts, then rerun it to the end."""
    folder = tmp_path_factory.mktemp("bench")
    suite = folder / "suite.yaml"
    registry = PROJECT / "benchmarks" / "suites" / "tiny-registry.yaml"
    suite.write_text(textwrap.dedent(SUITE.format(registry=registry)), encoding="utf-8")
    out = folder / "results"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    process = subprocess.Popen(bench_command(suite, out, data_root, "--no-leaderboard"), cwd=folder,
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + START_TIMEOUT
    pattern = "tiny-sim4seg.self-consistency.*/predictions.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if any(lines(path) for path in (out / "cells").glob(pattern)):
            break
        time.sleep(0.1)
    running = process.poll() is None
    process.kill()
    _, errors = process.communicate()
    assert running, f"the bench ended before it could be killed: {errors.decode()[-2000:]}"

    greedy = cell(out, "tiny-sim4seg.none.train-ph2+busi.seed0")
    sampled = cell(out, "tiny-sim4seg.self-consistency.train-ph2+busi.seed0")
    train_record = next((out / "train").glob("tiny-sim4seg.train-ph2+busi*")) / "train.json"
    before = {
        "greedy_mtimes": {name: (greedy / name).stat().st_mtime_ns for name in ("cell.json", "predictions.jsonl")},
        "train_mtime": train_record.stat().st_mtime_ns,
        "sampled_lines": lines(sampled / "predictions.jsonl"),
        "log": lines(out / COMPUTED_LOG),
    }
    started = time.monotonic()
    completed = subprocess.run(bench_command(suite, out, data_root), cwd=folder, env=environment,
                               capture_output=True, text=True, timeout=START_TIMEOUT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, before, time.monotonic() - started


def test_finished_cell_and_training_are_not_recomputed(resumed):
    out, before, _ = resumed
    greedy = cell(out, "tiny-sim4seg.none.train-ph2+busi.seed0")
    for name, mtime in before["greedy_mtimes"].items():
        assert (greedy / name).stat().st_mtime_ns == mtime, name
    train_record = next((out / "train").glob("tiny-sim4seg.train-ph2+busi*")) / "train.json"
    assert train_record.stat().st_mtime_ns == before["train_mtime"]
    log = lines(out / COMPUTED_LOG)
    assert log[:len(before["log"])] == before["log"]
    rerun_keys = [json.loads(line)["key"] for line in log[len(before["log"]):]]
    assert "tiny-sim4seg.none.train-ph2+busi.seed0" not in rerun_keys
    assert "tiny-sim4seg.train-ph2+busi.seed0" not in rerun_keys


def test_interrupted_cell_keeps_its_predicted_samples(resumed):
    out, before, _ = resumed
    sampled = cell(out, "tiny-sim4seg.self-consistency.train-ph2+busi.seed0")
    after = lines(sampled / "predictions.jsonl")
    finished_lines = [line for line in before["sampled_lines"] if line.endswith("}")]
    assert finished_lines
    assert after[:len(finished_lines)] == finished_lines
    ids = [json.loads(line)["id"] for line in after]
    assert len(ids) == len(set(ids)) == 4
    entry = next(json.loads(line) for line in lines(out / COMPUTED_LOG)
                 if json.loads(line)["key"].startswith("tiny-sim4seg.self-consistency"))
    assert entry["new_samples"] == 4 - len(finished_lines)


def test_every_cell_is_finished_with_provenance(resumed):
    out, _, _ = resumed
    records = [json.loads(path.read_text()) for path in (out / "cells").glob("*/cell.json")]
    assert sorted(record["key"] for record in records) == sorted([
        "tiny-sim4seg.none.train-ph2+busi.seed0", "tiny-sim4seg.self-consistency.train-ph2+busi.seed0",
        "empty-mask.test-ph2+busi.seed0", "tiny-sim4seg.none.train-busi.seed0"])
    for record in records:
        provenance = record["provenance"]
        assert provenance["mdskit_version"]
        assert provenance["git_commit"]
        assert provenance["packages"]["torch"]
        assert record["hardware"]["logical_cores"] >= 1
        assert record["config_hash"] and record["conventions"]["giou"]
        if record["kind"] == "method":
            assert record["budget"] == {"steps": 2, "batch_size": 2}
            assert record["cost"]["trainable_parameters"] < record["cost"]["parameters"]
            assert record["cost"]["train_wall_seconds"] > 0


def test_leaderboard_from_resumed_bench(resumed):
    out, _, _ = resumed
    assert (out / "leaderboard" / "leaderboard.html").is_file()
    leaderboard = build_leaderboard(load_results([out]), resamples=200)
    entries = {entry["key"]: entry for entry in leaderboard["entries"]}
    greedy = entries["tiny-sim4seg.none.train-ph2+busi.seed0"]
    sampled = entries["tiny-sim4seg.self-consistency.train-ph2+busi.seed0"]
    assert greedy["cost"]["paths_per_sample"] == 1.0
    assert sampled["cost"]["paths_per_sample"] == 2.0
    assert greedy["cost"]["latency_median_seconds"] > 0
    assert greedy["cost"]["latency_p90_seconds"] >= greedy["cost"]["latency_median_seconds"]
    held_out = entries["tiny-sim4seg.none.train-busi.seed0"]
    assert held_out["leave_one_out"] and list(held_out["metrics"]) == ["ph2", "pooled"]
    markdown = (out / "leaderboard" / "leaderboard.md").read_text()
    assert "## Leave one dataset out" in markdown
    assert "| tiny-sim4seg | none | 0 | ph2 | busi |" in markdown
    # The held-out row repeats the in-domain entry's Dice and accuracy on the same test split.
    row = next(line for line in render_markdown(leaderboard).splitlines()
               if line.startswith("| tiny-sim4seg | none | 0 | ph2 | busi |"))
    in_domain = greedy["metrics"]["ph2"]
    assert row.endswith(f"| {percent(in_domain['dice'])} | {percent(in_domain['accuracy'])} |")
