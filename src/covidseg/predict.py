"""``covidseg predict``: X-ray files and folders in, masks, overlays and ``predictions.jsonl`` out.

The model work is :class:`covidseg.inference.predictor.Predictor`; this module walks the inputs
and writes the files.
"""

from __future__ import annotations

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

from covidseg.atomic import TMP_PREFIX, remove_leftovers, write_atomic
from covidseg.data.discovery import INFECTION, LUNG
from covidseg.data.image_io import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom, read_xray_colour
from covidseg.errors import CovidsegError, DataError
from covidseg.inference.predictor import Prediction, Predictor
from covidseg.locking import folder_lock, new_folders, remove_if_only_lock
from covidseg.progress import Progress, silent

__all__ = ["Prediction", "Predictor", "list_inputs", "png_bytes", "predict_paths", "prediction_record"]

log = logging.getLogger(__name__)


def list_inputs(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """One file, or the image and DICOM files of a folder (recursively), in sorted order.

    Files under mask folders of the COVID-QU-Ex layout (``infection masks``, ``lung masks``) are
    masks, not X-rays, and files under the output folder ``out`` are predict's own: both are left
    out, and counted in the log. ``out`` may not be the input folder itself.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        if out is not None and Path(out).resolve() == p.resolve():
            raise CovidsegError(
                f"--out {out} is the input folder: its X-rays and the masks written beside them would mix; "
                "choose another folder (one inside it is fine)"
            )
        suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
        every = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        found = sorted(f for f in every if f.suffix.lower() in suffixes or is_dicom(f))
        if len(found) < len(every):
            other = sorted({f.suffix.lower() or "(none)" for f in every} - set(suffixes))
            log.info("left out %d file(s) neither image nor DICOM (%s)", len(every) - len(found), ", ".join(other))
        files = [f for f in found if not _under_mask_folder(f, p)]
        if len(files) < len(found):
            log.info("left out %d mask file(s) under '%s' or '%s' folders", len(found) - len(files), INFECTION, LUNG)
        if out is not None and Path(out).resolve().is_relative_to(p.resolve()):
            mine = [f for f in files if f.resolve().is_relative_to(Path(out).resolve())]
            files = [f for f in files if f not in mine]
            if mine:
                log.info("left out %d file(s) under the output folder %s", len(mine), out)
        if not files:
            raise DataError(f"{p} holds no image or DICOM files ({', '.join(suffixes)}) outside mask folders")
        return files
    raise DataError(f"{p} does not exist")


def _under_mask_folder(f: Path, root: Path) -> bool:
    return any(part.lower() in (INFECTION, LUNG) for part in f.relative_to(root).parts[:-1])


def output_stems(files: list[Path], base: Path) -> dict[Path, str]:
    """A distinct output name per input: its path under ``base`` with ``__`` for folders and ``_``
    for spaces; where two inputs would share one (``a.png`` and ``a.jpg``; ``sub/a.png`` and
    ``sub__a.png``) their suffix is added, then a counter, in the inputs' sorted order."""
    raw = [re.sub(r"\s+", "_", "__".join(f.relative_to(base).with_suffix("").parts)) for f in files]
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


def prediction_record(pred: Prediction, predictor: Predictor, shape: tuple[int, int]) -> dict[str, Any]:
    """What ``predict`` writes per image to ``predictions.jsonl`` and ``serve`` returns as JSON:
    size, model, infected shares (percent), COVID-19 call and, with a lung output, severity; for
    calibrated models the COVID-19 probability and the threshold in calibrated units (and
    ``calibration_stale``: the post-processing settings changed since calibrate, when any); for models
    with an image-level head its uncalibrated probability and the gate it must pass
    (``covid_head_probability``, ``image_gate``); and ``input_check`` (score, verdict, reason;
    None for models that were never calibrated)."""
    record: dict[str, Any] = {
        "width": int(shape[1]),
        "height": int(shape[0]),
        "model": predictor.name,
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
    if "covid" in predictor.targets and pred.peak is not None:
        record["covid_head_probability"] = round(pred.peak, 4)
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
    lung output, the infected share of each lung and the severity grade; shares in percent).
    An image the input check flags keeps its masks; its overlay gets a coloured frame and the
    log a warning.
    Unreadable files, and images above ``max_pixels`` (:data:`covidseg.data.image_io.MAX_PIXELS`
    by default), are reported and skipped; the rest go on. Every file is written under a
    temporary name and renamed into place (``predictions.jsonl`` when all images are done, or
    when the run is interrupted, with the records of the images done), so a killed run leaves
    whole files only; its temporary files are removed by the next run. An earlier run's records in
    ``out_dir`` are kept, but those of X-rays this run predicts again; nothing else in ``out_dir``
    is overwritten (:func:`_free_stems`), and a folder of another model's predictions is refused.
    Files under ``out_dir`` are never taken as inputs.

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
    written: set[str] = set()  # the mask file of every image predicted
    flagged = 0
    with folder_lock(out, "predict"):
        remove_leftovers(out)
        earlier = _read_records(out / "predictions.jsonl")
        _refuse_other_model(out, earlier, predictor.name)
        stems = _free_stems(output_stems(files, base), out, earlier)
        partial = out / f"{TMP_PREFIX}predictions.jsonl"
        try:
            with partial.open("w") as lines:
                for f in (progress or silent)(files, desc="predict", total=len(files)):
                    try:
                        gray, colour = read_xray_colour(f, max_pixels)
                    except DataError as exc:
                        skipped.append((str(f), str(exc)))
                        log.warning("skipped %s", exc)
                        continue
                    record = {"image": str(f), **_write_one(predictor, gray, colour, out, stems[f])}
                    lines.write(json.dumps(record) + "\n")
                    written.add(record["mask"])
                    flagged += (record["input_check"] or {}).get("verdict", "ok") != "ok"
        finally:  # done or interrupted: the records of the images done so far join the earlier ones
            if written:
                _keep_earlier_records(out / "predictions.jsonl", partial, written)
                os.replace(partial, out / "predictions.jsonl")
            else:
                partial.unlink(missing_ok=True)
        if not written and skipped:
            raise CovidsegError(f"none of the {len(files)} input file(s) could be read; see the warnings above")
    return len(written), skipped, flagged


def _keep_earlier_records(previous: Path, partial: Path, written: set[str]) -> None:
    """Put the lines of an earlier run's ``predictions.jsonl`` in ``out`` before this run's, but
    those of images whose files this run wrote again (same mask name): nothing predicted before is
    lost, and every record describes the files beside it. Lines that are not a record are kept."""
    if not previous.is_file():
        return
    kept = []
    for line in previous.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and record.get("mask") in written):
            kept.append(line + "\n")
    if kept:
        partial.write_text("".join(kept) + partial.read_text())


OUTPUTS = ("_mask.png", "_lung.png", "_overlay.png")


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of an earlier run's ``predictions.jsonl`` (lines that are no record are skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _refuse_other_model(out: Path, earlier: list[dict[str, Any]], model: str) -> None:
    others = sorted({str(r.get("model")) for r in earlier if r.get("model") != model})
    if others:
        raise CovidsegError(
            f"--out {out} holds predictions of another model ({', '.join(others)}); choose another folder"
        )


def _free_stems(stems: dict[Path, str], out: Path, earlier: list[dict[str, Any]]) -> dict[Path, str]:
    """``stems`` with a counter added (``name-2``...) wherever an output file of that name is in
    ``out`` and is not an earlier prediction of the same X-ray: another X-ray's (same file name,
    other folder) or a file of the user's. Nothing in ``out`` is overwritten but the outputs of an
    X-ray predicted again."""
    owner = {}  # output file name -> the X-ray it was predicted from
    for r in earlier:
        for key in ("mask", "lung", "overlay"):
            if isinstance(r.get(key), str) and isinstance(r.get("image"), str):
                owner[r[key]] = Path(r["image"]).resolve()
    used = set(stems.values())

    def free(name: str, image: Path) -> bool:
        return all(not (out / f"{name}{end}").exists() or owner.get(f"{name}{end}") == image for end in OUTPUTS)

    result = {}
    for f, stem in stems.items():
        candidate, k = stem, 2
        while not free(candidate, f.resolve()) or (candidate != stem and candidate in used):
            candidate, k = f"{stem}-{k}", k + 1
        if candidate != stem:
            log.info("%s: written as %s_* (%s_* in %s are another image's or yours)", f, candidate, stem, out)
            used.add(candidate)
        result[f] = candidate
    return result


def _write_one(predictor: Predictor, gray: np.ndarray, colour: float, out: Path, stem: str) -> dict[str, Any]:
    """Predict one X-ray, write its mask, lung and overlay PNGs; its record with their names."""
    from covidseg.figures import overlay

    pred = predictor.predict(gray, colour)
    record = prediction_record(pred, predictor, gray.shape)
    before = {end for end in OUTPUTS if (out / f"{stem}{end}").exists()}  # this X-ray's, predicted before
    try:
        record["mask"] = _save_png(out / f"{stem}_mask.png", pred.mask * 255)
        rgb = overlay(gray, pred.mask)
        if pred.lung is not None and predictor.targets[0] != "lung":
            record["lung"] = _save_png(out / f"{stem}_lung.png", pred.lung * 255)
            rgb = outline(rgb, pred.lung)
        check = record["input_check"]
        if check is not None and check["verdict"] != "ok":
            log.warning("%s: input check says %s: %s", stem, check["verdict"], check["reason"])
            rgb = frame(rgb, FLAG_RGB[check["verdict"]])
        record["overlay"] = _save_png(out / f"{stem}_overlay.png", (rgb * 255).astype(np.uint8))
    except BaseException:  # an image is written whole, with its record, or not at all
        for end in set(OUTPUTS) - before:
            (out / f"{stem}{end}").unlink(missing_ok=True)
        raise
    return record


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


def _save_png(path: Path, array: np.ndarray) -> str:
    write_atomic(path, png_bytes(array))
    return path.name


def outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[float, float, float] = (0.2, 0.6, 1.0)) -> np.ndarray:
    """Draw the border of ``mask`` into an RGB float image."""
    from scipy import ndimage

    m = mask.astype(bool)
    width = max(1, round(max(mask.shape) / 400))
    edge = m & ~ndimage.binary_erosion(m, iterations=width)
    out = rgb.copy()
    out[edge] = color
    return out
