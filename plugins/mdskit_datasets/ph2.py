"""PH2: dermoscopic images of melanocytic lesions (Mendonca et al., EMBC 2013).

Layout of the public release::

    PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp
    PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_lesion/IMDnnn_lesion.bmp
    PH2Dataset/PH2_dataset.xlsx    the label table
    PH2Dataset/PH2_dataset.txt     a tab-separated export of the same table

The spreadsheet is the authoritative table: its "Clinical Diagnosis" block
has one column per diagnosis (Common Nevus, Atypical Nevus, Melanoma) with
an X in the matching column. The text export stores the diagnosis as a code
(0 common nevus, 1 atypical nevus, 2 melanoma) and has ragged legend rows,
so only rows whose first cell is an image id are read. The text file is
used when the spreadsheet is missing or unreadable; when both are read,
disagreements are logged and the spreadsheet wins. The tables list all 200
cases of the release; only the case folders present are loaded.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any

from mdskit.datasets import DatasetAdapter
from mdskit.errors import DataError
from mdskit.imageio import check_mask_size, read_image, read_mask
from mdskit.sample import MdsSample

from .common import natural_key, require_cases, warn_skipped

logger = logging.getLogger(__name__)

IMAGES_FOLDER = "PH2 Dataset images"
XLSX_FILE = "PH2_dataset.xlsx"
TXT_FILE = "PH2_dataset.txt"
LABELS = ("common nevus", "atypical nevus", "melanoma")
_IMAGE_ID = re.compile(r"^IMD\d+$")


def _cell_text(value: Any) -> str:
    return "" if value is None else " ".join(str(value).split())


def _criteria_key(header: str) -> str:
    """Turn a spreadsheet header such as "Pigment Network\\n(AT/T)" into "pigment_network"."""
    name = re.sub(r"\(.*?\)", "", header).strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def read_xlsx_labels(path: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Read labels and dermoscopic criteria from the PH2 spreadsheet.

    Returns:
        Labels by image id, and by image id the other non-empty columns
        (histological diagnosis, asymmetry, colours, ...) keyed by a
        lower-case form of their header.

    Raises:
        DataError: The file cannot be read, or has no header row with an
            "Image Name" column and the three diagnosis columns.
    """
    import openpyxl  # deferred: only this adapter needs it

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"label table {path} could not be read ({type(error).__name__}: {error}); "
                        f"restore it from the PH2 release.") from error
    try:
        rows = list(workbook.worksheets[0].iter_rows(values_only=True))
    finally:
        workbook.close()

    header_index = next((index for index, row in enumerate(rows)
                         if row and _cell_text(row[0]).lower() == "image name"), None)
    if header_index is None:
        raise DataError(f"label table {path} has no header row starting with 'Image Name'; "
                        f"restore it from the PH2 release.")
    headers = [_cell_text(cell) for cell in rows[header_index]]
    lower_headers = [header.lower() for header in headers]
    try:
        label_columns = {label: lower_headers.index(label) for label in LABELS}
    except ValueError as error:
        raise DataError(f"label table {path} lacks a diagnosis column ({error}); expected the columns "
                        f"Common Nevus, Atypical Nevus and Melanoma.") from error

    labels: dict[str, str] = {}
    criteria: dict[str, dict[str, Any]] = {}
    invalid: list[str] = []
    for row in rows[header_index + 1:]:
        image_id = _cell_text(row[0]) if row else ""
        if not _IMAGE_ID.match(image_id):
            continue
        marked = [label for label, column in label_columns.items()
                  if column < len(row) and _cell_text(row[column])]
        if len(marked) != 1:
            invalid.append(image_id)
            continue
        labels[image_id] = marked[0]
        criteria[image_id] = {
            _criteria_key(header): value
            for column, (header, value) in enumerate(zip(headers, row))
            if column > 0 and column not in label_columns.values() and header and _cell_text(value)
        }
    if invalid:
        logger.warning("ph2: %d row(s) of %s mark no or several diagnoses and are ignored: %s",
                       len(invalid), path, ", ".join(invalid[:5]))
    return labels, criteria


def read_txt_labels(path: Path) -> dict[str, str]:
    """Read labels from the tab-separated PH2 export, skipping every row that is not a case.

    The diagnosis code is taken from the "Clinical Diagnosis" column of the
    header row, or from the second column when no header names it.

    Raises:
        DataError: The file cannot be read.
    """
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as error:
        raise DataError(f"label table {path} could not be read ({error}); restore it from the PH2 release.") from error
    code_column = 1
    for line in lines:
        cells = [cell.strip().strip('"').lower() for cell in line.split("\t")]
        if "clinical diagnosis" in cells:
            code_column = cells.index("clinical diagnosis")
            break
    labels: dict[str, str] = {}
    invalid: list[str] = []
    for line in lines:
        cells = [cell.strip().strip('"') for cell in line.split("\t")]
        if not _IMAGE_ID.match(cells[0]):
            continue
        code = cells[code_column] if code_column < len(cells) else ""
        if code in ("0", "1", "2"):
            labels[cells[0]] = LABELS[int(code)]
        else:
            invalid.append(cells[0])
    if invalid:
        logger.warning("ph2: %d row(s) of %s have no diagnosis code 0, 1 or 2 and are ignored: %s",
                       len(invalid), path, ", ".join(invalid[:5]))
    return labels


class Ph2Adapter(DatasetAdapter):
    """Dermoscopy cases of PH2, with lesion masks and the clinical diagnosis."""

    name = "ph2"
    modality = "dermoscopy"
    label_set = LABELS
    default_folder = "PH2Dataset"

    def read_labels(self) -> tuple[dict[str, str], dict[str, dict[str, Any]], Path]:
        """Read labels (and criteria, from the spreadsheet only) and return the table used."""
        xlsx_path = self.root / XLSX_FILE
        txt_path = self.root / TXT_FILE
        if xlsx_path.is_file():
            try:
                labels, criteria = read_xlsx_labels(xlsx_path)
            except DataError as error:
                if not txt_path.is_file():
                    raise
                logger.warning("ph2: %s; falling back to %s", error, txt_path)
            else:
                if txt_path.is_file():
                    self._compare_tables(labels, read_txt_labels(txt_path), xlsx_path, txt_path)
                return labels, criteria, xlsx_path
        if txt_path.is_file():
            return read_txt_labels(txt_path), {}, txt_path
        raise DataError(f"no PH2 label table in {self.root}: neither {XLSX_FILE} nor {TXT_FILE} was found; "
                        f"pass the {self.default_folder} folder of the public release with --data ph2=PATH.")

    @staticmethod
    def _compare_tables(xlsx_labels: dict[str, str], txt_labels: dict[str, str], xlsx_path: Path,
                        txt_path: Path) -> None:
        differing = sorted(image_id for image_id, label in txt_labels.items()
                           if image_id in xlsx_labels and xlsx_labels[image_id] != label)
        if differing:
            logger.warning("ph2: %d case(s) have different labels in %s and %s; using the spreadsheet: %s",
                           len(differing), xlsx_path.name, txt_path.name, ", ".join(differing[:5]))

    def load_cases(self) -> list[MdsSample]:
        """Read every case folder that is present and listed in the label table."""
        images_root = self.root / IMAGES_FOLDER
        if not images_root.is_dir():
            require_cases([], self.root, self.name, self.default_folder, expected=f"folder '{IMAGES_FOLDER}'")
        labels, criteria, table_path = self.read_labels()

        case_folders = sorted((path for path in images_root.iterdir() if path.is_dir() and _IMAGE_ID.match(path.name)),
                              key=lambda path: natural_key(path.name))
        logger.info("ph2: %s lists %d case(s); %d case folder(s) present", table_path.name, len(labels),
                    len(case_folders))
        cases: list[MdsSample] = []
        unlabelled: list[str] = []
        missing_images: list[str] = []
        missing_masks: list[str] = []
        for folder in case_folders:
            case_id = folder.name
            image_path = folder / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp"
            mask_path = folder / f"{case_id}_lesion" / f"{case_id}_lesion.bmp"
            if case_id not in labels:
                unlabelled.append(case_id)
            elif not image_path.is_file():
                missing_images.append(case_id)
            elif not mask_path.is_file():
                missing_masks.append(case_id)
            else:
                cases.append(self._load_case(case_id, labels[case_id], image_path, mask_path, criteria))
        warn_skipped(logger, self.name, f"not listed in {table_path.name}", unlabelled)
        warn_skipped(logger, self.name, "without a dermoscopic image file", missing_images)
        warn_skipped(logger, self.name, "without a lesion mask file", missing_masks)
        return require_cases(cases, self.root, self.name, self.default_folder)

    def _load_case(self, case_id: str, label: str, image_path: Path, mask_path: Path,
                   criteria: dict[str, dict[str, Any]]) -> MdsSample:
        image = read_image(image_path)
        mask = read_mask(mask_path)
        check_mask_size(image, mask, mask_path)
        return MdsSample(
            case_id=case_id,
            dataset=self.name,
            modality=self.modality,
            image=image,
            mask=mask,
            label=label,
            label_set=self.label_set,
            group=case_id,
            source=str(image_path),
            meta={"criteria": dict(criteria.get(case_id, {}))},
        )
