"""A compact copy of a COVID-QU-Ex folder, small enough to carry to a remote GPU machine.

The copy keeps the layout, the file stems and the split and group of every X-ray, so
``covidseg train --data COPY`` and ``covidseg evaluate`` read it unchanged. X-rays are resized
once to ``size`` x ``size`` (the reference bilinear resize; a no-op for COVID-QU-Ex, which is
256 x 256 already) and stored as gray JPEG; masks are resized with nearest neighbour,
binarised at > 127 and stored as 1-bit PNG, so they are lossless. The JPEG quality is the only
loss: the copy's ``compact.json`` records it with the mean absolute pixel error it caused.

Train and Val of COVID-QU-Ex (4,660 X-rays) take 54.4 MiB at quality 90, against 136 MiB
for the PNG originals.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from covidseg.atomic import folder_in_place
from covidseg.data.cache import decode_sample
from covidseg.data.discovery import DATASET_FOLDER, IMAGES, INFECTION, LUNG, Sample, discover
from covidseg.errors import DataError
from covidseg.progress import Progress, silent

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass
class CompactReport:
    """What a compact copy holds: counts, bytes, and the error the JPEG step caused."""

    root: str
    source: str
    splits: list[str]
    size: int
    quality: int
    images: int = 0
    bytes: int = 0
    mean_abs_error: float = 0.0
    max_abs_error: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[list[str]] = field(default_factory=list)

    @property
    def mib(self) -> float:
        return self.bytes / MIB


def _jpeg(gray8: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray8).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _png1(mask01: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask01.astype(bool)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_compact(
    source: str | Path,
    out_dir: str | Path,
    splits: tuple[str, ...] = ("Train", "Val"),
    size: int = 256,
    quality: int = 90,
    progress: Progress | None = None,
) -> CompactReport:
    """Write a compact copy of ``splits`` of ``source`` under ``out_dir/Infection Segmentation Data``.

    ``out_dir`` must not exist yet or be empty, and must not lie inside ``source``. Images that
    cannot be read, or whose masks do not match them in size, are left out and listed in the
    report, as training would leave them out. The copy appears whole or not at all: it is written
    under a hidden name beside ``out_dir`` and takes its name when complete.

    Raises:
        DataError: bad folders, a size or quality out of range, or nothing readable.
    """
    if not 32 <= size <= 4096:
        raise DataError(f"size must be 32-4096 pixels, got {size}")
    if not 1 <= quality <= 95:
        raise DataError(f"JPEG quality must be 1-95, got {quality}")
    progress = progress or silent
    found = discover(source, splits)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty folder; choose a new output folder")
    src = found.root.resolve()
    if out == src or src in out.parents:
        raise DataError(f"{out} lies inside the source {src}; write the copy elsewhere")
    report = CompactReport(str(out / DATASET_FOLDER), str(src), [x for x in splits if x in found.splits], size, quality)
    # Written under a hidden name and renamed when complete, so that an interrupted copy never
    # leaves a folder that trains as if it were the whole data set.
    with folder_in_place(out) as tmp:
        _write_samples(found.samples, tmp / DATASET_FOLDER, report, progress)
        if not report.images:
            raise DataError(f"none of the {len(found.samples)} images under {src} could be read")
        report.counts = discover(tmp, splits).counts()
        (tmp / "compact.json").write_text(json.dumps(asdict(report), indent=2))
        if hasattr(os, "sync"):
            os.sync()  # every file on the disk before the copy takes its name
    if report.skipped:
        log.warning("left out %d unreadable or mismatched image(s); see %s", len(report.skipped), out / "compact.json")
    return report


def _write_samples(samples: list[Sample], root: Path, report: CompactReport, progress: Progress) -> None:
    """Write each sample's X-ray (JPEG) and masks (1-bit PNG) under ``root``, counting into ``report``."""
    err_sum, err_n = 0.0, 0
    for s in progress(samples, desc="compact", total=len(samples)):
        try:
            image, infection, lung = decode_sample(s, report.size)
        except DataError as exc:
            report.skipped.append([str(s.image), str(exc)])
            continue
        files = {
            IMAGES: (s.image.stem + ".jpg", _jpeg(image, report.quality)),
            INFECTION: (s.image.stem + ".png", _png1(infection)),
        }
        if lung is not None:
            files[LUNG] = (s.image.stem + ".png", _png1(lung))
        for kind, (name, data) in files.items():
            folder = root / s.split / s.group / kind
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            report.bytes += len(data)
        back = np.asarray(Image.open(io.BytesIO(files[IMAGES][1])).convert("L"), dtype=np.int16)
        diff = np.abs(back - image.astype(np.int16))
        err_sum += float(diff.sum())
        err_n += diff.size
        report.max_abs_error = max(report.max_abs_error, int(diff.max()))
        report.images += 1
    report.mean_abs_error = round(err_sum / err_n, 3) if err_n else 0.0
