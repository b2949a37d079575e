"""Image-level COVID-19 detection from the predicted infection mask.

The score of an image is the share of its pixels in the final infection mask (after the run's
post-processing). An image is called COVID-19 when the score exceeds the run's
``detect_fraction`` (``postprocess.json``), which ``covidseg tune`` sets on Val to the value
with the highest Youden index (sensitivity + specificity - 1), the smaller one on ties.

Positives are the ``COVID-19`` group; ``Non-COVID`` and ``Normal`` are negatives.
Sensitivity = called positives / positives; specificity = called negatives / negatives; ROC
AUC is the Mann-Whitney probability that a positive image scores above a negative one (ties
count half). Undefined values are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from covidseg.groups import GROUPS

POSITIVE = "COVID-19"


def infected_share(stats: np.ndarray) -> np.ndarray:
    """Per image, predicted pixels over all pixels, from ``(N, 4)`` tp/fp/fn/tn counts."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 4)
    return (stats[:, 0] + stats[:, 1]) / np.maximum(stats.sum(axis=1), 1)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (nan without both classes)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    if np.all(scores == scores[0]):
        return 0.5
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def best_cutoff(scores: np.ndarray, labels: np.ndarray) -> float:
    """The cut-off (call = score > cut-off) with the highest Youden index; 0 if undefined."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return 0.0
    candidates = np.unique(np.concatenate([[0.0], scores]))
    best, best_j = 0.0, -math.inf
    for c in candidates:
        called = scores > c
        j = called[labels].mean() + (~called[~labels]).mean() - 1
        if j > best_j + 1e-12:
            best, best_j = float(c), j
    return best


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if len(hits) else None


def detection_summary(scores: np.ndarray, groups: Sequence[str], cutoff: float) -> dict[str, Any]:
    """Sensitivity, specificity and ROC AUC overall and per group, as written to ``summary.json``."""
    scores, groups = np.asarray(scores, float), np.asarray(groups)
    labels = groups == POSITIVE
    called = scores > cutoff
    auc = roc_auc(scores, labels)
    out: dict[str, Any] = {
        "score": "share of the image in the final infection mask",
        "cutoff": cutoff,
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
        "sensitivity": _rate(called[labels]),
        "specificity": _rate(~called[~labels]),
        "roc_auc": None if math.isnan(auc) else auc,
        "groups": {},
    }
    for g in GROUPS:
        sel = groups == g
        if not sel.any():
            continue
        if g == POSITIVE:
            out["groups"][g] = {"images": int(sel.sum()), "sensitivity": _rate(called[sel])}
        else:
            pair = labels | sel
            a = roc_auc(scores[pair], labels[pair])
            out["groups"][g] = {
                "images": int(sel.sum()),
                "specificity": _rate(~called[sel]),
                "roc_auc_vs_covid": None if math.isnan(a) else a,
            }
    return out
