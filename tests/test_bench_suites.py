"""Suite files: schema checks, name checks and the expansion into cells."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mdskit.runs import Workspace
from mdskit.references import REFERENCE_NAMES
from mdskit.suites import SuiteError, check_names, load_suite, plan_cells

SUITES = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"

MINIMAL = """
    schema: 1
    name: check
    datasets: [ph2, busi]
    methods: [sim4seg]
    budget: {steps: 4, batch_size: 2}
    seeds: [0]
"""


def write_suite(tmp_path: Path, text: str = MINIMAL, **changes: str) -> Path:
    lines = textwrap.dedent(text).strip().splitlines()
    for key, value in changes.items():
        lines = [line for line in lines if not line.startswith(f"{key}:")]
        if value is not None:
            lines.append(f"{key}: {value}")
    path = tmp_path / "suite.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def known_names(workspace: Workspace) -> tuple[set, set, set, set]:
    components = workspace.components
    return (set(workspace.registry.methods), set(components.names("tts")), set(components.names("dataset")),
            set(REFERENCE_NAMES))


@pytest.fixture(scope="module")
def workspace():
    return Workspace.load()


def test_mds_mini_plans_every_cell(workspace):
    suite = load_suite(SUITES / "mds-mini.yaml")
    check_names(suite, *known_names(workspace))
    cells = plan_cells(suite)
    main = [cell for cell in cells if cell.kind == "method" and not cell.leave_one_out]
    references = [cell for cell in cells if cell.kind == "reference"]
    leave_one_out = [cell for cell in cells if cell.leave_one_out]
    assert len(main) == 5 * 2
    assert {cell.entry for cell in references} == {"empty-mask", "whole-image", "litemedsam-gt-box"}
    assert len(leave_one_out) == 1 * 4
    assert {cell.test_datasets for cell in leave_one_out} == {("busi",), ("kvasir",), ("ph2",), ("shenzhen",)}
    for cell in leave_one_out:
        assert cell.test_datasets[0] not in cell.train_datasets
        assert len(cell.train_datasets) == 3
    assert len({cell.key for cell in cells}) == len(cells)
    # Both strategies of a method evaluate one checkpoint.
    assert len({cell.train_key for cell in main}) == 5
    assert suite.budget.steps == 400
    assert suite.budget.batch_size == 8


def test_tiny_suite_names_are_registered():
    suite = load_suite(SUITES / "tiny.yaml")
    check_names(suite, *known_names(Workspace.load(suite.registry)))
    assert suite.registry == SUITES / "tiny-registry.yaml"


@pytest.mark.parametrize(("changes", "message"), [
    ({"schema": "2"}, "schema must be 1"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"budget": "{steps: 4}"}, "budget"),
    ({"budget": "{steps: -1, batch_size: 2}"}, "budget.steps"),
    ({"seeds": "[0, 0]"}, "more than once"),
    ({"datasets": None}, "'datasets' is missing"),
    ({"methods": "[sim4seg, sim4seg]"}, "lists 'sim4seg' more than once"),
    ({"split": "val"}, "split 'val' is not supported"),
    ({"max_samples": "0"}, "max_samples"),
    ({"leave_one_out": "{methods: [lisa]}"}, "not in the suite's methods"),
    ({"comparisons": "[[sim4seg, lisa]]"}, "must name two of the suite's methods"),
])
def test_invalid_suite_names_key_and_file(tmp_path, changes, message):
    path = write_suite(tmp_path, **changes)
    with pytest.raises(SuiteError, match=message) as error:
        load_suite(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("key", "value", "name"), [
    ("methods", "[sim4seg, nonexistent-method]", "nonexistent-method"),
    ("ttss", "[beam-search]", "beam-search"),
    ("datasets", "[ph2, mnist]", "mnist"),
    ("references", "[random-mask]", "random-mask"),
])
def test_unknown_names_are_rejected(tmp_path, workspace, key, value, name):
    suite = load_suite(write_suite(tmp_path, **{key: value}))
    with pytest.raises(SuiteError, match=f"unknown '{name}'") as error:
        check_names(suite, *known_names(workspace))
    assert "Known:" in str(error.value)


def test_missing_suite_file(tmp_path):
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "absent.yaml")


def test_digest_ignores_description_and_paths(tmp_path):
    first = load_suite(write_suite(tmp_path, description="one", data_root="a"))
    second = load_suite(write_suite(tmp_path, description="two", data_root="b"))
    third = load_suite(write_suite(tmp_path, seeds="[1]"))
    assert first.digest() == second.digest()
    assert first.digest() != third.digest()


def test_bench_command_reports_unknown_method(tmp_path):
    from click.testing import CliRunner

    from mdskit.cli import main

    path = write_suite(tmp_path, methods="[sim4seg, nonexistent-method]")
    result = CliRunner().invoke(main, ["bench", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown 'nonexistent-method'" in result.output
    assert not (tmp_path / "out").exists()
