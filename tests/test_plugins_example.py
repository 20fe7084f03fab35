"""The example plugin package, installed with pip as a user would install it.

The package in docs/examples/mdskit-example-prompt is installed into a
temporary folder. Subprocesses put that folder on PYTHONPATH, and the
in-process tests on ``sys.path`` (``importlib.metadata`` reads the entry
points from ``sys.path`` at each call), so mdskit finds the package through
its ``mdskit.plugins`` entry point and not through this checkout.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mdskit.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT_ROOT / "docs" / "examples" / "mdskit-example-prompt"
CLI = "import sys; from mdskit.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Install the example package (no dependencies) and return its target folder."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build") / "mdskit-example-prompt"
    # pip builds in the source folder; a copy keeps build/ and egg-info out of the checkout.
    shutil.copytree(EXAMPLE, build)
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(build)],
        capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return target


@pytest.fixture
def on_path(installed, monkeypatch):
    """Put the installed package on sys.path for one test, and forget its modules afterwards."""
    monkeypatch.syspath_prepend(str(installed))
    yield installed
    for name in [name for name in sys.modules if name.startswith("mdskit_example_prompt")]:
        monkeypatch.delitem(sys.modules, name)


def invoke(*arguments: str):
    return CliRunner().invoke(main, list(arguments), env={"COLUMNS": "250"})


def run(installed: Path, *arguments: str, cwd: Path | None = None, timeout: int = 600):
    """Run a Python command with the installed package first on PYTHONPATH."""
    paths = [str(installed), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "COLUMNS": "250", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, check=False)


def test_plugins_lists_the_example_and_a_broken_one(on_path, tmp_path):
    broken = tmp_path / "broken_prompt.py"
    broken.write_text("import mdskit_no_such_dependency\n", encoding="utf-8")
    result = invoke("--plugin", str(broken), "plugins")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    example = next(line for line in lines if "│ smoothed-similarity" in line)
    assert "mdskit-example-prompt 0.1.0" in example
    assert "entry point: mdskit_example_prompt.plugin" in example
    assert "prompt module: smoothed-similarity" in example
    assert "│ loaded" in example
    assert "failed" in next(line for line in lines if "│ broken_prompt" in line)
    assert f"- plugin 'broken_prompt': failed to import from {broken}: ModuleNotFoundError" in result.output


def test_example_passes_its_contract_tests(installed, tmp_path):
    shutil.copytree(EXAMPLE / "tests", tmp_path / "tests")
    completed = run(installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "5 passed" in completed.stdout


def test_example_can_be_disabled(on_path):
    result = invoke("--disable-plugin", "smoothed-similarity", "plugins")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "│ smoothed-similarity" in line)
    assert "disabled" in row
    assert "prompt module: smoothed-similarity" not in row


@pytest.mark.slow
def test_example_runs_end_to_end(installed, tmp_path):
    """Train the example registry's method for 2 steps on phantoms and evaluate it."""
    out = tmp_path / "run"
    completed = run(installed, "-c", CLI, "--registry", str(EXAMPLE / "registry.yaml"), "run", "smoothed",
                    "--train-steps", "2", "--max-samples", "3", "--out", str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["method"] == "smoothed"
    assert metrics["phantom"]["n"] == 3
    record = json.loads((out / "checkpoint" / "method.json").read_text(encoding="utf-8"))
    assert record["method"]["prompt"] == {"type": "smoothed-similarity", "sigma": 1.0, "threshold": 0.5}


@pytest.mark.slow
def test_example_benchmarks_against_rvls2m(installed, tmp_path):
    """The tutorial's suite, with a 2-step budget, through mdskit bench and its leaderboard."""
    shutil.copy(EXAMPLE / "registry.yaml", tmp_path / "registry.yaml")
    suite = (EXAMPLE / "suite.yaml").read_text(encoding="utf-8")
    suite = suite.replace("budget: {steps: 20, batch_size: 4}", "budget: {steps: 2, batch_size: 2}")
    suite = suite.replace("max_samples: 6", "max_samples: 3")
    (tmp_path / "suite.yaml").write_text(suite, encoding="utf-8")
    out = tmp_path / "bench"
    completed = run(installed, "-c", CLI, "bench", str(tmp_path / "suite.yaml"), "--out", str(out), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    leaderboard = json.loads((out / "leaderboard" / "leaderboard.json").read_text(encoding="utf-8"))
    text = json.dumps(leaderboard)
    assert '"smoothed"' in text
    assert '"rvls2m-baseline"' in text
    assert '"whole-image"' in text
    markdown = (out / "leaderboard" / "leaderboard.md").read_text(encoding="utf-8")
    assert "smoothed" in markdown
    assert "rvls2m-baseline" in markdown


def test_method_fails_with_reason_when_example_is_disabled(on_path, tmp_path):
    result = invoke("--registry", str(EXAMPLE / "registry.yaml"), "--disable-plugin", "smoothed-similarity",
                    "run", "smoothed", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert ("unknown prompt module 'smoothed-similarity'; choose one of: rvls2m, similarity-box, "
            "similarity-points. Disabled plugins: "
            "smoothed-similarity.") in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_other_methods_stay_listed_when_example_is_disabled(on_path):
    result = invoke("--registry", str(EXAMPLE / "registry.yaml"), "--disable-plugin", "smoothed-similarity", "list")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("│ rvls2m-baseline ") for line in result.output.splitlines())
    assert "Unavailable method smoothed:" in result.output


def test_tutorial_python_snippets_run(on_path, capsys):
    """Every Python block of docs/plugins.md that is not a package file runs against the installed package."""
    text = (PROJECT_ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    snippets = [code for path, code in re.findall(r"```python( file=\S+)?\n(.*?)```", text, re.S) if not path]
    assert snippets
    for code in snippets:
        exec(compile(code, "docs/plugins.md", "exec"), {"__name__": "__tutorial__"})
    assert "every prompt-module check passed" in capsys.readouterr().out
