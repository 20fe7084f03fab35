"""Reading DICOM, NIfTI and raster inputs, and writing masks back onto their pixel grids.

The DICOM and NIfTI files are the sample files that pydicom and nibabel
ship with their wheels; raster files come from the real datasets.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from sample_files import dicom_file, nifti_file

from mdskit.errors import DataError
from mdskit.imageio import read_image
from mdskit.medical_io import read_input_image, write_dicom_seg, write_native_mask, write_nifti_label_map
from mdskit.outputs import heat_colours, heat_overlay, normalised


def first_png(folder: Path) -> Path:
    images = sorted(path for path in folder.glob("*.png") if "_mask" not in path.name)
    if not images:
        pytest.skip(f"no PNG image in {folder}")
    return images[0]


# DICOM -------------------------------------------------------------------------------------------

def test_ct_without_window_uses_full_range():
    source = read_input_image(dicom_file("CT_small.dcm"))
    assert source.format == "dicom"
    assert source.modality == "CT"
    assert source.image.shape == (128, 128, 3)
    assert source.image.dtype == np.uint8
    assert source.intensity["units"] == "HU"
    assert source.intensity["rescale_intercept"] == -1024.0
    assert source.intensity["window_source"].startswith("full range")
    assert source.image.min() == 0
    assert source.image.max() == 255


def test_mr_uses_window_from_file():
    path = dicom_file("MR_small.dcm")
    source = read_input_image(path)
    dataset = pydicom.dcmread(path)
    assert source.intensity["window_center"] == float(dataset.WindowCenter)
    assert source.intensity["window_width"] == float(dataset.WindowWidth)
    assert source.intensity["window_source"].startswith("file")
    # The DICOM linear window function for one pixel.
    stored = float(dataset.pixel_array[10, 20])
    expected = np.clip(((stored - (600 - 0.5)) / (1600 - 1) + 0.5) * 255, 0, 255)
    assert abs(int(source.image[10, 20, 0]) - expected) <= 0.5


def test_window_option_overrides_file():
    source = read_input_image(dicom_file("MR_small.dcm"), window=(100.0, 50.0))
    assert source.intensity["window_source"] == "--window option"
    assert source.intensity["window_center"] == 100.0
    assert source.intensity["window_width"] == 50.0


def test_monochrome1_is_inverted(tmp_path):
    original = dicom_file("MR_small.dcm")
    dataset = pydicom.dcmread(original)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    inverted_path = tmp_path / "mr_monochrome1.dcm"
    dataset.save_as(inverted_path)
    normal = read_input_image(original)
    inverted = read_input_image(inverted_path)
    assert inverted.intensity["inverted"] is True
    assert np.array_equal(inverted.image, 255 - normal.image)


def test_rgb_dicom_keeps_colours():
    path = dicom_file("SC_rgb_rle.dcm")
    source = read_input_image(path)
    assert source.image.shape == (100, 100, 3)
    assert np.array_equal(source.image, pydicom.dcmread(path).pixel_array)
    assert source.intensity["mapping"] == "RGB as stored"


def test_multiframe_needs_frame_choice():
    path = dicom_file("examples_ybr_color.dcm")
    with pytest.raises(DataError, match=r"has 30 frames; choose one with --frame INDEX \(0 to 29\)"):
        read_input_image(path)
    with pytest.raises(DataError, match="--frame 30 is out of range"):
        read_input_image(path, frame=30)


def test_multiframe_reads_chosen_frame():
    path = dicom_file("examples_ybr_color.dcm")
    source = read_input_image(path, frame=3)
    assert source.image.shape == (240, 320, 3)
    assert source.selection == {"frame": 3, "frames": 30}
    assert np.array_equal(source.image, pydicom.dcmread(path).pixel_array[3])


def test_dicom_without_pixel_data():
    path = dicom_file("rtplan.dcm")
    with pytest.raises(DataError, match="contains no pixel data; pass an image instance") as error:
        read_input_image(path)
    assert str(path) in str(error.value)


def test_undecodable_transfer_syntax():
    path = dicom_file("JPEG-lossy.dcm")
    try:
        pydicom.dcmread(path).pixel_array
    except (RuntimeError, NotImplementedError):
        pass
    else:
        pytest.skip("a decoder for 12-bit JPEG Extended is installed, so the file decodes here")
    with pytest.raises(DataError, match="JPEG Extended") as error:
        read_input_image(path)
    message = str(error.value)
    assert str(path) in message
    assert "convert it to an uncompressed transfer syntax" in message


def test_truncated_dicom_pixel_data():
    path = dicom_file("MR_truncated.dcm")
    with pytest.raises(DataError, match="pixel data that does not decode") as error:
        read_input_image(path)
    assert str(path) in str(error.value)


def test_dicom_seg_references_source(tmp_path):
    path = dicom_file("CT_small.dcm")
    source = read_input_image(path)
    mask = np.zeros(source.image.shape[:2], dtype=bool)
    mask[30:60, 40:90] = True
    written = write_dicom_seg(tmp_path / "mask.seg.dcm", source, mask, "sim4seg")

    segmentation = pydicom.dcmread(written)
    original = pydicom.dcmread(path)
    assert segmentation.Modality == "SEG"
    assert segmentation.Rows == original.Rows
    assert segmentation.Columns == original.Columns
    referenced = segmentation.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == original.SOPInstanceUID
    derivation = segmentation.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert segmentation.FrameOfReferenceUID == original.FrameOfReferenceUID
    assert np.array_equal(segmentation.pixel_array.astype(bool), mask)


def test_dicom_seg_without_patient_attributes(tmp_path):
    """A source that omits type-2 patient and study attributes still gets a Segmentation."""
    original = pydicom.dcmread(dicom_file("CT_small.dcm"))
    for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber"):
        if keyword in original:
            delattr(original, keyword)
    stripped = tmp_path / "stripped.dcm"
    original.save_as(stripped)
    source = read_input_image(stripped)
    mask = np.zeros(source.image.shape[:2], dtype=bool)
    mask[10:20, 10:20] = True
    written = write_dicom_seg(tmp_path / "mask.seg.dcm", source, mask, "sim4seg")
    segmentation = pydicom.dcmread(written)
    referenced = segmentation.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert segmentation.PatientBirthDate == ""
    assert "PatientBirthDate" not in source.dataset


def test_dicom_seg_skipped_without_frame_of_reference(tmp_path):
    source = read_input_image(dicom_file("examples_ybr_color.dcm"), frame=0)
    mask = np.zeros(source.image.shape[:2], dtype=bool)
    written, reason = write_native_mask(tmp_path, source, mask, "sim4seg")
    assert written is None
    assert "no DICOM Segmentation written" in reason
    assert not list(tmp_path.iterdir())


# NIfTI -------------------------------------------------------------------------------------------

def test_nifti_slice_is_read():
    path = nifti_file("anatomical.nii")
    source = read_input_image(path, axis=2, slice_index=12)
    volume = nib.load(path)
    assert source.format == "nifti"
    assert source.image.shape[:2] == (volume.shape[1], volume.shape[0])
    assert source.selection["slice"] == 12
    assert source.intensity["window_source"].startswith("slice percentiles")
    assert np.allclose(source.describe()["affine"], volume.affine, atol=1e-5)


def test_nifti_volume_needs_slice():
    path = nifti_file("anatomical.nii")
    with pytest.raises(DataError, match=r"is a 3-D volume of 33x41x25 voxels; choose a slice with --slice"):
        read_input_image(path)
    with pytest.raises(DataError, match="--slice 25 is out of range"):
        read_input_image(path, slice_index=25)


def test_nifti_4d_needs_volume():
    path = nifti_file("example4d.nii.gz")
    with pytest.raises(DataError, match=r"is 4-D with 2 volumes"):
        read_input_image(path, slice_index=3)
    source = read_input_image(path, frame=1, slice_index=3)
    assert source.selection["volume"] == 1


def test_corrupt_nifti(tmp_path):
    path = nifti_file("example4d.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated.nii.gz") as error:
        read_input_image(truncated, frame=0, slice_index=3)
    assert "export it again" in str(error.value) or "intact" in str(error.value)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nifti_label_map_round_trip(tmp_path, axis):
    path = nifti_file("anatomical.nii")
    volume = nib.load(path)
    index = volume.shape[axis] // 2
    source = read_input_image(path, axis=axis, slice_index=index)
    mask = np.zeros(source.image.shape[:2], dtype=bool)
    mask[2:7, 3:12] = True
    written = write_nifti_label_map(tmp_path / "mask.nii.gz", source, mask)

    label_map = nib.load(written)
    assert label_map.shape == volume.shape
    assert np.allclose(label_map.affine, volume.affine)
    assert label_map.get_data_dtype() == np.uint8
    labels = np.asarray(label_map.dataobj)
    assert int(labels.sum()) == int(mask.sum())
    outside = np.delete(labels, index, axis=axis)
    assert not outside.any()
    # Reading the label map back with the same slice choice gives the mask again.
    back = read_input_image(written, axis=axis, slice_index=index)
    assert np.array_equal(back.image[:, :, 0] > 127, mask)


def test_nifti_display_follows_world_axes(tmp_path):
    path = nifti_file("anatomical.nii")
    source = read_input_image(path, axis=2, slice_index=12)
    affine = nib.load(path).affine
    # Write one-pixel masks back and find the world position of the labelled voxel.
    positions = {}
    for name, (row, col) in {"origin": (5, 5), "right": (5, 6), "down": (6, 5)}.items():
        mask = np.zeros(source.image.shape[:2], dtype=bool)
        mask[row, col] = True
        written = write_nifti_label_map(tmp_path / f"{name}.nii.gz", source, mask)
        voxel = np.argwhere(np.asarray(nib.load(written).dataobj))[0]
        positions[name] = nib.affines.apply_affine(affine, voxel)
    # In RAS world coordinates a step right on screen goes to the patient's
    # right (+x), and a step down on an axial slice goes posterior (-y).
    assert positions["right"][0] > positions["origin"][0]
    assert positions["right"][1] == pytest.approx(positions["origin"][1])
    assert positions["down"][1] < positions["origin"][1]
    assert positions["down"][0] == pytest.approx(positions["origin"][0])


# Raster files and errors -------------------------------------------------------------------------

def test_png_and_jpeg_from_datasets(dataset_folder):
    png = first_png(dataset_folder("busi") / "benign")
    jpeg = sorted((dataset_folder("kvasir") / "images").glob("*.jpg"))[0]
    for path in (png, jpeg):
        source = read_input_image(path)
        assert source.format == "raster"
        assert np.array_equal(source.image, read_image(path))
        assert source.describe()["size"] == list(source.image.shape[:2])


@pytest.mark.parametrize("suffix", [".bmp", ".tif"])
def test_bmp_and_tiff(dataset_folder, tmp_path, suffix):
    png = first_png(dataset_folder("busi") / "benign")
    converted = tmp_path / f"image{suffix}"
    Image.open(png).convert("RGB").save(converted)
    assert np.array_equal(read_input_image(converted).image, read_image(png))


def test_dicom_without_suffix_is_detected(tmp_path):
    copy = tmp_path / "IM0001"
    shutil.copy(dicom_file("MR_small.dcm"), copy)
    assert read_input_image(copy).format == "dicom"


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"input image .*absent.png not found"):
        read_input_image(tmp_path / "absent.png")


def test_corrupt_png(dataset_folder, tmp_path):
    png = first_png(dataset_folder("busi") / "benign")
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:500])
    with pytest.raises(DataError, match="broken.png could not be decoded") as error:
        read_input_image(broken)
    assert "corrupt or truncated" in str(error.value)
    assert "public release" not in str(error.value)


def test_folder_as_input(tmp_path):
    with pytest.raises(DataError, match="is a folder, but an image file is expected"):
        read_input_image(tmp_path)


def test_heat_colours_span_ramp():
    colours = heat_colours(np.array([[0.0, 1.0, 2.0, -1.0]]))
    assert colours[0, 0].tolist() == [0, 0, 4]
    assert colours[0, 1].tolist() == [252, 255, 164]
    assert colours[0, 2].tolist() == colours[0, 1].tolist()
    assert colours[0, 3].tolist() == colours[0, 0].tolist()


def test_heat_overlay_leaves_transparent_pixels():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    values = np.array([[0.0, 1.0], [0.5, 0.0]])
    blended = heat_overlay(image, values, alpha=0.6 * (values > 0))
    assert blended[0, 0].tolist() == [100, 100, 100]
    assert blended[0, 1].tolist() != [100, 100, 100]
    assert normalised(np.array([3.0, 5.0])).tolist() == [0.0, 1.0]
    assert normalised(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_options_ignored_for_raster(tmp_path, caplog):
    path = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    with caplog.at_level(logging.WARNING, logger="mdskit.medical_io"):
        read_input_image(path, frame=1, axis=0, slice_index=3)
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("--frame is ignored for") and str(path) in message for message in messages)
    assert any(message.startswith("--slice is ignored for") for message in messages)
    assert any(message.startswith("--axis is ignored for") for message in messages)


def test_slice_ignored_for_dicom(caplog):
    path = dicom_file("MR_small.dcm")
    with caplog.at_level(logging.WARNING, logger="mdskit.medical_io"):
        read_input_image(path, slice_index=2)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"--slice is ignored for {path}, which is a DICOM file; it applies to NIfTI files"]


def test_no_warning_for_applicable_options(caplog):
    path = dicom_file("MR_small.dcm")
    with caplog.at_level(logging.WARNING, logger="mdskit.medical_io"):
        read_input_image(path, frame=0, window=(40.0, 400.0))
    assert caplog.records == []
