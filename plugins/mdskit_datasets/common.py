"""Helpers shared by the dataset adapters: folder checks, sorting and logging."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from mdskit.errors import DataError
from mdskit.sample import MdsSample

# Names listed in full in a warning about skipped cases; the rest are counted.
MAX_NAMES_IN_WARNING = 5


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: "benign (2)" before "benign (10)"."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def require_folder(path: Path, adapter_name: str, default_folder: str, expected: str) -> Path:
    """Return ``path`` when it is a folder, else raise DataError saying what was expected.

    Args:
        path: Folder inside the dataset root that the adapter needs.
        adapter_name: Name of the adapter, for the message.
        default_folder: Folder name of the public release, for the message.
        expected: What the folder should contain, for the message.
    """
    if path.is_dir():
        return path
    raise DataError(
        f"folder {path} not found; the '{adapter_name}' adapter expects {expected}. "
        f"Pass the {default_folder} folder of the public release with --data {adapter_name}=PATH.")


def warn_skipped(logger: logging.Logger, dataset: str, reason: str, names: Sequence[str]) -> None:
    """Log one WARNING that counts the cases skipped for ``reason`` and names the first few."""
    if not names:
        return
    listed = ", ".join(names[:MAX_NAMES_IN_WARNING])
    more = f" and {len(names) - MAX_NAMES_IN_WARNING} more" if len(names) > MAX_NAMES_IN_WARNING else ""
    logger.warning("%s: skipped %d case(s) %s: %s%s", dataset, len(names), reason, listed, more)


def require_cases(cases: list[MdsSample], root: Path, adapter_name: str, default_folder: str,
                  expected: str = "") -> list[MdsSample]:
    """Return ``cases``, or raise DataError when the folder gave none.

    ``expected`` describes the layout that was not found, for the message.
    """
    if cases:
        return cases
    found = f" ({expected} not found)" if expected else ""
    hint = ""
    nested = root / default_folder
    if default_folder and nested.is_dir():
        hint = f" The folder contains {default_folder}/; did you mean {nested}?"
    raise DataError(
        f"no usable '{adapter_name}' cases found in {root}{found}; pass the {default_folder} folder "
        f"of the public release with --data {adapter_name}=PATH.{hint}")
