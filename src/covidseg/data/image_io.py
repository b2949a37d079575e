"""Reading X-ray and mask files and the reference preprocessing.

The reference system: image to gray, resize to SxS (bilinear), scale to [0, 1]; mask resized with
nearest neighbour and binarised at > 127. This module is the one place where masks {0, 255}
become {0, 1}.

Any PNG/JPEG/TIFF mode Pillow reads is accepted: 1-bit, 8-bit gray, 16-bit gray (``I;16``),
32-bit integer or float gray, RGB, RGBA, LA and palette images. Colour images are converted
to gray with Pillow's ITU-R 601-2 luma transform; alpha is ignored. High bit-depth images
are scaled to 8 bits by their type's range (16-bit: /65535), so that "> 127" and "/ 255"
mean the same thing for every input.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from covidseg.errors import DataError, MaskEncodingError

# The image files of a data set (discovery) and of the built-in examples.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Pillow's modes of gray with more than 8 bits (16-bit integer, 32-bit integer, float).
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# The image files ``predict DIR`` looks for; ``predict FILE`` takes any format Pillow reads.
PREDICT_SUFFIXES = IMAGE_SUFFIXES + (".webp", ".jp2", ".j2k", ".pgm", ".gif")
# The largest image ``read_xray`` decodes unless told otherwise (``predict``/``serve --max-pixels``):
# 50 megapixels is over twice the largest detector in use (43 x 43 cm at 0.1 mm, 18.5 MP), and
# its header is checked before any pixel is decoded, so a decompression bomb costs nothing.
MAX_PIXELS = 50_000_000
# Pillow's own decompression-bomb check is replaced by ``check_pixels`` on every read below, so
# that ``--max-pixels`` is the one limit (Pillow's would refuse above 179 MP whatever the flag).
Image.MAX_IMAGE_PIXELS = None
DICOM_SUFFIXES = (".dcm", ".dicom")


def read_gray8(path: str | Path) -> np.ndarray:
    """Decode an image file to an 8-bit gray array of its original size.

    Raises:
        DataError: the file is missing, truncated, corrupt or not an image.
    """
    try:
        with Image.open(path) as img:
            check_pixels(path, img.width, img.height, 1, None)
            img.load()
            return to_gray8(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file at its own size as bool: pixels > 127 (of the 8-bit gray image) are set."""
    return read_mask_gray8(path) > 127


def read_mask_gray8(path: str | Path) -> np.ndarray:
    """A mask file as 8-bit gray (:func:`read_gray8`), refused when it marks pixels that "> 127"
    would not see: values above 0 on more than a few stray pixels but none above half the range
    of the file's type (a 0/1 mask, one of label numbers, a 16-bit mask of 0 and 255), which
    would otherwise count as an empty mask without a word.

    Raises:
        DataError: as :func:`read_gray8`; MaskEncodingError: such a mask.
    """
    gray = read_gray8(path)
    if gray.max(initial=0) > 127:
        return gray
    stored = gray
    with Image.open(path) as img:  # the values as stored, where 8 bits are a scaled copy
        if img.mode.startswith(("I", "F")):
            stored = np.asarray(img)
    if np.count_nonzero(stored) >= 16:
        raise MaskEncodingError(
            f"{path}: a mask with values 0 to {stored.max():g} ({np.count_nonzero(stored)} pixels above 0) "
            "but none above half its type's range, which masks need (> 127 of 255): store it as 8-bit 0 and 255"
        )
    return gray


def to_gray8(img: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any mode to an (H, W) uint8 gray array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 32-bit integer gray: Pillow opens 16-bit PNGs this way too, so scale by the used range.
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.rint(arr / scale * 255.0), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 1.0:
            arr = arr / 255.0
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB") if img.mode != "LA" else img.convert("L")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def resize_image(gray8: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an 8-bit gray image to (size, size), still uint8."""
    if gray8.shape == (size, size):
        return gray8
    return np.asarray(Image.fromarray(gray8).resize((size, size), Image.BILINEAR))


def resize_mask(gray8: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a mask to (size, size), binarised at > 127 to {0, 1} uint8."""
    if gray8.shape != (size, size):
        gray8 = np.asarray(Image.fromarray(gray8).resize((size, size), Image.NEAREST))
    return (gray8 > 127).astype(np.uint8)


def to_unit(gray8: np.ndarray) -> np.ndarray:
    """Scale an 8-bit image to float32 in [0, 1]."""
    return gray8.astype(np.float32) / 255.0


def preprocess_image(gray8: np.ndarray, size: int) -> np.ndarray:
    """The reference image preprocessing: resize to SxS (bilinear), then scale to [0, 1]."""
    return to_unit(resize_image(gray8, size))


def is_dicom(path: str | Path) -> bool:
    """A DICOM file by suffix or by the ``DICM`` marker after the 128-byte preamble."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def stretch_to_gray8(arr: np.ndarray) -> np.ndarray:
    """Linear map of an array's own minimum..maximum to 0..255 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((arr - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def check_pixels(path: str | Path, width: int, height: int, frames: int, max_pixels: int | None) -> None:
    """Refuse an image whose header announces more than ``max_pixels`` (None: the default)."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width * height * max(1, frames) > limit:
        raise DataError(
            f"{path}: {width} x {height} pixels{f' x {frames} frames' if frames > 1 else ''} is above the limit "
            f"of {limit:,} pixels (raise it with --max-pixels if the image is genuine)"
        )


def read_dicom_gray8(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode a DICOM X-ray to 8-bit gray as a viewer would show it.

    The stored values go through the modality LUT (Rescale Slope/Intercept) and the VOI LUT or
    the first Window Center/Width when the file has them; MONOCHROME1 (white = low values) is
    inverted so that bone is bright as in the training data; the result is stretched to 0-255.
    Colour DICOMs are converted to gray; a multi-frame file uses its first frame.

    Raises:
        DataError: not DICOM, no pixel data, or a compression without an installed decoder.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from None
    try:
        ds = pydicom.dcmread(str(path))
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1) * int(getattr(ds, "SamplesPerPixel", 1) or 1)
        check_pixels(path, int(ds.Columns), int(ds.Rows), frames, max_pixels)
        arr = ds.pixel_array
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except Exception as exc:  # pydicom raises many types for bad or unsupported files
        why = re.sub(r"\s*Use force=True[^.]*\.?", "", str(exc))[:200]  # pydicom's advice is for its callers
        raise DataError(f"{path}: not a readable DICOM image ({type(exc).__name__}: {why})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames > 1:
        arr = arr[0]
    if arr.ndim == 3:  # colour: samples last
        rgb = stretch_to_gray8(arr) if arr.dtype != np.uint8 else arr
        return np.asarray(Image.fromarray(rgb[..., :3].astype(np.uint8)).convert("L"))
    try:
        arr = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            arr = apply_voi_lut(arr, ds, index=0)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise DataError(f"{path}: the DICOM's rescale or window is invalid ({str(exc)[:200]})") from None
    gray = stretch_to_gray8(arr)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray


def read_xray(path: str | Path, max_pixels: int | None = None, upright: bool = False) -> np.ndarray:
    """Any X-ray file, as 8-bit gray of its original size.

    PNG, JPEG, TIFF, BMP and the other formats Pillow reads; 16-bit and 32-bit gray images are
    stretched from their own minimum to maximum (X-ray detectors rarely fill the 16-bit range, so
    scaling by 65535 would give a near-black image); DICOM through :func:`read_dicom_gray8`. The
    header's size is checked against ``max_pixels`` (default :data:`MAX_PIXELS`) before anything
    is decoded. ``upright``: turned by the file's EXIF orientation, as viewers show it (what
    ``predict`` and ``serve`` read); a data set's X-rays are read as stored, as their masks are,
    so that each pair stays aligned.
    """
    return read_xray_colour(path, max_pixels, upright)[0]


def read_xray_colour(path: str | Path, max_pixels: int | None = None, upright: bool = True) -> tuple[np.ndarray, float]:
    """:func:`read_xray` (upright by default: a user's file) and the file's :func:`colourfulness`
    (0 for gray files and DICOM)."""
    if is_dicom(path):
        return read_dicom_gray8(path, max_pixels), 0.0
    try:
        with Image.open(path) as img:
            check_pixels(path, img.width, img.height, 1, max_pixels)
            img.load()
            if upright:
                ImageOps.exif_transpose(img, in_place=True)
            if img.mode in WIDE_GRAY_MODES:
                return stretch_to_gray8(np.asarray(img)), 0.0
            return to_gray8(img), colourfulness(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def colourfulness(img: Image.Image) -> float:
    """How far an image is from a gray film: the colour left once each of R, G and B is fitted as
    a straight function of brightness (so a gray film, also one tinted sepia or saved as colour
    JPEG, scores about 0), as the mean spread of the three per pixel over 255, on a copy at most
    256 pixels a side. Seen: 0.002-0.008 for a tinted X-ray, 0.06 for one with red annotation
    lines, 0.05-0.2 for colour photographs and fundus images, 0.4 for a colour wheel."""
    if img.mode in ("1", "L", "LA", *WIDE_GRAY_MODES):
        return 0.0
    small = img.convert("RGB")
    small.thumbnail((256, 256))
    rgb = np.asarray(small, dtype=np.float64).reshape(-1, 3)
    fit = np.stack([rgb.mean(axis=1), np.ones(len(rgb))], axis=1)
    left = rgb - fit @ np.linalg.lstsq(fit, rgb, rcond=None)[0]
    return float((left.max(axis=1) - left.min(axis=1)).mean() / 255.0)
