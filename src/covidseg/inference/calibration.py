"""Probabilities that mean what they say: post-hoc calibration fitted on Val.

Two calibrations, both fitted by ``covidseg calibrate`` and stored in ``calibration.json`` (run
folder and bundle):

- **pixels**: Platt scaling of the infection logits (a temperature with a bias),
  ``p' = sigmoid(a * logit(p) + b)``, fitted inside the predicted lungs (where a pixel can be
  infected; outside, background would dominate every figure). It is monotone, so the masks do
  not change: thresholding ``p'`` at :meth:`Calibration.threshold` of the tuned threshold keeps
  exactly the pixels the tuned threshold keeps on ``p``.
- **image**: the probability that the X-ray shows COVID-19, a logistic regression on two
  numbers ``predict`` already has: the infected share of the image (after post-processing,
  log10) and the highest infection probability inside the lungs (logit).

Fitting works on histograms of the logits (:class:`LogitHistogram`): exact to the bin width,
and cheap to add up over images and over the halves of a cross-fit. The expected calibration
error (:func:`ece`) uses 15 equal-width probability bins, weighted by pixels (or images).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from covidseg.errors import CovidsegError

FILENAME = "calibration.json"
LOGIT_RANGE = 16.0
BINS = 640  # logit bins of width 0.05
ECE_BINS = 15
_EPS = 1e-6
SHARE_FLOOR = 1e-4  # the infected share is used as log10(share + SHARE_FLOOR)


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=np.float64), -60, 60)))


@dataclass
class LogitHistogram:
    """Pixels counted by the logit of their probability: all of them, and the truly infected."""

    total: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    positive: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    @staticmethod
    def centers() -> np.ndarray:
        edges = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, BINS + 1)
        return 0.5 * (edges[:-1] + edges[1:])

    @classmethod
    def of(cls, prob: np.ndarray, truth: np.ndarray) -> LogitHistogram:
        return cls._binned(logit(prob.ravel()), np.ones(prob.size), truth.ravel())

    def rebinned(self, a: float, b: float) -> LogitHistogram:
        """The same pixels counted by their calibrated logit ``a z + b`` (to pool held-out halves)."""
        return self._binned(a * self.centers() + b, self.total, self.positive)

    @classmethod
    def _binned(cls, z: np.ndarray, total: np.ndarray, positive: np.ndarray) -> LogitHistogram:
        """Counts by logit bin; logits beyond the range go to the end bins."""
        z = np.clip(z, -LOGIT_RANGE, LOGIT_RANGE - 1e-9)
        idx = ((z + LOGIT_RANGE) * (BINS / (2 * LOGIT_RANGE))).astype(np.int64)
        return cls(
            np.bincount(idx, weights=total, minlength=BINS).astype(np.int64),
            np.bincount(idx, weights=positive, minlength=BINS).astype(np.int64),
        )

    def __add__(self, other: LogitHistogram) -> LogitHistogram:
        return LogitHistogram(self.total + other.total, self.positive + other.positive)


def sum_histograms(hists: list[LogitHistogram]) -> LogitHistogram:
    out = LogitHistogram()
    for h in hists:
        out = out + h
    return out


def fit_platt(hist: LogitHistogram) -> tuple[float, float]:
    """(a, b) minimising the binary cross-entropy of ``sigmoid(a * z + b)`` over the histogram."""
    z, n, k = LogitHistogram.centers(), hist.total.astype(float), hist.positive.astype(float)
    if n.sum() == 0 or k.sum() in (0, n.sum()):
        return 1.0, 0.0

    def nll(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * z + ab[1]
        p = sigmoid(s)
        loss = np.sum(n * np.logaddexp(0, s) - k * s)
        g = n * p - k
        return float(loss / n.sum()), np.array([np.sum(g * z), np.sum(g)]) / n.sum()

    res = optimize.minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, 100), (-50, 50)])
    return float(res.x[0]), float(res.x[1])


def reliability(prob: np.ndarray, weight: np.ndarray, hits: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Per equal-width probability bin: weight, mean probability, observed rate; and the ECE."""
    prob, weight, hits = (np.asarray(a, dtype=float).ravel() for a in (prob, weight, hits))
    b = np.minimum((prob * bins).astype(int), bins - 1)
    w = np.bincount(b, weights=weight, minlength=bins)
    conf = np.bincount(b, weights=weight * prob, minlength=bins)
    obs = np.bincount(b, weights=hits, minlength=bins)
    total = max(w.sum(), 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, rate = conf / w, obs / w
    ece = float(np.nansum(np.abs(obs - conf)) / total)
    return {"ece": ece, "weight": w.tolist(), "mean_probability": _nan_none(mean_p), "observed": _nan_none(rate)}


def _nan_none(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in a]


def pixel_reliability(hist: LogitHistogram, a: float = 1.0, b: float = 0.0) -> dict[str, Any]:
    """The reliability table and ECE of the pixels in ``hist`` after ``p' = sigmoid(a z + b)``."""
    p = sigmoid(a * LogitHistogram.centers() + b)
    return reliability(p, hist.total, hist.positive)


def image_features(share: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """(N, 3) design matrix: 1, log10(infected share + floor), logit(peak probability in the lungs)."""
    share, peak = np.asarray(share, float), np.asarray(peak, float)
    return np.stack([np.ones_like(share), np.log10(share + SHARE_FLOOR), logit(peak)], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[float, ...]:
    """Coefficients of a logistic regression (lightly L2-penalised so that separable data stays finite)."""
    y = np.asarray(y, float)

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = x @ w
        loss = np.mean(np.logaddexp(0, s) - y * s) + l2 * np.sum(w[1:] ** 2)
        g = x.T @ (sigmoid(s) - y) / len(y)
        g[1:] += 2 * l2 * w[1:]
        return float(loss), g

    res = optimize.minimize(nll, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    return tuple(float(v) for v in res.x)


@dataclass(frozen=True)
class Calibration:
    """The fitted calibrations (identity pixels and no image model by default)."""

    a: float = 1.0
    b: float = 0.0
    image: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        values = [self.a, self.b, *(self.image or ())]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise CovidsegError(f"calibration values must be finite numbers, got {values}")
        if not 0 < self.a <= 100 or (self.image is not None and len(self.image) != 3):
            raise CovidsegError(f"calibration: a must lie in (0, 100] and image hold 3 numbers, got {self}")

    def pixels(self, prob: np.ndarray) -> np.ndarray:
        """Calibrated infection probabilities, float32, same shape."""
        p = np.clip(np.asarray(prob, np.float32), np.float32(_EPS), np.float32(1 - _EPS))
        if self.a == 1.0 and self.b == 0.0:
            return p
        # sigmoid(a * logit(p) + b) = 1 / (1 + exp(-b) * ((1 - p) / p) ** a), in float32
        odds = np.power((1 - p) / p, np.float32(self.a), dtype=np.float32)
        return (1 / (1 + np.float32(np.exp(-self.b)) * odds)).astype(np.float32)

    def threshold(self, t: float) -> float:
        """The calibrated probability that corresponds to the tuned threshold ``t``."""
        return float(sigmoid(self.a * logit(t) + self.b))

    def image_probability(self, share: float, peak: float) -> float | None:
        """P(COVID-19) of one X-ray from its infected share (0-1) and peak probability in the lungs."""
        if self.image is None:
            return None
        return float(sigmoid(image_features(np.array([share]), np.array([peak]))[0] @ np.asarray(self.image)))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image"] = list(self.image) if self.image is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Calibration:
        if not isinstance(data, dict) or set(data) - {"a", "b", "image"}:
            raise CovidsegError(f"{where}: 'calibration' must be an object with keys a, b, image")
        image = data.get("image")
        if image is not None and not isinstance(image, list):
            raise CovidsegError(f"{where}: calibration.image must be a list of 3 numbers or null")
        try:
            return cls(data.get("a", 1.0), data.get("b", 0.0), tuple(image) if image is not None else None)
        except CovidsegError as exc:
            raise CovidsegError(f"{where}: {exc}") from None


def read_calibration(folder: str | Path) -> tuple[Calibration, dict[str, Any]] | None:
    """The calibration stored in a run folder or bundle, with its whole record; None without one."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CovidsegError(f"{path} is damaged ({exc}); run 'covidseg calibrate' again") from None
    if not isinstance(record, dict):
        raise CovidsegError(f"{path}: expected a JSON object")
    return Calibration.from_dict(record.get("calibration"), str(path)), record
