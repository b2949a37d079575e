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

from pathlib import Path

import numpy as np
from PIL import Image

from covidseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_gray8(path: str | Path) -> np.ndarray:
    """Decode an image file to an 8-bit gray array of its original size.

    Raises:
        DataError: the file is missing, truncated, corrupt or not an image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_gray8(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


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
