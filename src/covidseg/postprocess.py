"""Post-processing of predicted masks, and the decisions a run keeps in ``postprocess.json``.

Infection, in order: threshold the probability map; keep only pixels inside the predicted lung
(``lung_gate``, for models with a lung output); the image gate (``image_gate``: the whole mask
is kept only when the image's highest infection probability, inside the predicted lung when the
lung gate is on, exceeds it; so a low threshold can draw the extent of an infection while a high
gate decides whether there is one); remove connected components (8-connected) smaller than
``min_component`` pixels at the network's resolution; fill holes. Each step is
part of a run only if tuning on Val showed it helps (:mod:`covidseg.tune`); ``evaluate`` and
``predict`` then apply exactly what was kept.

Lung (models with a lung output): threshold at 0.5, keep the two largest components, fill
holes (:func:`lung_mask`).

``detect_fraction``: the image-level COVID-19 call; an image is called COVID-19 when its final
infection mask covers more than this share of the image (tuned on Val, see
:mod:`covidseg.detection`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from covidseg.errors import CovidsegError

FILENAME = "postprocess.json"
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Postprocess:
    """What to do between probabilities and the final mask (defaults: plain threshold 0.5)."""

    threshold: float = 0.5
    tta_hflip: bool = False
    min_component: int = 0
    fill_holes: bool = False
    lung_gate: bool = False
    image_gate: float = 0.0
    detect_fraction: float = 0.0
    tuned_for: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, prob: np.ndarray, area_scale: float = 1.0, lung: np.ndarray | None = None) -> np.ndarray:
        """(H, W) or (N, H, W) probabilities -> uint8 {0, 1} masks of the same shape.

        ``area_scale``: the mask's pixel count over the network's (S x S), so that the minimum
        component keeps its physical size on a map resized to an image's original size.
        ``lung``: the predicted lung masks (same shape), used when ``lung_gate`` is on.
        """
        mask = prob > self.threshold
        gated = self.lung_gate and lung is not None
        if gated:
            lung = np.asarray(lung).astype(bool)
            mask &= lung
        if self.image_gate > 0:
            inside = np.where(lung, prob, 0) if gated else prob
            peak = inside.reshape(-1, *inside.shape[-2:]).max(axis=(1, 2))
            keep = (peak > self.image_gate).reshape(peak.shape + (1, 1))
            mask &= keep if mask.ndim == 3 else keep[0]
        min_size = int(round(self.min_component * area_scale))
        if mask.ndim == 3:
            return np.stack([self._clean(m, min_size) for m in mask]).astype(np.uint8)
        return self._clean(mask, min_size).astype(np.uint8)

    def _clean(self, mask: np.ndarray, min_size: int) -> np.ndarray:
        if min_size > 0 and mask.any():
            labels, n = ndimage.label(mask, structure=_EIGHT)
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            keep = sizes >= min_size
            keep[0] = False
            mask = keep[labels]
        if self.fill_holes and mask.any():
            mask = ndimage.binary_fill_holes(mask)
        return mask

    def detected(self, mask: np.ndarray) -> bool:
        """The image-level call from one final infection mask."""
        return bool(mask.mean() > self.detect_fraction) if mask.size else False

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / FILENAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def lung_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) or (N, H, W) lung probabilities -> uint8 masks: threshold, the two largest
    components (the two lungs), holes filled."""
    if prob.ndim == 3:
        return np.stack([lung_mask(p, threshold) for p in prob])
    mask = prob > threshold
    if mask.any():
        labels, n = ndimage.label(mask, structure=_EIGHT)
        if n > 2:
            sizes = np.bincount(labels.ravel())[1:]
            keep = np.zeros(n + 1, bool)
            keep[1 + np.argsort(sizes)[-2:]] = True
            mask = keep[labels]
        mask = ndimage.binary_fill_holes(mask)
    return mask.astype(np.uint8)


def load_postprocess(run_dir: str | Path | None, default_threshold: float = 0.5) -> Postprocess:
    """The run's kept decisions, or a plain threshold when it was never tuned."""
    path = Path(run_dir) / FILENAME if run_dir is not None else None
    if path is None or not path.is_file():
        return Postprocess(threshold=default_threshold)
    try:
        data = json.loads(path.read_text())
        return Postprocess(**data)
    except (ValueError, TypeError) as exc:
        raise CovidsegError(f"{path} is damaged ({exc}); delete it and run 'covidseg tune' again") from None
