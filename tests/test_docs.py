"""The docs match the code: generated CLI reference, tutorial files, registry defaults."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from mdskit.methods import METHOD_KEYS, TOP_LEVEL_KEYS, TrainingConfig
from mdskit.plugins import load_plugins

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = PROJECT_ROOT / "docs"
EXAMPLE = DOCS / "examples" / "mdskit-example-prompt"
BLOCK = re.compile(r"```(\w+)(?: file=(\S+))?\n(.*?)```", re.S)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tutorial_blocks() -> list[tuple[str, str | None, str]]:
    return BLOCK.findall((DOCS / "plugins.md").read_text(encoding="utf-8"))


def table_rows(path: Path) -> list[list[str]]:
    """Cells of every Markdown table row, with backticks removed."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_cli_reference_is_generated():
    generated = load_script("gen_cli_docs").generate()
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == generated, "docs/cli.md is out of date; run: python scripts/gen_cli_docs.py"


def test_cli_reference_covers_every_command():
    from mdskit.cli import main

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name in main.commands:
        assert f"### `mdskit {name}`" in text


def test_tutorial_files_equal_the_example_package():
    files = {path: code for _, path, code in tutorial_blocks() if path}
    assert set(files) == {"pyproject.toml", "registry.yaml", "suite.yaml", "mdskit_example_prompt/__init__.py",
                          "mdskit_example_prompt/prompt.py", "mdskit_example_prompt/plugin.py",
                          "tests/test_contract.py"}
    for path, code in files.items():
        assert code == (EXAMPLE / path).read_text(encoding="utf-8"), f"docs/plugins.md block {path} differs"


def test_example_package_has_no_untold_files():
    shown = {path for _, path, _ in tutorial_blocks() if path}
    present = {str(path.relative_to(EXAMPLE)) for path in EXAMPLE.rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert present == shown


def test_registry_reference_lists_every_key():
    keys = {row[0] for row in table_rows(DOCS / "registry.md")}
    assert TOP_LEVEL_KEYS <= keys
    assert METHOD_KEYS - {"provider"} <= keys


def test_registry_reference_training_defaults():
    rows = {row[0]: row for row in table_rows(DOCS / "registry.md")}
    for item in dataclasses.fields(TrainingConfig):
        default = item.default
        expected = str(list(default)) if isinstance(default, tuple) else str(default)
        assert rows[item.name][2] == expected, item.name


@pytest.mark.parametrize("role", ["backbone", "prompt", "decoder", "tts"])
def test_registry_reference_component_defaults(role):
    components, _ = load_plugins()
    rows = table_rows(DOCS / "registry.md")
    for name in components.names(role):
        signature = inspect.signature(components.get(role, name).__init__)
        for parameter in list(signature.parameters.values())[1:]:
            default = "null" if parameter.default is None else str(parameter.default)
            if parameter.default is inspect.Parameter.empty:
                default = "required"
            if role == "tts":
                matches = [row for row in rows if row[:3] == [name, parameter.name, default]]
            else:
                matches = [row for row in rows if row[:2] == [parameter.name, default]]
            assert matches, f"docs/registry.md lacks {role} '{name}' parameter {parameter.name} = {default}"


def test_readme_links_every_doc():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("architecture.md", "glossary.md", "registry.md", "cli.md", "plugins.md"):
        assert f"(docs/{name})" in readme
        assert (DOCS / name).is_file()
