"""``covidseg calibrate RUN``: fit the input check on Train and the calibrations on Val.

Reads the run's model with its tuned post-processing (run ``covidseg tune`` first: the masks are
the tuned ones and do not change) and writes into the run folder:

- ``input_check.npz`` and the ``input_check`` settings: feature statistics and lung ranges from
  Train, the cut-offs from Val (:mod:`covidseg.inference.input_check`);
- ``calibration.json``: Platt scaling of the infection pixels inside the predicted lungs and the
  image-level COVID-19 probability, fitted on Val (:mod:`covidseg.inference.calibration`), with
  the record: expected calibration error (ECE) before and after, in-sample and **cross-fitted**
  (two group-stratified halves of Val: fit on one, measure on the other, both ways), the Val
  share the input check flags (in-sample and cross-fitted) and the reliability tables;
- ``plots/reliability.png``: reliability diagrams of pixels and images.

``covidseg export`` copies both files into the bundle; every consumer of the run or bundle then
applies them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.atomic import write_atomic
from covidseg.errors import CovidsegError
from covidseg.evaluation import SYNTHETIC_NOTE, open_split
from covidseg.inference.calibration import (
    FILENAME,
    Calibration,
    LogitHistogram,
    fit_logistic,
    fit_platt,
    image_features,
    pixel_reliability,
    reliability,
    sigmoid,
    sum_histograms,
)
from covidseg.inference.input_check import FILENAME as CHECK_FILE
from covidseg.inference.input_check import InputCheck
from covidseg.inference.predictor import Predictor, open_run
from covidseg.progress import Progress, silent
from covidseg.scoring import load_truth, network_input
from covidseg.tune import halves

log = logging.getLogger(__name__)


@dataclass
class ValPass:
    """What the calibrations need from each Val image."""

    hists: list[LogitHistogram]  # infection logits inside the predicted lungs, with the truth
    share: np.ndarray  # infected share of the image after post-processing
    peak: np.ndarray  # highest infection probability inside the predicted lungs
    covid: np.ndarray  # the image is from the COVID-19 group
    features: np.ndarray | None  # (N, D) pooled encoder features
    figures: list[dict[str, float] | None]  # lung plausibility figures
    groups: np.ndarray


def _batches(predictor: Predictor, images: np.ndarray, batch_size: int, progress: Progress | None, desc: str):
    starts = range(0, len(images), batch_size)
    for start in (progress or silent)(starts, desc=desc, total=len(starts)):
        x = network_input(images[start : start + batch_size])
        probs, feats = predictor.run(x)
        yield start, probs, feats, x[:, 0]


def train_pass(predictor: Predictor, ds: Any, batch_size: int, progress: Progress | None) -> InputCheck | None:
    """The input check's Train statistics: features and lung ranges."""
    feats, figures = [], []
    for _, probs, f, x in _batches(predictor, ds.split.images, batch_size, progress, "calibrate: Train"):
        if f is None:
            return None
        feats.append(f)
        figures += [predictor.lung_figures(p, image) for p, image in zip(probs, x)]
    check = InputCheck.fit(np.concatenate(feats))
    if figures and figures[0] is not None:
        check.set_lung_ranges(figures)
    return check


def val_pass(predictor: Predictor, ds: Any, batch_size: int, progress: Progress | None) -> ValPass:
    """One pass over Val at each X-ray's own size, as ``predict`` sees it (uncalibrated)."""
    truth = load_truth(ds, "native", progress)
    hists, share, peak, feats, figures = [], [], [], [], []
    for start, probs, f, x in _batches(predictor, ds.split.images, batch_size, progress, "calibrate: Val"):
        for j, p in enumerate(probs):
            k = start + j
            pred = predictor.from_probabilities(p, truth.shape(k))
            region = pred.lung.astype(bool) if pred.lung is not None else np.ones(truth.shape(k), bool)
            hists.append(LogitHistogram.of(pred.probability[region], truth.infection[k][region]))
            share.append(pred.infected_fraction)
            peak.append(pred.peak)
            figures.append(predictor.lung_figures(p, x[j]))
        if f is not None:
            feats.append(f)
    groups = np.asarray([s.group for s in ds.split.samples])
    return ValPass(
        hists, np.asarray(share), np.asarray(peak), groups == "COVID-19",
        np.concatenate(feats) if feats else None, figures, groups,
    )  # fmt: skip


def _image_scores(p: np.ndarray, covid: np.ndarray) -> dict[str, Any]:
    """The reliability table, ECE (10 bins) and Brier score of COVID-19 probabilities."""
    out = reliability(p, np.ones(len(p)), covid, bins=10)
    out["brier"] = float(np.mean((p - covid) ** 2))
    return out


def _image_probability(coef: tuple[float, ...], v: ValPass, idx: np.ndarray) -> np.ndarray:
    return sigmoid(image_features(v.share[idx], v.peak[idx]) @ np.asarray(coef))


def cross_fit(v: ValPass, check: InputCheck | None, distances: np.ndarray | None) -> dict[str, Any]:
    """Fit on one half of Val, measure on the other, both ways; the measured halves pooled."""
    a, b = halves(v.groups)
    pixel_after = LogitHistogram()
    image_p, flagged = np.zeros(len(v.share)), np.zeros(len(v.share), int)
    for fit_idx, test_idx in ((a, b), (b, a)):
        ab = fit_platt(sum_histograms([v.hists[i] for i in fit_idx]))
        test = sum_histograms([v.hists[i] for i in test_idx])
        pixel_after = pixel_after + test.rebinned(*ab)
        coef = fit_logistic(image_features(v.share[fit_idx], v.peak[fit_idx]), v.covid[fit_idx])
        image_p[test_idx] = _image_probability(coef, v, test_idx)
        if check is not None and distances is not None:
            check.set_cutoffs(distances[fit_idx], [v.figures[i] for i in fit_idx])
            flagged[test_idx] = check.flags(distances[test_idx], [v.figures[i] for i in test_idx])
    image = _image_scores(image_p, v.covid)
    return {
        "scheme": "two group-stratified halves of the split: fit on one, measure on the other, both ways",
        "halves": [int(len(a)), int(len(b))],
        "pixel_ece_after": pixel_reliability(pixel_after)["ece"],
        "image": {"ece": image["ece"], "brier": image["brier"]},
        "input_check_flagged_share": float(np.mean(flagged > 0)) if check is not None else None,
    }


def calibrate_run(
    run_dir: str | Path,
    data_root: str | None = None,
    split: str = "Val",
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit and write the input check and calibrations of ``run_dir``; returns the record."""
    run_dir = Path(run_dir)
    predictor, cfg, _ = open_run(run_dir, checkpoint, device, calibrated=False)  # fit from the uncalibrated model
    if predictor.targets[0] != "infection":
        raise CovidsegError(f"{run_dir} segments lungs only; 'covidseg calibrate' calibrates infection models")
    bs = batch_size or cfg.train.batch_size
    train = open_split(cfg, "Train", data_root, limit, cache_dir, progress)
    check = train_pass(predictor, train.dataset, bs, progress)
    val = open_split(cfg, split, data_root, limit, cache_dir, progress)
    v = val_pass(predictor, val.dataset, bs, progress)
    distances = check.distance(v.features) if check is not None and v.features is not None else None
    crossed = cross_fit(v, check, distances)
    pixels = sum_histograms(v.hists)
    calibration = Calibration(*fit_platt(pixels), fit_logistic(image_features(v.share, v.peak), v.covid))
    record = _record(calibration, v, pixels, crossed, split, val.synthetic, predictor.post.threshold)
    record["postprocess"] = predictor.post.as_dict()  # what the COVID-19 probability was fitted with
    if check is not None and distances is not None:
        check.set_cutoffs(distances, v.figures)
        record["input_check"] = check.save(run_dir / CHECK_FILE)
        record["fit"]["input_check_flagged_share"] = float(np.mean(check.flags(distances, v.figures) > 0))
    write_atomic(run_dir / FILENAME, json.dumps(record, indent=2).encode())
    _plot(record, run_dir / "plots" / "reliability.png", val.synthetic)
    return record


def _record(cal: Calibration, v: ValPass, pixels: LogitHistogram, crossed: dict, split: str, synthetic: bool,
            threshold: float) -> dict[str, Any]:  # fmt: skip
    before, after = pixel_reliability(pixels), pixel_reliability(pixels, cal.a, cal.b)
    image = _image_scores(_image_probability(cal.image, v, np.arange(len(v.share))), v.covid)
    naive = _image_scores(v.peak, v.covid)
    return {
        "calibration": cal.as_dict(),
        "threshold": threshold,
        "threshold_calibrated": cal.threshold(threshold),
        "fitted_on": {"split": split, "images": len(v.share), "data": SYNTHETIC_NOTE if synthetic else "X-rays"},
        "pixel_region": "inside the predicted lungs (the whole image for models without a lung output)",
        "fit": {
            "pixel_ece_before": before["ece"],
            "pixel_ece_after": after["ece"],
            "image_ece_peak_as_probability": naive["ece"],
            "image": {"ece": image["ece"], "brier": image["brier"]},
        },
        "cross_fit": crossed,
        "reliability": {"pixels_before": before, "pixels_after": after, "image": image},
    }


def _plot(record: dict[str, Any], path: Path, synthetic: bool) -> None:
    from covidseg.figures import plot_reliability

    rel = record["reliability"]
    kind = "synthetic " if synthetic else ""
    plot_reliability(
        [("pixels in the lungs, before", rel["pixels_before"]), ("after", rel["pixels_after"])],
        [("COVID-19 probability", rel["image"])],
        path,
        title=f"{kind}{record['fitted_on']['split']}: reliability (in-sample; cross-fitted ECE in calibration.json)",
    )
