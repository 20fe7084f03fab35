"""Shared fixtures: the real datasets and an offline Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests build transformers models from configs only; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MDSKIT_DATA_ROOT", PROJECT_ROOT.parent / "shared" / "data"))

DATASET_FOLDERS = {
    "busi": "Dataset_BUSI_with_GT",
    "kvasir": "Kvasir-SEG",
    "ph2": "PH2Dataset",
    "shenzhen": "ChinaSet_AllFiles",
}


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Return the folder that contains the four public datasets, skipping the test when it is absent."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real datasets not found at {DATA_ROOT}; set MDSKIT_DATA_ROOT to their folder")
    return DATA_ROOT


@pytest.fixture(scope="session")
def dataset_folder(data_root: Path):
    """Return the folder of one dataset by adapter name, skipping when absent."""

    def folder(name: str) -> Path:
        path = data_root / DATASET_FOLDERS[name]
        if not path.is_dir():
            pytest.skip(f"dataset {name} not found at {path}")
        return path

    return folder
