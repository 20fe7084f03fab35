"""Reading images and segmentation masks from dataset files.

Every reader returns arrays in the image's own pixel frame: images as
H x W x 3 uint8 RGB, masks as H x W bool. A file that is missing or does not
decode raises :class:`~mdskit.errors.DataError` with the path in the message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

_LOSSY_FORMATS = {"JPEG", "MPO", "WEBP"}


def _open_decoded(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, or raise DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} not found; restore it from the dataset's public release "
                        f"or remove the case from the folder.")
    try:
        image = Image.open(path)
        # PIL decodes lazily, so a truncated file only fails on load().
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"image file {path} could not be decoded ({type(error).__name__}: {error}); "
                        f"replace it with an intact copy from the dataset's public release.") from error
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16-bit or floating-point channel array to uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        top = 1.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(array) / top * 255.0, 0, 255).astype(np.uint8)
    # Integer images wider than 8 bits: PIL reads 16-bit PNGs as int32 ("I").
    top = 255 if int(array.max(initial=0)) <= 255 else 65535
    return (np.clip(array, 0, top).astype(np.float64) / top * 255.0 + 0.5).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array.

    Greyscale images are repeated over the three channels, 16-bit images are
    scaled to 8 bits, and an alpha channel is dropped.

    Raises:
        DataError: The file is missing or does not decode.
    """
    image = _open_decoded(path)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_mask(path: str | Path, threshold: int = 128) -> np.ndarray:
    """Read a segmentation mask file as an H x W bool array.

    A pixel is foreground when its value, or for colour masks its largest
    channel value, is at least ``threshold`` on the 0-255 scale. JPEG masks
    need the threshold because compression leaves values near 0 and 255. A
    losslessly stored mask whose only values are 0 and 1 is read as a label
    map, so that 1 is foreground.

    Raises:
        DataError: The file is missing or does not decode.
    """
    image = _open_decoded(path)
    if image.mode == "1":
        return np.asarray(image, dtype=bool).copy()
    if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "HSV", "LAB"):
        image = image.convert("RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        values = values.max(axis=2)
    is_lossy = image.format in _LOSSY_FORMATS
    if not is_lossy and np.issubdtype(values.dtype, np.integer) and int(values.max(initial=0)) == 1:
        return values == 1
    return _to_uint8(values) >= threshold


def check_mask_size(image: np.ndarray, mask: np.ndarray, path: str | Path) -> None:
    """Raise DataError when ``mask`` (read from ``path``) and ``image`` differ in size."""
    image_size = tuple(int(n) for n in image.shape[:2])
    mask_size = tuple(int(n) for n in mask.shape[:2])
    if image_size != mask_size:
        raise DataError(
            f"mask {path} is {mask_size[0]}x{mask_size[1]} pixels (height x width) but its image is "
            f"{image_size[0]}x{image_size[1]}; the mask must have the size of its image, so re-export "
            f"the mask or restore both files from the public release.")
