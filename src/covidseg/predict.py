"""``covidseg predict``: X-ray files and folders in, masks, overlays and ``predictions.jsonl`` out.

The model work is :class:`covidseg.inference.predictor.Predictor`; this module walks the inputs
and writes the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covidseg.atomic import remove_leftovers, write_temporary
from covidseg.data.discovery import INFECTION, LUNG
from covidseg.data.image_io import DICOM_SUFFIXES, PREDICT_SUFFIXES, is_dicom, read_xray_colour
from covidseg.errors import CovidsegError, DataError
from covidseg.inference.predictor import Prediction, Predictor
from covidseg.locking import folder_lock, new_folders, remove_if_only_lock
from covidseg.prediction_folder import (
    RUNNING,
    earlier_records,
    free_stems,
    is_output_folder,
    merge,
    recover,
    refuse_other_model,
)
from covidseg.progress import Progress, silent

__all__ = ["Prediction", "Predictor", "list_inputs", "png_bytes", "predict_paths", "prediction_record"]

log = logging.getLogger(__name__)


def list_inputs(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """One file, or the image and DICOM files of a folder (recursively), in sorted order.

    Left out, and counted in the log: files under mask folders of the COVID-QU-Ex layout
    (``infection masks``, ``lung masks``), hidden files, files of other kinds, and every folder of
    covidseg's own outputs (``out`` and any earlier one: a folder with ``predictions.jsonl`` or a
    lock). ``out`` may not be the input folder itself, nor a single file's own folder.
    """
    p = Path(path)
    if p.is_file():
        if out is not None and Path(out).resolve() == p.parent.resolve():
            raise CovidsegError(
                f"--out {out} is the X-ray's own folder: masks written beside X-rays would later be read as "
                "X-rays; choose another folder"
            )
        return [p]
    if not p.is_dir():
        raise DataError(f"{p} does not exist")
    if out is not None and Path(out).resolve() == p.resolve():
        raise CovidsegError(
            f"--out {out} is the input folder: its X-rays and the masks written beside them would mix; "
            "choose another folder (one inside it is fine)"
        )
    if is_output_folder(p):
        raise CovidsegError(f"{p} holds covidseg's own outputs (masks, overlays), not X-rays; give the X-rays' folder")
    every, hidden, outputs = _walk(p, None if out is None else Path(out).resolve())
    suffixes = PREDICT_SUFFIXES + DICOM_SUFFIXES
    found = sorted(f for f in every if f.suffix.lower() in suffixes or is_dicom(f))
    files = [f for f in found if not _under_mask_folder(f, p)]
    kinds = ", ".join(sorted({f.suffix.lower() or "(none)" for f in every} - set(suffixes)))
    shown = ", ".join(str(d) for d in outputs[:3]) + (", ..." if len(outputs) > 3 else "")
    left = {
        f"mask file(s) under '{INFECTION}' or '{LUNG}' folders": len(found) - len(files),
        "hidden file(s) and linked folder(s)": hidden,
        f"file(s) neither image nor DICOM ({kinds})": len(every) - len(found),
        f"folder(s) of covidseg's own outputs ({shown})": len(outputs),
    }
    for what, n in left.items():
        if n:
            log.info("left out %d %s", n, what)
    if not files:
        raise DataError(f"{p} holds no image or DICOM files ({', '.join(suffixes)}) outside mask folders")
    return files


def _walk(root: Path, out: Path | None) -> tuple[list[Path], int, list[Path]]:
    """(every visible file, how many hidden files and linked folders, the output folders not
    entered) under ``root``; linked folders are not followed (os.walk's default)."""
    files: list[Path] = []
    hidden = 0
    outputs: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            d = here / name
            if d.is_symlink():
                hidden += 1
            elif (out is not None and d.resolve() == out) or is_output_folder(d):
                dirnames.remove(name)
                outputs.append(d)
        files += [here / n for n in filenames if not n.startswith(".")]
        hidden += sum(n.startswith(".") for n in filenames)
    return files, hidden, outputs


def _under_mask_folder(f: Path, root: Path) -> bool:
    return any(part.lower() in (INFECTION, LUNG) for part in f.relative_to(root).parts[:-1])


def output_stems(files: list[Path], base: Path) -> dict[Path, str]:
    """A distinct output name per input: its path under ``base`` with ``__`` for folders and ``_``
    for spaces; where two inputs would share one (``a.png`` and ``a.jpg``; ``sub/a.png`` and
    ``sub__a.png``) their suffix is added, then a counter, in the inputs' sorted order. A name
    longer than :data:`MAX_STEM_BYTES` is cut and ends in a hash of the whole (file systems allow
    255 bytes a name, the temporary name and the suffix included)."""
    raw = [_short(re.sub(r"\s+", "_", "__".join(f.relative_to(base).with_suffix("").parts))) for f in files]
    counts = Counter(raw)
    out: dict[Path, str] = {}
    used: set[str] = set()
    for f, name in zip(files, raw):
        if counts[name] > 1:
            name = f"{name}_{f.suffix.lstrip('.').lower()}"
        candidate, k = name, 2
        while candidate in used:
            candidate, k = f"{name}-{k}", k + 1
        used.add(candidate)
        out[f] = candidate
    return out


MAX_STEM_BYTES = 160


def _short(name: str) -> str:
    data = os.fsencode(name)  # as the file system has it (a name that is not UTF-8 included)
    if len(data) <= MAX_STEM_BYTES:
        return name
    return f"{os.fsdecode(data[: MAX_STEM_BYTES - 13])}-{hashlib.sha256(data).hexdigest()[:12]}"


def prediction_record(pred: Prediction, predictor: Predictor, shape: tuple[int, int]) -> dict[str, Any]:
    """What ``predict`` writes per image to ``predictions.jsonl`` and ``serve`` returns as JSON:
    size, model (its folder's name and its weights file's SHA-256), infected shares (percent),
    COVID-19 call and, with a lung output, severity; for calibrated models the COVID-19
    probability and the threshold in calibrated units (and ``calibration_stale``: the
    post-processing settings changed since calibrate, when any); for models with an image-level
    head its uncalibrated probability and the gate it must pass (``covid_head_probability``,
    ``image_gate``); and ``input_check`` (score, verdict, reason; None for models that were never
    calibrated)."""
    record: dict[str, Any] = {
        "width": int(shape[1]),
        "height": int(shape[0]),
        "model": predictor.name,
        "model_sha256": predictor.sha256,
        "target": predictor.targets[0],
        "image_infected_share_pct": pred.image_infected_share_pct,
        "infected_pixels": int(pred.mask.sum()),
        "covid_call": pred.covid_call,
        "covid_cutoff_pct": round(100.0 * predictor.post.detect_fraction, 4),
        "covid_call_rule": predictor.post.call_rule(predictor.targets),
        "threshold": predictor.threshold,
        "engine": predictor.engine,
    }
    if pred.lung is not None and predictor.targets[0] != "lung":
        record.update(pred.severity or {})
    if "covid" in predictor.targets:
        record["covid_head_probability"] = None if pred.peak is None else round(pred.peak, 4)
        record["image_gate"] = predictor.post.image_gate
    if predictor.calibration is not None and predictor.targets[0] == "infection":
        record["covid_probability"] = None if pred.covid_probability is None else round(pred.covid_probability, 4)
        record["threshold_calibrated"] = round(predictor.calibration.threshold(predictor.threshold), 4)
        if predictor.calibration_stale:
            record["calibration_stale"] = predictor.calibration_stale
    record["input_check"] = pred.input_check
    return record


def predict_paths(
    predictor: Predictor,
    inputs: str | Path,
    out_dir: str | Path,
    progress: Progress | None = None,
    max_pixels: int | None = None,
) -> tuple[int, list[tuple[str, str]], int]:
    """Predict every image under ``inputs`` into ``out_dir``.

    Per image ``<stem>_mask.png`` (0/255, original size), ``<stem>_lung.png`` with a lung output,
    ``<stem>_overlay.png`` (infection red, lung outline), and one line in ``predictions.jsonl``
    (:func:`prediction_record`: the infected share of the image, the COVID-19 call and, with a
    lung output, the infected share of each lung and the severity grade; shares in percent; the
    X-ray's path as given, ``image``, and absolute, ``image_path``).
    An image the input check flags keeps its masks; its overlay gets a coloured frame and the
    log a warning.
    Unreadable files, and images above ``max_pixels`` (:data:`covidseg.data.image_io.MAX_PIXELS`
    by default), are reported and skipped; the rest go on. Every file is written under a
    temporary name and renamed into place (``predictions.jsonl`` when all images are done, or
    when the run is interrupted, with the records of the images done), so a killed run leaves
    whole files only; its temporary files are removed by the next run. An earlier run's records in
    ``out_dir`` are kept, but those of X-rays this run predicts again; nothing else in ``out_dir``
    is overwritten (:func:`covidseg.prediction_folder.free_stems`), and a folder of another model's
    predictions is refused. Files under ``out_dir`` or any earlier output folder are never inputs.

    Returns:
        (number predicted, [(file, reason) skipped], number the input check flagged).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CovidsegError(f"--out {out} is a file, not a folder")
    files = list_inputs(inputs, out)
    base = Path(inputs) if Path(inputs).is_dir() else Path(inputs).parent
    new = new_folders(out)
    try:
        return _predict_into(predictor, files, base, out, progress, max_pixels)
    except BaseException:
        remove_if_only_lock(new, "predict")  # a run that wrote nothing leaves no folders behind
        raise


def _predict_into(
    predictor: Predictor, files: list[Path], base: Path, out: Path, progress: Progress | None, max_pixels: int | None
) -> tuple[int, list[tuple[str, str]], int]:
    skipped: list[tuple[str, str]] = []
    done: list[bytes] = []  # this run's records
    written: set[str] = set()  # the mask file of every image predicted
    flagged = 0
    with folder_lock(out, "predict"):
        recover(out)
        remove_leftovers(out)
        earlier = earlier_records(out)
        refuse_other_model(out, earlier, predictor.name, predictor.sha256)
        stems = free_stems(output_stems(files, base), out, earlier)
        try:
            with (out / RUNNING).open("wb") as running:
                for f in (progress or silent)(files, desc="predict", total=len(files)):
                    try:
                        gray, colour = read_xray_colour(f, max_pixels)
                    except DataError as exc:
                        skipped.append((str(f), str(exc)))
                        log.warning("skipped %s", exc)
                        continue
                    record = {"image": str(f), "image_path": str(f.resolve())}
                    record.update(_write_one(predictor, gray, colour, out, stems[f]))
                    done.append(json.dumps(record).encode())
                    running.write(done[-1] + b"\n")
                    running.flush()  # a killed run's records are taken over by the next (recover)
                    written.add(record["mask"])
                    flagged += (record["input_check"] or {}).get("verdict", "ok") != "ok"
        finally:  # done or interrupted: the records of the images done so far join the earlier ones
            if done:
                merge(out, done, written)
            (out / RUNNING).unlink(missing_ok=True)
        if not written and skipped:
            raise CovidsegError(f"none of the {len(files)} input file(s) could be read; see the warnings above")
    return len(written), skipped, flagged


def _write_one(predictor: Predictor, gray: np.ndarray, colour: float, out: Path, stem: str) -> dict[str, Any]:
    """Predict one X-ray and write its mask, lung and overlay PNGs (all drawn first, then each
    written through a rename); its record with their names."""
    from covidseg.figures import overlay

    pred = predictor.predict(gray, colour)
    record = prediction_record(pred, predictor, gray.shape)
    rgb = overlay(gray, pred.mask)
    pictures = {"mask": pred.mask * 255}
    if pred.lung is not None and predictor.targets[0] != "lung":
        pictures["lung"] = pred.lung * 255
        rgb = outline(rgb, pred.lung)
    check = record["input_check"]
    if check is not None and check["verdict"] != "ok":
        log.warning("%s: input check says %s: %s", stem, check["verdict"], check["reason"])
        rgb = frame(rgb, FLAG_RGB[check["verdict"]])
    pictures["overlay"] = (rgb * 255).astype(np.uint8)
    names = {key: f"{stem}_{key}.png" for key in pictures}
    temporary: list[Path] = []
    try:  # every file under its temporary name first, then the renames: an X-ray whole or not at all
        for key, array in pictures.items():
            temporary.append(write_temporary(out / names[key], png_bytes(array)))
        for tmp, name in zip(temporary, names.values(), strict=True):
            os.replace(tmp, out / name)
    except BaseException:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        raise
    return {**record, **names}


FLAG_RGB = {"unusual": (1.0, 0.65, 0.0), "not_a_frontal_cxr": (1.0, 0.0, 1.0)}


def frame(rgb: np.ndarray, color: tuple[float, float, float]) -> np.ndarray:
    """A coloured border (2% of the longer side) round an RGB float image: the overlay of an
    image the input check flagged (orange: unusual; magenta: not a frontal chest X-ray)."""
    out = rgb.copy()
    w = max(2, round(0.02 * max(rgb.shape[:2])))
    out[:w], out[-w:], out[:, :w], out[:, -w:] = color, color, color, color
    return out


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[float, float, float] = (0.2, 0.6, 1.0)) -> np.ndarray:
    """Draw the border of ``mask`` into an RGB float image."""
    from scipy import ndimage

    m = mask.astype(bool)
    width = max(1, round(max(mask.shape) / 400))
    edge = m & ~ndimage.binary_erosion(m, iterations=width)
    out = rgb.copy()
    out[edge] = color
    return out
