"""Write docs/cli.md, the command-line reference, from the click commands.

Usage: python scripts/gen_cli_docs.py [--check]

With --check the script writes nothing and exits with status 1 when the
committed file differs from the generated text. tests/test_docs.py runs the
same comparison, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = PROJECT_ROOT / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from the click commands by `python scripts/gen_cli_docs.py`; do
not edit by hand. Global options go before the command, for example
`mdskit --plugin my_prompt.py run sim4seg`.
"""


def _options_table(command: click.Command, context: click.Context) -> list[str]:
    rows = []
    for parameter in command.get_params(context):
        # Arguments appear in the usage line and the command's help.
        record = None if isinstance(parameter, click.Argument) else parameter.get_help_record(context)
        if record is None:
            continue
        names, help_text = record
        help_text = " ".join(help_text.split()).replace("|", "\\|")
        rows.append(f"| `{names}` | {help_text} |")
    if not rows:
        return []
    return ["| option | meaning |", "|---|---|", *rows, ""]


def _section(command: click.Command, context: click.Context, level: str) -> list[str]:
    usage = " ".join(command.collect_usage_pieces(context))
    lines = [f"{level} `{context.command_path}`", "", "```text", f"{context.command_path} {usage}", "```", ""]
    if command.help:
        lines += [paragraph.strip() for paragraph in command.help.split("\n\n")]
        lines.append("")
    lines += _options_table(command, context)
    return lines


def generate() -> str:
    """Return the Markdown reference of ``mdskit`` and each of its commands."""
    from mdskit.cli import main

    root = click.Context(main, info_name="mdskit")
    lines = [HEADER, *_section(main, root, "##")]
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        context = click.Context(command, info_name=name, parent=root)
        lines += _section(command, context, "###")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit with status 1 when docs/cli.md is out of date.")
    arguments = parser.parse_args()
    text = generate()
    if arguments.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is out of date; run: python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
