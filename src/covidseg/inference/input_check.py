"""Is this a frontal chest X-ray? A check that runs with every prediction.

Two pieces of evidence, both from the forward pass that segments:

1. **Feature distance.** The pooled deepest encoder features (:mod:`covidseg.inference.features`)
   are compared with those of the Train X-rays: the Mahalanobis distance under a
   probabilistic-PCA covariance (the top ``k`` principal directions with their own variances,
   every other direction with the mean variance left over; Tipping & Bishop 1999), divided by
   the square root of the feature count. The ``score`` is that distance over the cut-off, so
   1.0 is the cut-off.
2. **Lung and image plausibility** (models with a lung output): from the lung probabilities at
   the network's size: how much of the image the lungs cover, how many lung fields there are,
   the balance of the two, whether they sit side by side, and whether they are wider at the base
   than at the apex; and from the network's input image: its contrast (standard deviation), its
   fine detail (mean absolute difference of neighbouring pixels) and how much darker the lungs
   are than the rest of the image (on an X-ray, air is dark; an inverted image has bright
   lungs); and the layout of a frontal film: how much brighter the band below the lungs
   (diaphragm, abdomen) is than the band above them (an upside-down film reverses it), and how
   much brighter the midline (spine, mediastinum) is than the lung fields on either side (an
   inverted film reverses it). These need no learning, so they hold whatever the encoder's
   features learnt to ignore (a network with an image-level head pools those features for its
   own task). Each is compared with its range on Train (1st-99th percentile), widened on both
   sides by its own margin (``lung_margin``, in widths of that range).

Verdicts: ``not_a_frontal_cxr`` when the score exceeds ``far`` / ``cutoff`` or fewer than two
lung fields are found; ``unusual`` when the score exceeds 1 or a lung figure lies outside its
widened range; ``ok`` otherwise. ``covidseg calibrate`` sets the cut-offs on Val so that at least
99% of its X-rays are ``ok``: the figures' margins let at most 0.5% of them out (each figure
the same number), ``cutoff`` then takes what is left of the 1%; ``far`` is the larger of 1.5 x ``cutoff`` and the
largest Val distance. The stored arrays (``input_check.npz``) are read with ``allow_pickle=False`` and
checked before use.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from covidseg.atomic import write_atomic
from covidseg.errors import CovidsegError

FILENAME = "input_check.npz"
COMPONENTS = 64
FIELD_SHARE = 0.01  # a lung field covers at least 1% of the image
LUNG_FIGURES = (
    "lung_area", "balance", "side_by_side", "apex_share",  # from the lung output
    "contrast", "detail", "lung_darkness", "lower_over_upper", "midline_over_sides",  # from the image
)  # fmt: skip
LUNG_ONLY = LUNG_FIGURES[:4]  # what checks calibrated before the image figures hold
RANGE_QUANTILES = (0.01, 0.99)
LUNG_KEEP = 0.995
VERDICTS = ("ok", "unusual", "not_a_frontal_cxr")


# What a chest film's file looks like, whatever the network sees: at least 64 pixels a side (even a
# thumbnail has that), near square (14 x 17 inch film: 1.21; COVID-QU-Ex: 1.0), gray.
MIN_SIDE = 64
ASPECT_UNUSUAL, ASPECT_FAR = 1.5, 2.0
COLOUR_UNUSUAL, COLOUR_FAR = 0.03, 0.12


def file_reasons(shape: tuple[int, int] | None, colour: float = 0.0) -> tuple[list[str], list[str]]:
    """(reasons for not_a_frontal_cxr, reasons for unusual) from an image's own size and colour."""
    far: list[str] = []
    unusual: list[str] = []
    if shape is not None:
        h, w = shape
        aspect = max(h, w) / max(1, min(h, w))
        if min(h, w) < MIN_SIDE:
            far.append(f"{w}x{h} pixels: too small for a chest X-ray (at least {MIN_SIDE} a side)")
        if aspect > ASPECT_FAR:
            far.append(f"{w}x{h} pixels: sides {aspect:.1f} to 1, a chest film is near square")
        elif aspect > ASPECT_UNUSUAL:
            unusual.append(f"{w}x{h} pixels: sides {aspect:.1f} to 1, a chest film is near square")
    if colour > COLOUR_FAR:
        far.append(f"a colour image (colourfulness {colour:.2f}; X-rays are gray)")
    elif colour > COLOUR_UNUSUAL:
        unusual.append(f"colour in the image (colourfulness {colour:.2f}; X-rays are gray)")
    return far, unusual


def image_figures(image: np.ndarray, lung: np.ndarray) -> dict[str, float]:
    """Contrast, fine detail, lung darkness and the frontal layout of one (S, S) network input in
    [0, 1] with its lung mask (darkness 0 when the lungs or the rest are empty)."""
    x = np.asarray(image, np.float32)
    detail = (np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2
    inside, outside = x[lung], x[~lung]
    dark = float(outside.mean() - inside.mean()) if inside.size and outside.size else 0.0
    return {"contrast": float(x.std()), "detail": float(detail), "lung_darkness": dark, **layout_figures(x)}


def layout_figures(x: np.ndarray) -> dict[str, float]:
    """Where a frontal chest film is bright, from fixed bands of the image (no segmentation): the
    lowest fifth against the highest fifth (central half of the columns), and the midline strip
    against the two lung-field strips (rows 20-80%)."""
    s0, s1 = x.shape

    def band(r0: float, r1: float, c0: float, c1: float) -> np.ndarray:
        return x[int(r0 * s0) : max(int(r1 * s0), int(r0 * s0) + 1), int(c0 * s1) : max(int(c1 * s1), int(c0 * s1) + 1)]

    lower_over_upper = band(0.8, 1.0, 0.25, 0.75).mean() - band(0.0, 0.2, 0.25, 0.75).mean()
    sides = np.concatenate([band(0.2, 0.8, 0.15, 0.35).ravel(), band(0.2, 0.8, 0.65, 0.85).ravel()])
    midline_over_sides = band(0.2, 0.8, 0.42, 0.58).mean() - sides.mean()
    return {"lower_over_upper": float(lower_over_upper), "midline_over_sides": float(midline_over_sides)}


def lung_figures(prob: np.ndarray, image: np.ndarray | None = None) -> dict[str, float]:
    """Plausibility figures of one (S, S) lung probability map (threshold 0.5), and of the
    network's input ``image`` (S, S) when given."""
    mask = prob > 0.5
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    big = np.argsort(sizes)[::-1][:2]
    fields = int((sizes >= FIELD_SHARE * mask.size).sum())
    out = {"lung_area": float(mask.mean()), "fields": float(fields), "balance": 0.0, "side_by_side": 0.0}
    if len(big) == 2 and sizes[big[1]] > 0:
        out["balance"] = float(sizes[big[1]] / sizes[big[0]])
        (y0, x0), (y1, x1) = ndimage.center_of_mass(mask, labels, [big[0] + 1, big[1] + 1])
        dx, dy = abs(x1 - x0), abs(y1 - y0)
        out["side_by_side"] = float(dx / max(dx + dy, 1e-9))
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows):
        top, bottom = rows[0], rows[-1] + 1
        middle = (top + bottom) // 2
        out["apex_share"] = float(mask[top:middle].sum() / max(mask[top:bottom].sum(), 1))
    else:
        out["apex_share"] = 0.0
    if image is not None:
        out.update(image_figures(image, mask))
    return out


@dataclass
class InputCheck:
    """The fitted check: feature statistics of Train, lung ranges of Train, cut-offs set on Val."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    variances: np.ndarray  # (k,)
    noise: float  # the variance of every other direction
    cutoff: float = np.inf
    far: float = np.inf
    lung_ranges: dict[str, tuple[float, float]] | None = None
    lung_margin: dict[str, float] | float = 0.0  # per figure (a number: one for all, as stored before)

    @classmethod
    def fit(cls, features: np.ndarray, k: int = COMPONENTS) -> InputCheck:
        """Feature statistics from (N, D) Train features (cut-offs and lung ranges set later)."""
        x = np.asarray(features, np.float64)
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        eig = s**2 / max(len(x) - 1, 1)
        k = min(k, len(eig) - 1, x.shape[1] - 1)
        noise = float(max(eig[k:].sum() / (x.shape[1] - k), 1e-12))
        return cls(
            mean.astype(np.float32), vt[:k].astype(np.float32), np.maximum(eig[:k], noise).astype(np.float32), noise
        )

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) Mahalanobis distances under the fitted covariance, over sqrt(D)."""
        x = np.asarray(features, np.float64) - self.mean
        z = x @ self.components.T.astype(np.float64)
        d2 = (z**2 / self.variances).sum(axis=1) + ((x**2).sum(axis=1) - (z**2).sum(axis=1)) / self.noise
        return np.sqrt(np.maximum(d2, 0) / x.shape[1])

    def lung_reasons(self, figures: dict[str, float] | None) -> tuple[list[str], list[str]]:
        """(reasons for not_a_frontal_cxr, reasons for unusual) from one image's lung figures."""
        if figures is None or self.lung_ranges is None:
            return [], []
        if figures["fields"] < 2:
            n = int(figures["fields"])
            return [f"{'no lung field' if n == 0 else 'one lung field'} found (two expected)"], []
        unusual = []
        for name, (lo, hi) in self.lung_ranges.items():
            if name in figures and self._excess(name, figures[name]) > self.margin(name):
                pad = self.margin(name) * (hi - lo)
                unusual.append(f"{_LABELS[name]} {figures[name]:.2f} outside the usual {lo - pad:.2f}-{hi + pad:.2f}")
        return [], unusual

    def margin(self, name: str) -> float:
        """The margin of figure ``name``, in widths of its Train range."""
        m = self.lung_margin
        return m.get(name, 0.0) if isinstance(m, dict) else m

    def _excess(self, name: str, value: float) -> float:
        """How far ``value`` lies outside the Train range of figure ``name``, in range widths (0 inside)."""
        lo, hi = self.lung_ranges[name]  # type: ignore[index]
        width = max(hi - lo, 1e-9)
        return max(0.0, (lo - value) / width, (value - hi) / width)

    def set_margins(self, figures: list[dict[str, float] | None]) -> None:
        """The tightest margins that leave at most a share 1 - LUNG_KEEP of these (Val) X-rays
        outside any figure: every figure lets the same number t of them out (its margin is its
        (t+1)-th largest excess), t as large as that share allows; t = 0 puts each margin at the
        furthest X-ray. X-rays with fewer than two lung fields are judged on that alone."""
        names = list(self.lung_ranges or {})
        usable = [f for f in figures if f is not None and f["fields"] >= 2]
        if not names or not usable:
            self.lung_margin = dict.fromkeys(names, 0.0)
            return
        excess = np.array([[self._excess(n, f[n]) if n in f else 0.0 for n in names] for f in usable])
        ranked = -np.sort(-excess, axis=0)  # each figure's excesses, largest first
        allowed = int(np.floor((1 - LUNG_KEEP) * len(figures)))
        margins = ranked[0]
        for t in range(1, len(usable)):
            if int((excess > ranked[t]).any(axis=1).sum()) > allowed:
                break
            margins = ranked[t]
        self.lung_margin = {n: float(m) for n, m in zip(names, margins)}

    def _reasons(self, distance: float | None, figures: dict[str, float] | None) -> tuple[list[str], list[str]]:
        """(reasons for not_a_frontal_cxr, reasons for unusual) from one image's feature distance
        (None without features) and lung figures."""
        far, unusual = self.lung_reasons(figures)
        if distance is not None:
            score = distance / self.cutoff
            if distance > self.far:
                far.insert(0, f"image features far from any training X-ray (score {score:.2f}; cut-off 1)")
            elif distance > self.cutoff:
                unusual.insert(0, f"image features unlike the training X-rays (score {score:.2f}; cut-off 1)")
        return far, unusual

    def assess(
        self,
        features: np.ndarray | None,
        figures: dict[str, float] | None,
        shape: tuple[int, int] | None = None,
        colour: float = 0.0,
    ) -> dict[str, Any]:
        """The ``input_check`` record of one image: score, verdict, reason; with the image's own
        (H, W) ``shape`` and ``colour`` (:func:`covidseg.data.image_io.colourfulness`) also
        :func:`file_reasons`."""
        d = None if features is None else float(self.distance(features[None])[0])
        far, unusual = self._reasons(d, figures)
        file_far, file_unusual = file_reasons(shape, colour)
        far, unusual = file_far + far, file_unusual + unusual
        reasons = far + unusual
        return {
            "score": None if d is None else round(d / self.cutoff, 4),
            "verdict": "not_a_frontal_cxr" if far else "unusual" if unusual else "ok",
            "reason": "; ".join(reasons) if reasons else "features and lungs as in the training X-rays",
        }

    def flags(self, distances: np.ndarray, figures: list[dict[str, float] | None]) -> np.ndarray:
        """(N,) verdict index (0 ok, 1 unusual, 2 not_a_frontal_cxr) for precomputed distances."""
        out = np.zeros(len(distances), int)
        for i, (d, fig) in enumerate(zip(distances, figures)):
            far, unusual = self._reasons(float(d), fig)
            out[i] = 2 if far else 1 if unusual else 0
        return out

    def set_lung_ranges(self, figures: list[dict[str, float]]) -> None:
        lo, hi = RANGE_QUANTILES
        self.lung_ranges = {
            name: (
                float(np.quantile([f[name] for f in figures], lo)),
                float(np.quantile([f[name] for f in figures], hi)),
            )
            for name in LUNG_FIGURES
            if name in figures[0]
        }

    def set_cutoffs(self, distances: np.ndarray, figures: list[dict[str, float] | None], keep: float = 0.99) -> None:
        """The smallest cut-offs that leave at least ``keep`` of these (Val) X-rays ``ok``."""
        self.cutoff, self.far = np.inf, np.inf
        if self.lung_ranges is not None:
            self.set_margins(figures)
        lung_flagged = self.flags(np.zeros(len(distances)), figures) > 0
        allowed = int(np.floor((1 - keep) * len(distances))) - int(lung_flagged.sum())
        ranked = np.sort(np.asarray(distances)[~lung_flagged])[::-1]
        self.cutoff = float(ranked[max(allowed, 0)]) if len(ranked) else 1.0
        self.far = float(max(1.5 * self.cutoff, np.max(distances)))

    def save(self, path: Path) -> dict[str, Any]:
        """Write the arrays to ``path`` (npz, whole or not at all); return the small settings for
        ``calibration.json``."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf, mean=self.mean, components=self.components.astype(np.float16), variances=self.variances
        )
        write_atomic(path, buf.getvalue())
        return {
            "noise": self.noise,
            "cutoff": self.cutoff,
            "far": self.far,
            "lung_ranges": self.lung_ranges,
            "lung_margin": self.lung_margin,
        }

    @classmethod
    def load(cls, path: Path, settings: Any) -> InputCheck:
        """The check from ``input_check.npz`` and its settings, validated (untrusted files)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                mean, comp, var = (np.asarray(z[k], np.float32) for k in ("mean", "components", "variances"))
        except (OSError, ValueError, KeyError) as exc:
            raise CovidsegError(f"{path} is damaged ({str(exc)[:120]}); run 'covidseg calibrate' again") from None
        ok = mean.ndim == 1 and comp.ndim == 2 and comp.shape[1] == mean.size and var.shape == (comp.shape[0],)
        if not ok or not all(np.isfinite(a).all() for a in (mean, comp, var)) or (var <= 0).any():
            raise CovidsegError(f"{path}: arrays of the wrong shape or with non-finite values")
        if not isinstance(settings, dict):
            raise CovidsegError(f"{path}: calibration.json holds no 'input_check' settings")
        numbers = [_number(settings.get(k)) for k in ("noise", "cutoff", "far")]
        if not all(v is not None and v > 0 for v in numbers):
            raise CovidsegError(f"{path}: noise, cutoff and far must be positive finite numbers")
        ranges = settings.get("lung_ranges")
        if ranges is not None:
            ranges = _ranges(ranges, path)
        margin = _margins(settings.get("lung_margin", 0.0), ranges, path)
        return cls(mean, comp, var, *numbers, ranges, margin)


def _ranges(ranges: Any, path: Path) -> dict[str, tuple[float, float]]:
    ok = isinstance(ranges, dict) and set(LUNG_ONLY) <= set(ranges) <= set(LUNG_FIGURES)
    ok = ok and all(isinstance(v, list) and len(v) == 2 for v in ranges.values())
    ok = ok and all(_number(x) is not None for v in ranges.values() for x in v)
    if not ok:
        raise CovidsegError(
            f"{path}: lung_ranges must give [low, high] numbers for {list(LUNG_ONLY)} and at most {list(LUNG_FIGURES)}"
        )
    return {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}


def _number(value: Any) -> float | None:
    """A finite JSON number as float, else None (booleans, strings, NaN, infinities and integers
    too large for a float are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if np.isfinite(x) else None


def _margin_ok(value: Any) -> bool:
    x = _number(value)
    return x is not None and x >= 0


def _margins(margin: Any, ranges: dict[str, tuple[float, float]] | None, path: Path) -> dict[str, float] | float:
    """``lung_margin``: one number (checks calibrated before per-figure margins) or one per figure."""
    if _margin_ok(margin):
        return float(margin)
    ok = isinstance(margin, dict) and set(margin) == set(ranges or {}) and all(map(_margin_ok, margin.values()))
    if not ok:
        raise CovidsegError(f"{path}: lung_margin must be a finite number >= 0 for each lung figure, got {margin!r}")
    return {k: float(v) for k, v in margin.items()}


_LABELS = {
    "lung_area": "lung area (share of the image)",
    "balance": "smaller/larger lung",
    "side_by_side": "side-by-side placement of the lungs",
    "apex_share": "share of lung in the upper half",
    "contrast": "image contrast",
    "detail": "fine detail of the image",
    "lung_darkness": "how much darker the lungs are than the rest",
    "lower_over_upper": "how much brighter the bottom of the image is than the top",
    "midline_over_sides": "how much brighter the midline is than the lung fields",
}
