"""Sample DICOM and NIfTI files that ship with pydicom and nibabel, for the tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
from pydicom.data import get_testdata_file

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def dicom_file(name: str) -> Path:
    """Return a DICOM sample file that ships with pydicom, skipping when this install lacks it."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom sample file {name} is not shipped with this pydicom install")
    return Path(path)


def nifti_file(name: str) -> Path:
    """Return a NIfTI sample file that ships with nibabel, skipping when this install lacks it."""
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"nibabel sample file {name} is not shipped with this nibabel install")
    return path
