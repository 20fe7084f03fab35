"""Dataset adapters, image reading and the embedded phantom dataset.

Tests that read the real datasets take the ``dataset_folder`` fixture and
are skipped when the data is absent. The expected counts are those of the
test subsets. BUSI has 45 benign, 45 malignant and 30 normal cases. Its
four near-duplicate pairs each sit under one label, so no case is dropped
for a label conflict. Kvasir-SEG has 100 polyps, PH2 25 cases per label,
and Shenzhen 50 normal and 50 tuberculosis cases.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdskit.datasets import DatasetAdapter
from mdskit.errors import DataError
from mdskit.findings import measure_mask
from mdskit.imageio import check_mask_size, read_image, read_mask
from mdskit.plugins import ENTRY_POINT_GROUP, load_plugins
from mdskit_datasets.busi import BusiAdapter
from mdskit_datasets.kvasir import KvasirAdapter
from mdskit_datasets.ph2 import Ph2Adapter, read_txt_labels, read_xlsx_labels
from mdskit_datasets.phantom import IMAGE_SIZES, PhantomAdapter
from mdskit_datasets.shenzhen import ShenzhenAdapter

ADAPTERS = {"busi": BusiAdapter, "kvasir": KvasirAdapter, "ph2": Ph2Adapter, "shenzhen": ShenzhenAdapter}
EXPECTED_COUNTS = {
    "busi": {"benign": 45, "malignant": 45, "normal": 30},
    "kvasir": {"polyp": 100},
    "ph2": {"common nevus": 25, "atypical nevus": 25, "melanoma": 25},
    "shenzhen": {"normal": 50, "tuberculosis": 50},
}


@pytest.fixture(scope="module")
def loaded(dataset_folder):
    """Load a real dataset once per module, by adapter name."""
    cache: dict[str, list] = {}

    def load(name: str):
        if name not in cache:
            cache[name] = ADAPTERS[name](dataset_folder(name)).load_cases()
        return cache[name]

    return load


@pytest.fixture(scope="module")
def phantom_cases():
    return PhantomAdapter().load_cases()


def _write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# --- every real adapter ---------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_label_counts(loaded, name):
    cases = loaded(name)
    assert Counter(case.label for case in cases) == EXPECTED_COUNTS[name]


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_sample_fields(loaded, name):
    adapter = ADAPTERS[name]
    cases = loaded(name)
    assert len({case.case_id for case in cases}) == len(cases)
    for case in cases:
        assert case.dataset == name
        assert case.modality == adapter.modality
        assert case.label in adapter.label_set
        assert case.label_set == adapter.label_set
        assert case.group
        assert Path(case.source).is_file()
        assert case.question == ""
        assert case.answer == ""


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_masks_binary_and_aligned(loaded, name):
    for case in loaded(name):
        assert case.image.dtype == np.uint8
        assert case.image.ndim == 3
        assert case.image.shape[2] == 3
        assert case.mask.dtype == bool
        assert case.mask.shape == case.image.shape[:2]
        if case.label != "normal" or name == "shenzhen":
            assert case.mask.any(), f"{case.uid} has an empty mask"


@pytest.mark.data
def test_adapter_subclasses_not_embedded():
    for adapter in ADAPTERS.values():
        assert issubclass(adapter, DatasetAdapter)
        assert adapter.embedded is False
        assert adapter.default_folder


def test_plugin_registers_adapters_and_generator():
    # Only this plugin's entry point is loaded; the others import heavy model code.
    others = [entry.name for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name != "datasets"]
    components, _ = load_plugins(disabled=others)
    assert not components.failures
    dataset_providers = components.providers["dataset"]
    for name in ("busi", "kvasir", "ph2", "shenzhen", "phantom"):
        assert dataset_providers.get(name) == "datasets"
    assert components.providers["cot"].get("template") == "datasets"


# --- BUSI -------------------------------------------------------------------


@pytest.mark.data
def test_busi_multi_mask_union(loaded, dataset_folder):
    folder = dataset_folder("busi") / "benign"
    case = next(case for case in loaded("busi") if case.case_id == "benign (346)")
    first = read_mask(folder / "benign (346)_mask.png")
    second = read_mask(folder / "benign (346)_mask_1.png")
    assert case.meta["mask_files"] == ["benign (346)_mask.png", "benign (346)_mask_1.png"]
    assert np.array_equal(case.mask, first | second)
    assert case.mask.sum() > first.sum()
    assert case.mask.sum() > second.sum()


@pytest.mark.data
def test_busi_normal_masks_empty(loaded):
    normal = [case for case in loaded("busi") if case.label == "normal"]
    assert normal
    assert not any(case.mask.any() for case in normal)


@pytest.mark.data
def test_busi_near_duplicates_share_group(loaded):
    by_id = {case.case_id: case for case in loaded("busi")}
    for first, second in [("malignant (116)", "malignant (18)"), ("normal (97)", "normal (98)"),
                          ("benign (260)", "benign (281)"), ("normal (39)", "normal (48)")]:
        assert by_id[first].group == by_id[second].group
        assert second in by_id[first].meta["near_duplicates"]
    group_sizes = Counter(case.group for case in by_id.values())
    assert sorted(size for size in group_sizes.values() if size > 1) == [2, 2, 2, 2]


@pytest.mark.data
def test_busi_images_are_grey(loaded):
    grey = sum(np.array_equal(case.image[..., 0], case.image[..., 2]) for case in loaded("busi"))
    # Two scans of the subset differ slightly between colour channels.
    assert grey >= 118


def _busi_tree(root: Path, rng: np.random.Generator) -> np.ndarray:
    """Write a tiny BUSI folder with one scan filed under benign and malignant."""
    shared = (rng.random((40, 48)) * 255).astype(np.uint8)
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:20, 10:25] = 255
    _write_png(root / "benign" / "benign (1).png", np.stack([shared] * 3, axis=2))
    _write_png(root / "benign" / "benign (1)_mask.png", mask)
    _write_png(root / "malignant" / "malignant (7).png", np.stack([shared] * 3, axis=2))
    _write_png(root / "malignant" / "malignant (7)_mask.png", mask)
    for index in (2, 3):
        other = (rng.random((40, 48)) * 255).astype(np.uint8)
        _write_png(root / "benign" / f"benign ({index}).png", np.stack([other] * 3, axis=2))
        _write_png(root / "benign" / f"benign ({index})_mask.png", mask)
    _write_png(root / "normal" / "normal (1).png", np.stack([(rng.random((30, 30)) * 255).astype(np.uint8)] * 3, axis=2))
    _write_png(root / "normal" / "normal (1)_mask.png", np.zeros((30, 30), dtype=np.uint8))
    return shared


def test_busi_conflicting_labels_dropped(tmp_path, caplog):
    _busi_tree(tmp_path, np.random.default_rng(1))
    with caplog.at_level(logging.WARNING, logger="mdskit_datasets"):
        cases = BusiAdapter(tmp_path).load_cases()
    assert sorted(case.case_id for case in cases) == ["benign (2)", "benign (3)", "normal (1)"]
    assert re.search(r"dropped 2 case\(s\) in 1 near-duplicate group", caplog.text)


def test_busi_missing_mask_skipped(tmp_path, caplog):
    _busi_tree(tmp_path, np.random.default_rng(2))
    (tmp_path / "benign" / "benign (3)_mask.png").unlink()
    with caplog.at_level(logging.WARNING, logger="mdskit_datasets"):
        cases = BusiAdapter(tmp_path).load_cases()
    assert "benign (3)" not in {case.case_id for case in cases}
    assert "skipped 1 case(s) without a mask file: benign/benign (3)" in caplog.text


def test_busi_mask_size_mismatch(tmp_path):
    _busi_tree(tmp_path, np.random.default_rng(3))
    wrong = _write_png(tmp_path / "benign" / "benign (2)_mask.png", np.zeros((20, 48), dtype=np.uint8))
    with pytest.raises(DataError, match=re.escape(f"mask {wrong} is 20x48 pixels (height x width) but its image is 40x48")):
        BusiAdapter(tmp_path).load_cases()


def test_busi_folder_without_classes(tmp_path):
    (tmp_path / "Dataset_BUSI_with_GT").mkdir()
    with pytest.raises(DataError, match=r"no usable 'busi' cases found in .*did you mean .*Dataset_BUSI_with_GT"):
        BusiAdapter(tmp_path).load_cases()


# --- Kvasir-SEG ---------------------------------------------------------------


@pytest.mark.data
def test_kvasir_masks_thresholded(loaded, dataset_folder):
    masks_folder = dataset_folder("kvasir") / "masks"
    noisy = 0
    for case in loaded("kvasir")[:20]:
        raw = np.asarray(Image.open(masks_folder / f"{case.case_id}.jpg").convert("L"))
        noisy += bool(np.setdiff1d(np.unique(raw), [0, 255]).size)
        assert np.array_equal(case.mask, raw >= 128)
    # JPEG compression leaves intermediate values, which is why thresholding is needed.
    assert noisy > 0


@pytest.mark.data
def test_kvasir_boxes_in_image_frame(loaded):
    for case in loaded("kvasir"):
        height, width = case.image_size
        boxes = np.array(case.meta["boxes"])
        assert boxes.shape[1] == 4
        assert (boxes[:, 0] >= 0).all()
        assert (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width + 0.5).all()
        assert (boxes[:, 3] <= height + 0.5).all()
        # The union of the boxes encloses the mask up to rounding at the shrunk scale.
        rows, columns = np.nonzero(case.mask)
        assert boxes[:, 0].min() <= columns.min() + 3
        assert boxes[:, 1].min() <= rows.min() + 3
        assert boxes[:, 2].max() >= columns.max() - 3
        assert boxes[:, 3].max() >= rows.max() - 3


def test_kvasir_missing_mask_skipped(tmp_path, caplog):
    image = np.full((24, 32, 3), 90, dtype=np.uint8)
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[5:15, 8:20] = 255
    _write_png(tmp_path / "images" / "a1.png", image)
    _write_png(tmp_path / "masks" / "a1.png", mask)
    _write_png(tmp_path / "images" / "b2.png", image)
    (tmp_path / "masks").mkdir(exist_ok=True)
    with caplog.at_level(logging.WARNING, logger="mdskit_datasets"):
        cases = KvasirAdapter(tmp_path).load_cases()
    assert [case.case_id for case in cases] == ["a1"]
    assert "skipped 1 case(s) without a mask file: b2" in caplog.text
    assert "cases are loaded without polyp boxes" in caplog.text


def test_kvasir_boxes_rescaled(tmp_path):
    image = np.zeros((50, 100, 3), dtype=np.uint8)
    _write_png(tmp_path / "images" / "p1.png", image)
    _write_png(tmp_path / "masks" / "p1.png", np.full((50, 100), 255, dtype=np.uint8))
    (tmp_path / "kavsir_bboxes.json").write_text(
        '{"p1": {"height": 100, "width": 400, "bbox": [{"label": "polyp", "xmin": 40, "ymin": 10, "xmax": 200, "ymax": 90}]}}')
    (case,) = KvasirAdapter(tmp_path).load_cases()
    assert case.meta["boxes"] == [[10.0, 5.0, 50.0, 45.0]]


def test_kvasir_invalid_boxes_file(tmp_path):
    _write_png(tmp_path / "images" / "p1.png", np.zeros((8, 8, 3), dtype=np.uint8))
    _write_png(tmp_path / "masks" / "p1.png", np.zeros((8, 8), dtype=np.uint8))
    boxes = tmp_path / "kavsir_bboxes.json"
    boxes.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(f"boxes file {boxes} could not be read")):
        KvasirAdapter(tmp_path).load_cases()


# --- PH2 ----------------------------------------------------------------------


@pytest.mark.data
def test_ph2_tables_agree(dataset_folder):
    folder = dataset_folder("ph2")
    xlsx_labels, criteria = read_xlsx_labels(folder / "PH2_dataset.xlsx")
    txt_labels = read_txt_labels(folder / "PH2_dataset.txt")
    assert len(xlsx_labels) == 200
    assert xlsx_labels == txt_labels
    assert Counter(xlsx_labels.values()) == {"common nevus": 80, "atypical nevus": 80, "melanoma": 40}
    assert criteria["IMD003"]["asymmetry"] == 0


@pytest.mark.data
def test_ph2_txt_fallback(dataset_folder, loaded, tmp_path):
    folder = dataset_folder("ph2")
    (tmp_path / "PH2 Dataset images").symlink_to(folder / "PH2 Dataset images", target_is_directory=True)
    shutil.copy(folder / "PH2_dataset.txt", tmp_path / "PH2_dataset.txt")
    cases = Ph2Adapter(tmp_path).load_cases()
    assert {case.case_id: case.label for case in cases} == {case.case_id: case.label for case in loaded("ph2")}


def test_ph2_ragged_txt_rows(tmp_path):
    table = tmp_path / "PH2_dataset.txt"
    table.write_text(
        "Name\tClinical Diagnosis\tAsymmetry\r\n"
        "IMD003\t0\t0\r\n"
        "IMD010\t1\t2\r\n"
        "IMD020\t2\t2\r\n"
        "\t\t\r\n"
        "gends f\t\t\r\n"
        "0 - Co\t\t\r\n"
        'gends f\t"ules, Streaks, Regr"\t"ion Areas,"\r\n'
        "IMD999\t7\t0\r\n")
    assert read_txt_labels(table) == {"IMD003": "common nevus", "IMD010": "atypical nevus", "IMD020": "melanoma"}


def test_ph2_missing_tables(tmp_path):
    (tmp_path / "PH2 Dataset images").mkdir()
    with pytest.raises(DataError, match=r"no PH2 label table in .*: neither PH2_dataset.xlsx nor PH2_dataset.txt"):
        Ph2Adapter(tmp_path).load_cases()


def test_ph2_unreadable_xlsx(tmp_path):
    (tmp_path / "PH2 Dataset images").mkdir()
    xlsx = tmp_path / "PH2_dataset.xlsx"
    xlsx.write_bytes(b"this is not a spreadsheet")
    with pytest.raises(DataError, match=re.escape(f"label table {xlsx} could not be read")):
        Ph2Adapter(tmp_path).load_cases()


# --- Shenzhen -------------------------------------------------------------------


@pytest.mark.data
def test_shenzhen_labels_from_suffix(loaded):
    for case in loaded("shenzhen"):
        expected = "normal" if case.case_id.endswith("_0") else "tuberculosis"
        assert case.label == expected
        assert case.meta["mask_target"] == "lungs"


@pytest.mark.data
def test_shenzhen_masks_cover_lungs(loaded):
    two_regions = 0
    for case in loaded("shenzhen"):
        findings = measure_mask(case.mask)
        assert 0.1 < findings.area_fraction < 0.6
        two_regions += findings.region_count == 2
    assert two_regions >= 90


def test_shenzhen_skips_unlabelled_names(tmp_path, caplog):
    image = np.full((16, 16, 3), 100, dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 2:7] = 255
    _write_png(tmp_path / "CXR_png" / "CHNCXR_0001_1.png", image)
    _write_png(tmp_path / "mask" / "CHNCXR_0001_1_mask.png", mask)
    _write_png(tmp_path / "CXR_png" / "CHNCXR_0002.png", image)
    with caplog.at_level(logging.WARNING, logger="mdskit_datasets"):
        cases = ShenzhenAdapter(tmp_path).load_cases()
    assert [(case.case_id, case.label) for case in cases] == [("CHNCXR_0001_1", "tuberculosis")]
    assert "lacks the label suffix" in caplog.text


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_missing_folder(tmp_path, name):
    missing = tmp_path / "absent"
    with pytest.raises(DataError, match=re.escape(f"dataset folder {missing} for '{name}' does not exist")):
        ADAPTERS[name](missing)


def test_read_image_corrupt_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=re.escape(f"image file {broken} could not be decoded")):
        read_image(broken)


def test_read_image_garbage_bytes(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(DataError, match=re.escape(f"image file {garbage} could not be decoded")):
        read_image(garbage)


def test_read_image_truncated_file(tmp_path):
    whole = _write_png(tmp_path / "whole.png", (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:400])
    with pytest.raises(DataError, match=re.escape(f"image file {truncated} could not be decoded")):
        read_image(truncated)


def test_read_image_missing_file(tmp_path):
    missing = tmp_path / "nothing.png"
    with pytest.raises(DataError, match=re.escape(f"image file {missing} not found")):
        read_image(missing)


def test_read_mask_corrupt_file(tmp_path):
    broken = tmp_path / "mask.bmp"
    broken.write_bytes(b"BM" + b"\x00" * 30)
    with pytest.raises(DataError, match=re.escape(f"image file {broken} could not be decoded")):
        read_mask(broken)


def test_adapter_corrupt_image(tmp_path):
    broken = tmp_path / "images" / "c1.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff" + b"garbage" * 50)
    _write_png(tmp_path / "masks" / "c1.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=re.escape(f"image file {broken} could not be decoded")):
        KvasirAdapter(tmp_path).load_cases()


def test_check_mask_size_names_sizes(tmp_path):
    path = tmp_path / "m.png"
    with pytest.raises(DataError, match=re.escape(f"mask {path} is 5x6 pixels (height x width) but its image is 5x7")):
        check_mask_size(np.zeros((5, 7, 3), dtype=np.uint8), np.zeros((5, 6), dtype=bool), path)
    check_mask_size(np.zeros((5, 7, 3), dtype=np.uint8), np.zeros((5, 7), dtype=bool), path)


# --- image reading ----------------------------------------------------------------


def test_read_image_greyscale_to_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = read_image(_write_png(tmp_path / "g.png", grey))
    assert image.shape == (3, 4, 3)
    assert image.dtype == np.uint8
    assert np.array_equal(image[..., 1], grey)


def test_read_image_sixteen_bit(tmp_path):
    values = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    image = read_image(path)
    assert image[..., 0].tolist() == [[0, 255], [100, 200]]


def test_read_mask_rgb_colour(tmp_path):
    colour = np.zeros((4, 4, 3), dtype=np.uint8)
    colour[1:3, 1:3, 0] = 255  # a red mask, whose grey value would be only 76
    mask = read_mask(_write_png(tmp_path / "red.png", colour))
    assert mask.sum() == 4
    assert mask[1, 1]


def test_read_mask_zero_one_values(tmp_path):
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[0, :2] = 1
    mask = read_mask(_write_png(tmp_path / "labels.png", labels))
    assert mask.sum() == 2


def test_read_mask_jpeg_threshold(tmp_path):
    rows, columns = np.mgrid[0:32, 0:32]
    disc = (np.hypot(rows - 15.3, columns - 16.7) < 9).astype(np.uint8) * 255
    path = tmp_path / "m.jpg"
    Image.fromarray(disc).save(path, quality=60)
    raw = np.asarray(Image.open(path))
    mask = read_mask(path)
    assert np.setdiff1d(np.unique(raw), [0, 255]).size > 0
    assert np.array_equal(mask, raw >= 128)
    assert abs(int(mask.sum()) - int((disc > 0).sum())) < 20


# --- phantom ----------------------------------------------------------------------


def test_phantom_deterministic(phantom_cases):
    again = PhantomAdapter(seed=0).load_cases()
    for first, second in zip(phantom_cases, again):
        assert first.case_id == second.case_id
        assert np.array_equal(first.image, second.image)
        assert np.array_equal(first.mask, second.mask)


def test_phantom_seed_changes_images(phantom_cases):
    other = PhantomAdapter(seed=1, case_count=3).load_cases()
    assert not np.array_equal(other[0].image, phantom_cases[0].image)


def test_phantom_balanced_and_sized(phantom_cases):
    assert len(phantom_cases) == 72
    assert Counter(case.label for case in phantom_cases) == {"benign": 24, "malignant": 24, "normal": 24}
    sizes = Counter((case.label, case.image_size) for case in phantom_cases)
    for label in ("benign", "malignant", "normal"):
        for size in IMAGE_SIZES:
            assert sizes[(label, size)] == 8
    assert any(height != width for height, width in IMAGE_SIZES)


def test_phantom_sample_fields(phantom_cases):
    assert PhantomAdapter.embedded is True
    assert "not patient data" in PhantomAdapter.description
    for case in phantom_cases:
        assert case.dataset == "phantom"
        assert case.modality == "ultrasound (synthetic phantom)"
        assert "synthetic phantom generated by mdskit, not patient data" in case.source
        assert case.image.dtype == np.uint8
        assert case.image.shape == case.image_size + (3,)
        assert case.mask.dtype == bool
        assert case.mask.shape == case.image_size


def test_phantom_masks_match_labels(phantom_cases):
    for case in phantom_cases:
        if case.label == "normal":
            assert not case.mask.any()
            continue
        findings = measure_mask(case.mask)
        assert findings.region_count == 1
        assert 0.01 < findings.area_fraction < 0.2
        edges = np.concatenate([case.mask[0], case.mask[-1], case.mask[:, 0], case.mask[:, -1]])
        assert not edges.any(), f"{case.uid} lesion touches the image border"
        if case.label == "benign":
            assert findings.border == "smooth"
            assert findings.orientation == "wider than tall"
        else:
            assert findings.border == "irregular"
            assert findings.orientation != "wider than tall"


def test_phantom_lesions_visible(phantom_cases):
    inside_by_label: dict[str, list[float]] = {"benign": [], "malignant": []}
    for case in phantom_cases:
        if case.label == "normal":
            continue
        grey = case.image[..., 0].astype(np.float64)
        inside = grey[case.mask].mean()
        assert inside < 0.8 * grey[~case.mask].mean(), f"{case.uid} lesion is not hypoechoic"
        inside_by_label[case.label].append(inside)
    assert np.mean(inside_by_label["malignant"]) < np.mean(inside_by_label["benign"]) - 10


def test_phantom_posterior_features(phantom_cases):
    """Below a malignant lesion the image is darker than beside it (shadowing)."""
    darker = 0
    malignant = [case for case in phantom_cases if case.label == "malignant"]
    for case in malignant:
        grey = case.image[..., 0].astype(np.float64)
        rows, columns = np.nonzero(case.mask)
        below = slice(rows.max() + 2, min(rows.max() + 22, grey.shape[0]))
        if below.start >= grey.shape[0]:
            continue
        centre = slice(int(np.percentile(columns, 30)), int(np.percentile(columns, 70)) + 1)
        beside = np.r_[0:max(columns.min() - 5, 1), min(columns.max() + 5, grey.shape[1] - 1):grey.shape[1]]
        darker += grey[below, centre].mean() < grey[below][:, beside].mean()
    assert darker >= 0.9 * len(malignant)


def test_phantom_rejects_folder(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"reads no folder, but the folder {tmp_path} was given")):
        PhantomAdapter(tmp_path)
