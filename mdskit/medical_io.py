"""Reading one 2-D image out of the files that clinics and studies hold, and writing masks back.

:func:`read_input_image` reads PNG, JPEG, BMP and TIFF through
:mod:`mdskit.imageio`, DICOM through pydicom and NIfTI through nibabel, and
returns an H x W x 3 uint8 RGB image with an :class:`InputImage` record of
how the stored values were mapped to display intensities. The mask written
back (:func:`write_dicom_seg`, :func:`write_nifti_label_map`) lies on the
input's own pixel grid: a DICOM Segmentation that references the source
instance and frame, or a NIfTI label map with the input's shape and affine.
"""

from __future__ import annotations

import copy
import logging
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import DataError
from .imageio import read_image

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Percentiles of the in-slice range mapped to black and white when a NIfTI
# slice gets no --window: MR and PET intensities have no absolute scale, and
# a few hot voxels would otherwise darken the whole slice.
NIFTI_PERCENTILES = (0.5, 99.5)


@dataclass
class InputImage:
    """An image read for prediction, with what is needed to write a mask back.

    Attributes:
        path: The file read.
        format: ``"raster"``, ``"dicom"`` or ``"nifti"``.
        image: H x W x 3 uint8 RGB, as the model and the overlays see it.
        intensity: How stored values became display intensities (for the record).
        modality: The DICOM Modality, or ``"unknown"``.
        selection: Frame, axis and slice chosen from a multi-frame or 3-D file.
        dataset: The pydicom dataset of a DICOM input (pixel data kept).
        nifti: The nibabel image of a NIfTI input.
        display: For NIfTI, the transpose and flips that turned the stored
            slice into ``image`` (see :func:`_display_transform`).
    """

    path: Path
    format: str
    image: np.ndarray
    intensity: dict[str, Any]
    modality: str = "unknown"
    selection: dict[str, Any] = field(default_factory=dict)
    dataset: Any = None
    nifti: Any = None
    display: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Return the JSON-ready description of the input for the prediction record."""
        record = {"path": str(self.path), "format": self.format, "modality": self.modality,
                  "size": [int(self.image.shape[0]), int(self.image.shape[1])], "intensity": self.intensity,
                  **self.selection}
        if self.nifti is not None:
            record["affine"] = np.asarray(self.nifti.affine).round(6).tolist()
            record["display"] = self.display
        if self.dataset is not None:
            record["sop_instance_uid"] = str(self.dataset.get("SOPInstanceUID", ""))
        return record


def detect_format(path: Path) -> str:
    """Return ``"dicom"``, ``"nifti"`` or ``"raster"`` from the suffix, or from the DICOM preamble."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    # DICOM files often have no suffix; Part 10 files carry "DICM" after a 128-byte preamble.
    with path.open("rb") as handle:
        handle.seek(128)
        if handle.read(4) == b"DICM":
            return "dicom"
    return "raster"


def read_input_image(path: str | Path, window: tuple[float, float] | None = None, frame: int | None = None,
                     axis: int = 2, slice_index: int | None = None) -> InputImage:
    """Read one 2-D image from a raster, DICOM or NIfTI file.

    Args:
        path: The file.
        window: (centre, width) of a linear intensity window in stored units
            after rescaling (Hounsfield units for CT); overrides the file's.
        frame: Frame of a multi-frame DICOM, or volume of a 4-D NIfTI, from 0.
        axis: NIfTI voxel axis (0, 1 or 2) across which ``slice_index`` cuts.
        slice_index: NIfTI slice along ``axis``, from 0; needed for 3-D volumes.

    Raises:
        DataError: The file is missing, does not decode, or needs a frame or
            slice choice that was not given.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"input image {path} is a folder, but an image file is expected (PNG, JPEG, BMP, "
                        f"TIFF, DICOM or NIfTI); pass the files inside it, for example {path}/*.dcm.")
    if not path.is_file():
        raise DataError(f"input image {path} not found; check the path.")
    kind = detect_format(path)
    slice_options = {"--slice": slice_index, "--axis": None if axis == 2 else axis}
    if kind == "dicom":
        _warn_ignored(path, "a DICOM file", slice_options)
        return read_dicom(path, window=window, frame=frame)
    if kind == "nifti":
        return read_nifti(path, window=window, volume=frame, axis=axis, slice_index=slice_index)
    _warn_ignored(path, "a 2-D image", {"--frame": frame, **slice_options, "--window": window})
    return InputImage(path, "raster", _read_raster(path), {"mapping": "8-bit RGB as stored"})


def _warn_ignored(path: Path, kind: str, options: dict[str, Any]) -> None:
    """Log a warning for each option that was given but does not apply to ``path``."""
    for option, value in options.items():
        if value is not None:
            logger.warning("%s is ignored for %s, which is %s; it applies to %s", option, path, kind,
                           _OPTION_SCOPE[option])


_OPTION_SCOPE = {"--frame": "multi-frame DICOM files and 4-D NIfTI files", "--slice": "NIfTI files",
                 "--axis": "NIfTI files", "--window": "DICOM and NIfTI files"}


def _read_raster(path: Path) -> np.ndarray:
    """Read a raster file that exists, with a decode error that fits a user's own file."""
    try:
        return read_image(path)
    except DataError as error:
        cause = error.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        raise DataError(f"image file {path} could not be decoded{detail}; the file is corrupt or truncated, "
                        "so re-export it or copy it again.") from cause


# DICOM ---------------------------------------------------------------------------------------------

def read_dicom(path: Path, window: tuple[float, float] | None = None, frame: int | None = None) -> InputImage:
    """Read one frame of a DICOM image and map it to display intensities.

    Greyscale frames pass the Modality LUT (rescale slope and intercept), then
    a linear window from ``window``, else the file's first Window Center and
    Width, else the frame's full range. MONOCHROME1 is inverted so that
    higher values are darker, as the standard defines. Colour frames are
    converted to RGB (YBR and palette colour included) and scaled to 8 bits.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise DataError(f"DICOM file {path} could not be read ({type(error).__name__}: {error}); "
                        "check that it is an intact DICOM Part 10 file.") from error
    if "PixelData" not in dataset:
        sop_class = dataset.get("SOPClassUID")
        kind = f" ({sop_class.name})" if sop_class is not None else ""
        raise DataError(f"DICOM file {path}{kind} contains no pixel data; pass an image instance such as a "
                        "CT, MR, US or secondary-capture file.")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    frame_index = _choose_frame(path, frames, frame)
    pixels = _decode_frame(path, dataset, frame_index, frames)

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 or photometric == "PALETTE COLOR":
        image, intensity = _dicom_colour(dataset, pixels, photometric)
    else:
        grey, intensity = _dicom_grey(dataset, pixels, photometric, window)
        image = np.repeat(grey[:, :, None], 3, axis=2)
    selection = {"frame": frame_index, "frames": frames}
    return InputImage(path, "dicom", np.ascontiguousarray(image), intensity,
                      modality=str(dataset.get("Modality", "unknown")), selection=selection, dataset=dataset)


def _choose_frame(path: Path, frames: int, frame: int | None) -> int:
    if frame is None:
        if frames > 1:
            raise DataError(f"DICOM file {path} has {frames} frames; choose one with --frame INDEX "
                            f"(0 to {frames - 1}).")
        return 0
    if not 0 <= frame < frames:
        raise DataError(f"--frame {frame} is out of range for {path}, which has {frames} frame(s); "
                        f"choose 0 to {frames - 1}.")
    return frame


def _decode_frame(path: Path, dataset, frame_index: int, frames: int) -> np.ndarray:
    """Decode one frame, turning a missing codec or damaged pixel data into a DataError."""
    from pydicom.pixels import pixel_array

    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    # pydicom logs each failed decoder with a traceback before it raises; the
    # DataError below replaces that with one message.
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL)
    try:
        return pixel_array(dataset, index=frame_index if frames > 1 else None, raw=False)
    except (NotImplementedError, RuntimeError) as error:
        name = syntax.name if syntax is not None else "unknown"
        raise DataError(
            f"DICOM file {path} uses the transfer syntax {name} ({syntax}), which the installed decoders cannot "
            f"decode ({error}); convert it to an uncompressed transfer syntax (for example "
            f"'gdcmconv --raw' or 'dcmdjpeg'), or install a pydicom pixel-data plugin for it "
            f"(pylibjpeg with pylibjpeg-libjpeg, or python-gdcm).") from error
    except (ValueError, AttributeError, KeyError) as error:
        raise DataError(f"DICOM file {path} has pixel data that does not decode ({type(error).__name__}: "
                        f"{error}); the file is damaged or lacks image attributes, so export it again.") from error
    finally:
        pydicom_logger.setLevel(level)


def _dicom_grey(dataset, pixels: np.ndarray, photometric: str,
                window: tuple[float, float] | None) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    intensity: dict[str, Any] = {
        "mapping": "linear window",
        "rescale_slope": float(dataset.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(dataset.get("RescaleIntercept", 0) or 0),
        "units": str(dataset.get("RescaleType", "HU" if dataset.get("Modality") == "CT" else "stored values")),
        "photometric_interpretation": photometric,
    }
    if window is not None:
        centre, width = window
        intensity["window_source"] = "--window option"
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        centre, width = _first_value(dataset.WindowCenter), _first_value(dataset.WindowWidth)
        intensity["window_source"] = "file (first Window Center and Width)"
    else:
        low, high = float(values.min()), float(values.max())
        centre, width = (low + high) / 2, max(high - low, 1.0)
        intensity["window_source"] = "full range of the frame (the file has no window)"
    intensity.update(window_center=float(centre), window_width=float(width))
    grey = _linear_window(values, float(centre), float(width))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
        intensity["inverted"] = True
    return grey, intensity


def _first_value(value) -> float:
    """Return the first of a multi-valued DICOM attribute, or the value itself."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        return float(value[0])
    return float(value)


def _linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Map values to 0-255 with the DICOM linear VOI function (PS3.3 C.11.2.1.2.1)."""
    if width < 1:
        raise DataError(f"window width {width} is invalid; give a width of at least 1 (--window CENTRE,WIDTH).")
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _dicom_colour(dataset, pixels: np.ndarray, photometric: str) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import apply_color_lut

    intensity: dict[str, Any] = {"photometric_interpretation": photometric}
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
        intensity["mapping"] = "palette colour lookup table"
    else:
        # pydicom converts YBR_FULL and YBR_FULL_422 to RGB while decoding.
        intensity["mapping"] = "RGB as stored" if photometric == "RGB" else "converted to RGB"
    bits = int(dataset.get("BitsStored", 8))
    if pixels.dtype != np.uint8 or photometric == "PALETTE COLOR":
        top = float(2 ** (16 if photometric == "PALETTE COLOR" else bits) - 1)
        pixels = np.clip(pixels.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        intensity["mapping"] += f", scaled from {bits if photometric != 'PALETTE COLOR' else 16} to 8 bits"
    return pixels, intensity


def write_dicom_seg(path: Path, source: InputImage, mask: np.ndarray, method: str) -> Path:
    """Write a binary DICOM Segmentation of ``mask`` that references the source frame.

    For a multi-frame source the Segmentation covers every source frame, and
    only the predicted frame carries the mask.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    dataset = source.dataset
    frames = source.selection.get("frames", 1)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if mask.shape != (rows, columns):
        raise ValueError(f"mask of shape {mask.shape} does not match the source's {rows} x {columns} pixels")
    pixel_array = np.zeros((frames, rows, columns), dtype=bool)
    pixel_array[source.selection.get("frame", 0)] = mask
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"mdskit {method}", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="finding",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    segmentation = hd.seg.Segmentation(
        source_images=[_with_type2_attributes(dataset)], pixel_array=pixel_array if frames > 1 else pixel_array[0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="mdskit", manufacturer_model_name=method, software_versions=__version__,
        device_serial_number="none", omit_empty_frames=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    segmentation.save_as(temporary)
    temporary.replace(path)
    return path


# Patient and study attributes of DICOM type 2 (required, but may be empty)
# that highdicom copies into a Segmentation. Some exported or anonymised
# files omit them, which highdicom rejects with an AttributeError.
TYPE2_SOURCE_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(dataset):
    """Return ``dataset``, or a copy with missing type-2 patient and study attributes set empty."""
    missing = [keyword for keyword in TYPE2_SOURCE_ATTRIBUTES if keyword not in dataset]
    if not missing:
        return dataset
    completed = copy.deepcopy(dataset)
    for keyword in missing:
        setattr(completed, keyword, "")
    return completed


# NIfTI ---------------------------------------------------------------------------------------------

def read_nifti(path: Path, window: tuple[float, float] | None = None, volume: int | None = None,
               axis: int = 2, slice_index: int | None = None) -> InputImage:
    """Read one slice of a NIfTI image, oriented for display.

    The slice is shown in the neurological convention: after the transpose
    and flips of :func:`_display_transform`, the patient's right is on the
    image's right, and superior (or, on axial slices, anterior) is at the top.
    Intensities (with the header's scaling applied) pass ``window`` when given,
    else the slice's 0.5th to 99.5th percentile range is stretched to 0-255.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        nifti = nib.load(path)
        shape = nifti.shape
    except (ImageFileError, OSError, ValueError, EOFError) as error:
        raise DataError(f"NIfTI file {path} could not be read ({type(error).__name__}: {error}); "
                        "check that it is an intact .nii or .nii.gz file.") from error
    selection, index = _choose_slice(path, shape, volume, axis, slice_index)
    try:
        data = np.asarray(nifti.dataobj[index], dtype=np.float64)
    except (OSError, ValueError, EOFError, zlib.error) as error:
        raise DataError(f"NIfTI file {path} has image data that does not decode ({type(error).__name__}: "
                        f"{error}); the file is truncated or damaged, so export it again.") from error
    if data.ndim != 2:
        data = data.reshape(data.shape[:2])
    display = _display_transform(nifti.affine, selection["in_plane_axes"])
    values = _apply_display(data, display)

    intensity: dict[str, Any] = {"mapping": "linear window", "units": "stored values after scl_slope/scl_inter"}
    if window is not None:
        centre, width = window
        intensity["window_source"] = "--window option"
    else:
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, NIFTI_PERCENTILES) if finite.size else (0.0, 1.0)
        centre, width = (low + high) / 2, max(high - low, 1e-6)
        intensity["window_source"] = (f"slice percentiles {NIFTI_PERCENTILES[0]} to {NIFTI_PERCENTILES[1]}")
    intensity.update(window_center=float(centre), window_width=float(width))
    grey = np.clip((np.nan_to_num(values) - (centre - width / 2)) / width * 255.0, 0, 255).round().astype(np.uint8)
    image = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    return InputImage(path, "nifti", image, intensity, selection=selection, nifti=nifti, display=display)


def _choose_slice(path: Path, shape: tuple[int, ...], volume: int | None, axis: int,
                  slice_index: int | None) -> tuple[dict[str, Any], tuple]:
    """Return the selection record and the index into the data array."""
    spatial = [int(size) for size in shape[:3]] + [1] * (3 - min(len(shape), 3))
    if len(shape) > 4:
        raise DataError(f"NIfTI file {path} has {len(shape)} dimensions {tuple(shape)}; only 2-D, 3-D and "
                        "4-D images are supported.")
    volumes = int(shape[3]) if len(shape) == 4 else 1
    if volumes > 1 and volume is None:
        raise DataError(f"NIfTI file {path} is 4-D with {volumes} volumes {tuple(shape)}; choose one with "
                        f"--frame INDEX (0 to {volumes - 1}) and a slice with --axis and --slice.")
    volume = 0 if volume is None else volume
    if not 0 <= volume < volumes:
        raise DataError(f"--frame {volume} is out of range for {path}, which has {volumes} volume(s); "
                        f"choose 0 to {volumes - 1}.")
    if axis not in (0, 1, 2):
        raise DataError(f"--axis {axis} is invalid; choose the voxel axis 0, 1 or 2.")
    if slice_index is None:
        if spatial[axis] > 1:
            raise DataError(f"NIfTI file {path} is a 3-D volume of {spatial[0]}x{spatial[1]}x{spatial[2]} "
                            f"voxels; choose a slice with --slice INDEX (0 to {spatial[axis] - 1}) along "
                            f"--axis {axis}, or another --axis.")
        slice_index = 0
    if not 0 <= slice_index < spatial[axis]:
        raise DataError(f"--slice {slice_index} is out of range for {path} along axis {axis}, which has "
                        f"{spatial[axis]} slices; choose 0 to {spatial[axis] - 1}.")
    index: list[Any] = [slice(None)] * len(shape)
    index[axis] = slice_index
    if len(shape) == 4:
        index[3] = volume
    if len(shape) == 2 and axis == 2:
        index = [slice(None), slice(None)]
    selection = {"axis": axis, "slice": slice_index, "volume": volume, "volume_shape": spatial,
                 "in_plane_axes": [a for a in (0, 1, 2) if a != axis]}
    return selection, tuple(index)


def _display_transform(affine: np.ndarray, in_plane_axes: list[int]) -> dict[str, Any]:
    """Work out the transpose and flips that show a slice in the neurological convention.

    Rows and columns of the stored slice follow the two in-plane voxel axes.
    The axis that points closest to left-right (or, on a sagittal slice,
    anterior-posterior) goes across, increasing to the right (R, or
    posterior so that the face looks left); the other goes down, with
    superior (or anterior) at the top.
    """
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    first, second = (codes[axis] for axis in in_plane_axes)
    world = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    # Across: the in-plane axis with the lower world axis (x before y before z).
    # The stored slice has the first in-plane axis down its rows, so putting
    # that axis across takes a transpose.
    transpose = world[first] < world[second]
    across, down = (first, second) if transpose else (second, first)
    increasing_right = {"R": True, "L": False, "P": True, "A": False, "S": True, "I": False}
    increasing_down = {"I": True, "S": False, "P": True, "A": False, "R": True, "L": False}
    return {"axis_codes": "".join(codes), "transpose": bool(transpose),
            "flip_columns": not increasing_right[across], "flip_rows": not increasing_down[down],
            "columns_point_to": across if increasing_right[across] else _opposite(across),
            "rows_point_to": down if increasing_down[down] else _opposite(down)}


def _opposite(code: str) -> str:
    return {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}[code]


def _apply_display(data: np.ndarray, display: dict[str, Any]) -> np.ndarray:
    """Turn a stored slice (in-plane voxel axes as rows and columns) into the display image."""
    if display["transpose"]:
        data = data.T
    if display["flip_columns"]:
        data = data[:, ::-1]
    if display["flip_rows"]:
        data = data[::-1, :]
    return np.ascontiguousarray(data)


def _undo_display(image: np.ndarray, display: dict[str, Any]) -> np.ndarray:
    """Invert :func:`_apply_display`: a display-frame map back onto the stored slice."""
    if display["flip_rows"]:
        image = image[::-1, :]
    if display["flip_columns"]:
        image = image[:, ::-1]
    if display["transpose"]:
        image = image.T
    return np.ascontiguousarray(image)


def write_nifti_label_map(path: Path, source: InputImage, mask: np.ndarray) -> Path:
    """Write ``mask`` as a uint8 label map (1 = finding) with the source's 3-D shape and affine.

    Only the predicted slice carries labels; every other voxel is 0.
    """
    import nibabel as nib

    selection = source.selection
    volume = np.zeros(selection["volume_shape"], dtype=np.uint8)
    stored = _undo_display(mask.astype(np.uint8), source.display)
    index: list[Any] = [slice(None)] * 3
    index[selection["axis"]] = selection["slice"]
    volume[tuple(index)] = stored
    header = source.nifti.header.copy()
    header.set_data_shape(volume.shape)
    header.set_data_dtype(np.uint8)
    label_map = nib.Nifti1Image(volume, source.nifti.affine, header=header) if isinstance(
        source.nifti, nib.Nifti1Image) else nib.Nifti2Image(volume, source.nifti.affine, header=header)
    label_map.header.set_slope_inter(1, 0)
    label_map.header["descrip"] = b"mdskit predicted mask, 1 = finding"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name.replace(".nii", ".tmp.nii"))
    nib.save(label_map, temporary)
    temporary.replace(path)
    return path


def write_native_mask(out: Path, source: InputImage, mask: np.ndarray, method: str) -> tuple[Path | None, str | None]:
    """Write the mask in the input's own format.

    Returns:
        The file written, or None with the reason: raster inputs get only the
        PNG, and a DICOM source that lacks what a Segmentation must copy from
        it (for example a Frame of Reference for several frames) gets none.
    """
    if source.format == "nifti":
        return write_nifti_label_map(out / "mask.nii.gz", source, mask), None
    if source.format != "dicom":
        return None, "raster input: the PNG mask is the native format"
    try:
        with warnings.catch_warnings():
            # highdicom warns about source attributes that it copies as they are (such as names).
            warnings.simplefilter("ignore", UserWarning)
            return write_dicom_seg(out / "mask.seg.dcm", source, mask, method), None
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        reason = f"no DICOM Segmentation written: the source does not allow one ({type(error).__name__}: {error})"
        logger.warning("%s: %s", source.path, reason)
        return None, reason
