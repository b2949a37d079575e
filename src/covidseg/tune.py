"""Tune the inference-side steps on Val, keeping each only if it improves a stated Dice.

Every trial scores the masks ``predict`` would write (post-processing at each X-ray's own size,
:func:`covidseg.inference.postprocess.finalize`) against the original mask files.

Greedy, in order, from the run's ``eval.threshold``: horizontal-flip test-time augmentation; for
models with a lung output, keeping only infection inside the predicted lung; the probability
threshold (0.10 to 0.90 by 0.05); the image gate together with the threshold (a mask is kept
only when the image's score passes the gate: for a network with an image-level COVID-19 head its
probability, every gate from 0.05 to 0.95 with every threshold; else the peak infection
probability, every gate from 0.50 to 0.99 above every threshold); removal of components smaller
than a share of the image (16 to 512 pixels of a 256x256 image); hole filling. A step stays
only if it raises the chosen definition of Val Dice (``per_image``: the mean over all images
with empty/empty = 1; ``per_image_covid``: the mean over COVID-19 images; ``balanced``: the
mean of those two; ``pooled``: one confusion matrix).
Every trial is recorded under every definition in ``RUN_DIR/postprocess.json``. Last, with the
kept steps, the COVID-19 detection cut-off is set by the Youden index (:mod:`covidseg.detection`).

Choosing and scoring on the same images flatters the numbers. ``tune`` therefore also
**cross-fits**: Val is split into two group-stratified halves; the whole procedure chooses on one
half and is scored on the other, both ways, and the two scored halves together give the
``cross_fitted`` figures beside the ``in_sample`` ones (``postprocess.json`` -> ``cross_fit``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.atomic import write_atomic
from covidseg.data.discovery import GROUPS
from covidseg.detection import best_cutoff, infected_share, roc_auc
from covidseg.engine.checkpoint import FILE_SHA256
from covidseg.errors import ConfigError
from covidseg.evaluation import open_split
from covidseg.inference.postprocess import FILENAME, Postprocess, finalize, head_score, lung_mask, upsample
from covidseg.inference.predictor import Predictor, open_run
from covidseg.metrics import (
    confusion_counts,
    dice_iou,
    json_safe,
    nan_mean,
    negatives_with_false_positives,
    pooled,
)
from covidseg.progress import Progress
from covidseg.scoring import Truth, load_truth, split_probabilities

log = logging.getLogger(__name__)

METRICS = ("per_image", "per_image_covid", "balanced", "pooled")
THRESHOLDS = [round(x, 2) for x in np.arange(0.10, 0.91, 0.05)]
GATES = [round(x, 2) for x in np.arange(0.50, 0.96, 0.05)] + [0.97, 0.99]
HEAD_GATES = [round(x, 2) for x in np.arange(0.05, 0.96, 0.05)]  # for the image head's probability
MIN_COMPONENTS_256 = [16, 32, 64, 128, 256, 512]  # pixels of a 256x256 image; stored as a share
CROSS_FIT_SEED = 0


def scores(stats: np.ndarray, covid: np.ndarray, empty_empty: float) -> dict[str, float]:
    """Every definition tune can optimise, from per-image counts."""
    dice, _ = dice_iou(stats, empty_empty)
    per_image, per_image_covid = nan_mean(dice), nan_mean(dice[covid])
    return {
        "per_image": per_image,
        "per_image_covid": per_image_covid,
        "balanced": (per_image + per_image_covid) / 2,
        "pooled": pooled(stats, empty_empty)["dice"],
    }


@dataclass
class TuneData:
    """What every trial needs, per Val image: the network's probabilities (plain and flip-averaged),
    the predicted lung masks at native size, the true masks, and for the plain threshold and image
    gate trials the pixel counts above each threshold (with and without the lung gate), so that
    those trials need no pass over the pixels."""

    probs: dict[bool, list[np.ndarray]]  # tta -> [(C, S, S)]
    lungs: dict[bool, list[np.ndarray | None]]  # tta -> [(H, W) uint8]
    truth: Truth
    covid: np.ndarray  # (N,) bool
    targets: tuple[str, ...]
    empty_empty: float
    above: dict[tuple[bool, bool], np.ndarray]  # (tta, lung gate) -> (N, T, 2): predicted, true positive
    peak: dict[tuple[bool, bool], np.ndarray]  # (tta, lung gate) -> (N,) float32: the image gate's score
    true_pixels: np.ndarray  # (N,) int64: infected pixels of each true mask
    pixels: np.ndarray  # (N,) int64: pixels of each image

    def __len__(self) -> int:
        return len(self.covid)


def _counts_above(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(T, 2): pixels with ``prob > t`` and, of those, true ones, for every t in THRESHOLDS
    (compared in float32, as :meth:`Postprocess.apply` compares)."""
    t = np.asarray(THRESHOLDS, dtype=np.float32)
    p = np.sort(prob, axis=None)
    q = np.sort(prob[truth], axis=None)
    return np.stack([len(p) - np.searchsorted(p, t, "right"), len(q) - np.searchsorted(q, t, "right")], axis=1)


def collect(
    predictor: Predictor, ds: Any, truth: Truth, batch_size: int, empty_empty: float, progress: Progress | None = None
) -> TuneData:
    """One pass of the network over the split (plain and mirrored) and the counts per image."""
    targets = predictor.targets
    lung_ch = targets.index("lung") if "lung" in targets else None
    covid = ds.groups == GROUPS.index("COVID-19")
    true = np.asarray([m.sum() for m in truth.infection], dtype=np.int64)
    pixels = np.asarray([m.size for m in truth.infection], dtype=np.int64)
    data = TuneData({}, {}, truth, covid, targets, empty_empty, {}, {}, true, pixels)
    for tta in (False, True):
        probs, lungs = [], []
        rows: dict[bool, list] = {False: [], True: []}
        for k, p in split_probabilities(
            predictor, ds, batch_size, tta, progress, f"tune: {'flip' if tta else 'plain'}"
        ):
            h, w = truth.shape(k)
            full = upsample(p[0], h, w)
            lung = lung_mask(upsample(p[lung_ch], h, w)) if lung_ch is not None else None
            probs.append(p)
            lungs.append(lung)
            score = head_score(p, targets)
            peak = Postprocess.peak(full, None) if score is None else np.float32(score)
            rows[False].append((_counts_above(full, truth.infection[k]), peak))
            if lung is not None:
                inside = np.where(lung.astype(bool), full, 0)
                peak = Postprocess.peak(full, lung) if score is None else np.float32(score)
                rows[True].append((_counts_above(inside, truth.infection[k]), peak))
        data.probs[tta], data.lungs[tta] = probs, lungs
        for gate, r in rows.items():
            if r:
                data.above[(tta, gate)] = np.stack([a for a, _ in r])
                data.peak[(tta, gate)] = np.asarray([b for _, b in r], dtype=np.float32)
    return data


def stats_of(data: TuneData, post: Postprocess, idx: np.ndarray) -> np.ndarray:
    """(len(idx), 4) confusion counts of ``post``'s final masks on the images ``idx``."""
    gated = post.lung_gate and data.lungs[post.tta_hflip][0] is not None
    if post.min_component_share == 0 and not post.fill_holes and post.threshold in THRESHOLDS:
        return _stats_from_counts(data, post, idx, gated)
    return stats_generic(data, post, idx)


def stats_generic(data: TuneData, post: Postprocess, idx: np.ndarray) -> np.ndarray:
    """The same counts, from each image's final mask made by :func:`finalize` (the predict path)."""
    out = []
    for k in idx:
        lung = data.lungs[post.tta_hflip][k]
        m = finalize(data.probs[post.tta_hflip][k], data.truth.shape(k), post, data.targets, lung=lung).mask
        out.append(confusion_counts(m[None], data.truth.infection[k][None])[0])
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def _stats_from_counts(data: TuneData, post: Postprocess, idx: np.ndarray, gated: bool) -> np.ndarray:
    above = data.above[(post.tta_hflip, gated)][idx, THRESHOLDS.index(post.threshold)]
    pred, tp = above[:, 0].astype(np.int64), above[:, 1].astype(np.int64)
    if post.image_gate > 0:
        keep = data.peak[(post.tta_hflip, gated)][idx] > np.float32(post.image_gate)
        pred, tp = pred * keep, tp * keep
    true, pixels = data.true_pixels[idx], data.pixels[idx]
    fp, fn = pred - tp, true - tp
    return np.stack([tp, fp, fn, pixels - tp - fp - fn], axis=1)


def choose(data: TuneData, idx: np.ndarray, metric: str, start: Postprocess) -> tuple[Postprocess, list[dict]]:
    """The greedy search on the images ``idx``; returns the kept settings and every trial."""
    covid = data.covid[idx]

    def score(post: Postprocess) -> dict[str, float]:
        return scores(stats_of(data, post, idx), covid, data.empty_empty)

    current, best = start, score(start)
    steps: list[dict[str, Any]] = [
        {"step": "baseline", "setting": f"threshold {start.threshold}", "kept": True, **best}
    ]

    def consider(name: str, setting: str, candidate: Postprocess) -> None:
        nonlocal current, best
        s = score(candidate)
        kept = s[metric] > best[metric] + 1e-6
        steps.append({"step": name, "setting": setting, "kept": kept, **s})
        if kept:
            current, best = candidate, s

    def grid(name: str, candidates: list[tuple[str, Postprocess]]) -> None:
        trials = [(label, post, score(post)) for label, post in candidates]
        steps.extend({"step": name, "setting": label, "kept": False, "trial": True, **s} for label, _, s in trials)
        label, post, _ = max(trials, key=lambda x: x[2][metric])
        consider(name, label, post)

    consider("tta_hflip", "on", replace(current, tta_hflip=True))
    if data.lungs[False][0] is not None:
        consider("lung_gate", "on", replace(current, lung_gate=True))
    base = current
    grid("threshold", [(str(t), replace(base, threshold=t)) for t in THRESHOLDS])
    if "covid" in data.targets:
        pairs = [(t, g) for t in THRESHOLDS for g in HEAD_GATES]
    else:
        pairs = [(t, g) for t in THRESHOLDS for g in GATES if g > t]
    grid("image_gate", [(f"{g} (threshold {t})", replace(base, threshold=t, image_gate=g)) for t, g in pairs])
    base = current
    grid(
        "min_component",
        [(f"{n} px at 256x256", replace(base, min_component_share=n / 256**2)) for n in MIN_COMPONENTS_256],
    )
    consider("fill_holes", "on", replace(current, fill_holes=True))
    cutoff = best_cutoff(infected_share(stats_of(data, current, idx)), covid)
    steps.append({"step": "detect_fraction", "setting": f"{cutoff:.6g}", "kept": True, "rule": "Youden index"})
    return replace(current, detect_fraction=cutoff), steps


def halves(groups: np.ndarray, seed: int = CROSS_FIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two group-stratified halves of the images (index arrays, sorted)."""
    rng = np.random.default_rng(seed)
    a: list[int] = []
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        a += list(idx[: (len(idx) + 1) // 2])
    first = np.zeros(len(groups), bool)
    first[a] = True
    return np.flatnonzero(first), np.flatnonzero(~first)


def summarize_scored(data: TuneData, stats: np.ndarray, idx: np.ndarray, cutoffs: np.ndarray) -> dict[str, Any]:
    """Every Dice definition, the false-positive share and detection for the scored images ``idx``."""
    covid = data.covid[idx]
    shares = infected_share(stats)
    called = shares > cutoffs
    auc = roc_auc(shares, covid)
    return {
        "images": int(len(idx)),
        **scores(stats, covid, data.empty_empty),
        "negatives_with_false_positives": negatives_with_false_positives(stats),
        "detection": {
            "sensitivity": float(called[covid].mean()) if covid.any() else None,
            "specificity": float((~called[~covid]).mean()) if (~covid).any() else None,
            "roc_auc": None if np.isnan(auc) else auc,
        },
    }


def cross_fit(data: TuneData, groups: np.ndarray, metric: str, start: Postprocess) -> dict[str, Any]:
    """Choose on one half, score on the other, both ways; the two scored halves together."""
    a, b = halves(groups)
    parts, chosen = [], []
    for fit_on, score_on in ((a, b), (b, a)):
        post, _ = choose(data, fit_on, metric, start)
        parts.append((score_on, stats_of(data, post, score_on), post.detect_fraction))
        chosen.append(post.as_dict())
    idx = np.concatenate([p[0] for p in parts])
    stats = np.concatenate([p[1] for p in parts])
    cutoffs = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    return {
        "scheme": "two group-stratified halves of the split: choose on one, score on the other, both ways",
        "seed": CROSS_FIT_SEED,
        "halves": [int(len(a)), int(len(b))],
        "chosen": chosen,
        "cross_fitted": summarize_scored(data, stats, idx, cutoffs),
    }


def tune_postprocess(
    run_dir: str | Path,
    data_root: str | None = None,
    metric: str = "per_image",
    limit: int | None = None,
    device: str = "auto",
    checkpoint: str = "best",
    progress: Progress | None = None,
    cross_fitting: bool = True,
) -> tuple[Postprocess, dict[str, Any]]:
    """Tune on the run's Val split and write ``RUN_DIR/postprocess.json``; returns the settings
    and the whole record (trials, in-sample and cross-fitted scores)."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    predictor, cfg, state = open_run(run_dir, checkpoint, device, None, postprocess=False)
    if predictor.targets[0] != "infection":
        raise ConfigError(f"tune sets the infection post-processing; this run segments {cfg.model.targets} only")
    split = open_split(cfg, "Val", data_root, limit, None, progress)
    truth = load_truth(split.dataset, "native", progress)
    data = collect(predictor, split.dataset, truth, cfg.train.batch_size, cfg.eval.empty_empty, progress)
    start = Postprocess(threshold=cfg.eval.threshold)
    everything = np.arange(len(data))
    post, steps = choose(data, everything, metric, start)
    in_sample = summarize_scored(
        data, stats_of(data, post, everything), everything, np.full(len(data), post.detect_fraction)
    )
    record: dict[str, Any] = {
        "settings": post.as_dict(),
        "tuned_for": metric,
        "tuned_on": {
            "split": "Val",
            "images": len(data),
            "scored_at": "native",
            "synthetic": split.synthetic,
            "checkpoint": checkpoint,
            "checkpoint_sha256": state[FILE_SHA256],  # the weights these settings suit, as loaded
        },
        "cross_fit": None,
        "steps": steps,
    }
    if cross_fitting:
        groups = split.dataset.groups
        record["cross_fit"] = {"in_sample": in_sample, **cross_fit(data, groups, metric, start)}
    path = Path(run_dir) / FILENAME
    write_atomic(path, json.dumps(json_safe(record), indent=2))
    _log_result(metric, steps, in_sample, record, path)
    if (Path(run_dir) / "calibration.json").is_file():
        log.warning(
            "the COVID-19 probability in calibration.json was fitted with the previous settings; "
            "run 'covidseg calibrate %s' again",
            run_dir,
        )
    return post, record


def _log_result(metric: str, steps: list[dict], in_sample: dict, record: dict, path: Path) -> None:
    cf = record.get("cross_fit")
    honest = f"; cross-fitted {cf['cross_fitted'][metric]:.4f}" if cf else ""
    kept = [f"{s['step']} {s['setting']}" for s in steps[1:] if s.get("kept") and not s.get("trial")]
    log.info(
        "tuned for %s Dice on Val: %.4f -> %.4f in-sample%s (kept: %s); wrote %s",
        metric,
        steps[0][metric],
        in_sample[metric],
        honest,
        ", ".join(kept) or "nothing",
        path,
    )
    if cf and cf["cross_fitted"][metric] < steps[0][metric]:
        log.warning(
            "the cross-fitted %s Dice (%.4f) is below the untuned %.4f: on this split the tuning fits the "
            "images it chose on more than it helps new ones; evaluate and predict with --no-postprocess "
            "work without it",
            metric,
            cf["cross_fitted"][metric],
            steps[0][metric],
        )
