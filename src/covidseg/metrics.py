"""Segmentation metrics with explicit definitions.

Conventions: predictions and truths are binary masks ``(N, H, W)`` or ``(N, 1, H, W)``; a
prediction is ``sigmoid(logits) > threshold``. Per image we count ``tp, fp, fn, tn`` pixels,
then reduce in two ways, always named:

- **pooled** (dataset-level, "micro"): one confusion matrix summed over every pixel of every
  image; ``dice = 2tp / (2tp + fp + fn)``, ``iou = tp / (tp + fp + fn)``,
  ``pixel_accuracy = (tp + tn) / pixels``, ``precision = tp / (tp + fp)``,
  ``recall = tp / (tp + fn)``.
- **per image** (what a reader of one X-ray sees): Dice and IoU of each image, then averaged.
  An image whose truth *and* prediction are both empty has no overlap to measure; it scores
  ``empty_empty`` (default 1.0: a correct "nothing here"; ``nan`` leaves it out of the mean).
  An empty truth with a non-empty prediction, or the reverse, scores 0.

Any ratio whose denominator is zero (pooled precision when nothing is predicted, say) is
reported as ``None`` (JSON null) rather than a made-up number, except pooled Dice and IoU,
which follow ``empty_empty`` like an image does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from covidseg.groups import GROUPS

STAT_NAMES = ("tp", "fp", "fn", "tn")


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image ``(N, 4)`` int64 counts ``tp, fp, fn, tn`` of two binary mask batches."""
    pred = np.asarray(pred).astype(bool).reshape(len(pred), -1)
    truth = np.asarray(truth).astype(bool).reshape(len(truth), -1)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    tp = np.sum(pred & truth, axis=1)
    fp = np.sum(pred & ~truth, axis=1)
    fn = np.sum(~pred & truth, axis=1)
    tn = pred.shape[1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def dice_iou(stats: np.ndarray, empty_empty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of each row of ``(N, 4)`` counts; rows with tp + fp + fn == 0 get ``empty_empty``."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 4)
    tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 2]
    union = tp + fp + fn
    empty = union == 0
    safe = np.where(empty, 1.0, union)
    dice = np.where(empty, empty_empty, 2 * tp / np.where(empty, 1.0, 2 * tp + fp + fn))
    iou = np.where(empty, empty_empty, tp / safe)
    return dice, iou


def pooled(stats: np.ndarray, empty_empty: float = 1.0) -> dict[str, float]:
    """Dataset-level metrics from one confusion matrix summed over all images."""
    tp, fp, fn, tn = (float(v) for v in np.asarray(stats, dtype=np.float64).reshape(-1, 4).sum(axis=0))
    dice, iou = dice_iou(np.array([[tp, fp, fn, tn]]), empty_empty)
    return {
        "dice": float(dice[0]),
        "iou": float(iou[0]),
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def nan_mean(values: np.ndarray) -> float:
    """Mean of the values that are not nan; nan when there are none (an empty group, say)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def _per_image_means(stats: np.ndarray, empty_empty: float) -> dict[str, float]:
    dice, iou = dice_iou(stats, empty_empty)
    return {"dice": nan_mean(dice), "iou": nan_mean(iou), "images": int(len(stats))}


def negatives_with_false_positives(stats: np.ndarray) -> float:
    """Share of images with an empty truth whose prediction is not empty (None if no such image)."""
    stats = np.asarray(stats).reshape(-1, 4)
    negative = (stats[:, 0] + stats[:, 2]) == 0
    return _ratio(float(np.sum(stats[negative, 1] > 0)), float(negative.sum()))


def summarize(
    stats: np.ndarray,
    groups: Sequence[str],
    threshold: float,
    empty_empty: float = 1.0,
    split: str | None = None,
) -> dict[str, Any]:
    """Every definition at once, as written to ``summary.json``.

    Args:
        stats: ``(N, 4)`` per-image counts ``tp, fp, fn, tn``.
        groups: the group of each image (``COVID-19``, ``Non-COVID``, ``Normal``).
        threshold: the probability threshold that made the predictions (recorded).
        empty_empty: the per-image score of an image with empty truth and empty prediction.
        split: the split's name (recorded).
    """
    stats = np.asarray(stats).reshape(-1, 4)
    groups = np.asarray(groups)
    out: dict[str, Any] = {
        "split": split,
        "images": int(len(stats)),
        "threshold": threshold,
        "empty_empty": empty_empty,
        "pooled": pooled(stats, empty_empty),
        "per_image": _per_image_means(stats, empty_empty),
        "per_image_covid": _per_image_means(stats[groups == "COVID-19"], empty_empty),
        "negatives_with_false_positives": negatives_with_false_positives(stats),
        "groups": {},
    }
    for g in GROUPS:
        sel = stats[groups == g]
        if len(sel) == 0:
            continue
        out["groups"][g] = {
            **_per_image_means(sel, empty_empty),
            "pooled": pooled(sel, empty_empty),
            "negatives_with_false_positives": negatives_with_false_positives(sel),
        }
    return json_safe(out)


def lookup(summary: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    """``summary[path[0]][path[1]]...``, or None where a key is missing (an older or partial summary)."""
    d: Any = summary
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def json_safe(obj: Any) -> Any:
    """Replace NaN and infinities by None so the result is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
