"""Decoded, resized arrays cached on disk, so epochs never decode PNGs again.

A split is stored as three ``.npy`` files (images uint8 0-255, infection and lung masks uint8
{0, 1}, each (N, S, S)) plus ``meta.json``, in a folder named by a hash of every file's path,
size and modification time and of the preprocessing settings: when either changes, the key
changes and the arrays are rebuilt. The cache is disposable and never authoritative; it is
written to a temporary folder and renamed into place, so a killed build leaves nothing half
written. Files that cannot be decoded, or masks whose size differs from their image, are left
out with a warning that lists them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidseg.data.discovery import Sample
from covidseg.data.image_io import read_mask_gray8, read_xray, resize_image, resize_mask
from covidseg.errors import DataError, MaskEncodingError
from covidseg.progress import Progress, silent

log = logging.getLogger(__name__)

# Bump when the preprocessing code changes what it writes (3: a mask of 0 and 1 stops the command
# instead of being cached as empty).
CACHE_VERSION = 3


@dataclass
class CachedSplit:
    """Preprocessed arrays of a list of samples, aligned with ``samples``."""

    samples: list[Sample]
    images: np.ndarray  # (N, S, S) uint8, 0-255
    infection: np.ndarray  # (N, S, S) uint8, {0, 1}
    lung: np.ndarray  # (N, S, S) uint8, {0, 1}; zeros where has_lung is False
    has_lung: np.ndarray  # (N,) bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.samples)


def default_cache_dir() -> Path:
    """``$COVIDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/covidseg``, else ``~/.cache/covidseg``."""
    if os.environ.get("COVIDSEG_CACHE_DIR"):
        return Path(os.environ["COVIDSEG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "covidseg"


def cache_key(samples: list[Sample], image_size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "image_size": image_size}).encode())
    for s in samples:
        for p in (s.image, s.infection, s.lung):
            if p is None:
                h.update(b"-")
                continue
            try:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{p}|missing".encode())
        h.update(s.id.encode())
    return h.hexdigest()[:24]


def decode_sample(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One sample as the pipeline sees it: the image decoded as ``predict`` decodes it
    (:func:`covidseg.data.image_io.read_xray`) and resized to ``size`` (uint8), the masks
    resized and binarised to {0, 1} (lung None when absent).

    Raises:
        DataError: a file cannot be read, or a mask's size differs from its image's.
    """
    image = read_xray(sample.image)
    infection = read_mask_gray8(sample.infection)
    if infection.shape != image.shape:
        raise DataError(f"{sample.infection}: infection mask is {infection.shape[::-1]}, image is {image.shape[::-1]}")
    lung = None
    if sample.lung is not None:
        lung = read_mask_gray8(sample.lung)
        if lung.shape != image.shape:
            raise DataError(f"{sample.lung}: lung mask is {lung.shape[::-1]}, image is {image.shape[::-1]}")
    return resize_image(image, size), resize_mask(infection, size), None if lung is None else resize_mask(lung, size)


def _build(samples: list[Sample], size: int, progress: Progress, desc: str) -> CachedSplit:
    kept: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    imgs, infs, lungs, has = [], [], [], []
    empty = np.zeros((size, size), np.uint8)
    for sample in progress(samples, desc=desc, total=len(samples)):
        try:
            image, infection, lung = decode_sample(sample, size)
        except MaskEncodingError:
            raise  # the data set's masks, not this X-ray's: one line, not a sample left out
        except DataError as exc:
            skipped.append((str(sample.image), str(exc)))
            continue
        kept.append(sample)
        imgs.append(image)
        infs.append(infection)
        lungs.append(empty if lung is None else lung)
        has.append(lung is not None)
    if skipped:
        log.warning(
            "left out %d unreadable or mismatched sample(s):\n  %s",
            len(skipped),
            "\n  ".join(reason for _, reason in skipped),
        )
    if not kept:
        raise DataError("none of the images could be read; see the warnings above")
    return CachedSplit(kept, np.stack(imgs), np.stack(infs), np.stack(lungs), np.array(has, bool), skipped)


def _save(split: CachedSplit, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        np.save(tmp / "images.npy", split.images)
        np.save(tmp / "infection.npy", split.infection)
        np.save(tmp / "lung.npy", split.lung)
        np.save(tmp / "has_lung.npy", split.has_lung)
        meta = {"ids": [s.id for s in split.samples], "skipped": split.skipped, "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same key first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(samples: list[Sample], folder: Path, size: int) -> CachedSplit | None:
    """The cached split in ``folder``, or ``None`` when it is unreadable or not what this
    version of covidseg writes (it is then decoded again)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = [np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("images", "infection", "lung", "has_lung")]
        ids, skipped = list(meta["ids"]), [tuple(x) for x in meta["skipped"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    by_id = {s.id: s for s in samples}
    n = len(ids)
    expected = [((n, size, size), np.uint8)] * 3 + [((n,), np.bool_)]
    if any(a.shape != shape or a.dtype != dtype for a, (shape, dtype) in zip(arrays, expected, strict=True)):
        return None
    if any(not isinstance(i, str) or i not in by_id for i in ids):
        return None
    split = CachedSplit([by_id[i] for i in ids], *arrays, skipped=skipped)
    split.path = folder
    if split.skipped:
        log.warning(
            "left out %d unreadable or mismatched sample(s) (cached decision):\n  %s",
            len(split.skipped),
            "\n  ".join(r for _, r in split.skipped),
        )
    return split


def load_split(
    samples: list[Sample],
    image_size: int,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    desc: str = "decode",
) -> CachedSplit:
    """Preprocessed arrays for ``samples``, from the cache when valid, else decoded and cached.

    When the cache folder cannot be written (a read-only home, say) the arrays are kept in
    memory for this run only, with a warning.
    """
    progress = progress or silent
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / f"s{image_size}-{cache_key(samples, image_size)}"
    if folder.is_dir():
        cached = _load(samples, folder, image_size)
        if cached is not None:
            log.info("using cached arrays in %s", folder)
            return cached
        shutil.rmtree(folder, ignore_errors=True)
    split = _build(samples, image_size, progress, desc)
    try:
        _save(split, folder)
        split.path = folder
        log.info("cached %d preprocessed samples in %s", len(split), folder)
    except OSError as exc:
        log.warning(
            "could not write the cache in %s (%s); keeping arrays in memory for this run. "
            "Set --cache-dir or COVIDSEG_CACHE_DIR to a writable folder.",
            root,
            exc,
        )
    return split
