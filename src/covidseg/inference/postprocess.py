"""From probability maps at the network's size to the final masks, at the X-ray's own size.

:func:`finalize` is the one place where this happens, for ``evaluate``, ``tune``, ``predict``,
exported bundles and the report alike:

1. every output's probability map (S x S) is enlarged to the image's own size, bilinear
   (:func:`upsample`);
2. lung (models with a lung output): threshold 0.5, the two largest components, holes filled
   (:func:`lung_mask`);
3. infection (:meth:`Postprocess.apply`), in order: threshold the probability; keep only pixels
   inside the predicted lung (``lung_gate``); the image gate (``image_gate``: the whole mask is
   kept only when the image's score exceeds it, so that a low threshold can draw the extent of an
   infection while the gate decides whether there is one; the score is the probability of the
   network's image-level COVID-19 head where it has one, else the highest infection
   probability, inside the predicted lung when the lung gate is on); remove connected
   components (8-connected) smaller than ``min_component_share`` of the image's pixels; fill
   holes.

``detect_fraction``: the image-level COVID-19 call; an image is called COVID-19 when its final
infection mask covers more than this share of the image (tuned on Val, see
:mod:`covidseg.detection`).

Settings are resolved once (:func:`resolve_postprocess`), in this precedence: a command-line
flag, then the run's ``postprocess.json`` (or the bundle's ``config.json``), then the run's
config (``eval.threshold``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from covidseg.errors import ConfigError, CovidsegError

FILENAME = "postprocess.json"
_EIGHT = np.ones((3, 3), bool)


def box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of a mask's pixels, as the slices of its rows and columns (None when the
    mask is empty). A mask's components and holes lie inside it, so labelling there gives what
    labelling the whole image gives: on a 2,048 x 2,500 film the lungs fill about half of it and
    an infection less."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` of an (H, W) mask (the background 4-connected), found by labelling
    the background once inside the mask's box instead of growing it from the border pixel by pixel:
    the same mask, 7-8 times faster on a 2,048 x 2,500 film (lungs or infection on a fifth of it:
    35-45 ms against 290 ms). Exact: every background pixel on the box's edge touches the image's
    border or the background around the box, which does."""
    out = np.array(mask, dtype=bool)
    b = box(out)
    if b is None:
        return out
    background, n = ndimage.label(~out[b])
    if n:
        edges = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        outside = np.zeros(n + 1, dtype=bool)
        outside[edges] = True
        outside[0] = False  # label 0 is the mask itself
        out[b] = ~outside[background]
    return out


def keep_components(mask: np.ndarray, select: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``mask`` (bool) with only the 8-connected components that ``select`` keeps: it gets their
    pixel counts by label (index 0: the background inside the box, never kept) and returns a bool
    array of which to keep. Labelled inside the mask's box, in the order a whole-image labelling gives."""
    out = np.zeros(mask.shape, dtype=bool)
    b = box(mask)
    if b is None:
        return out
    labels, n = ndimage.label(mask[b], structure=_EIGHT)
    keep = np.asarray(select(np.bincount(labels.ravel(), minlength=n + 1)), dtype=bool)
    keep[0] = False
    out[b] = mask[b] if keep[1:].all() else keep[labels]
    return out


def _check_unit(name: str, value: Any, low_open: bool) -> float:
    """A finite number in (0, 1) (``low_open``) or [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v >= 1 or v < 0 or (low_open and v == 0):
        raise ConfigError(f"{name} must lie in {'(0' if low_open else '[0'}, 1), got {value!r}")
    return v


@dataclass(frozen=True)
class Postprocess:
    """What to do between probabilities and the final mask (defaults: plain threshold 0.5)."""

    threshold: float = 0.5
    tta_hflip: bool = False
    lung_gate: bool = False
    image_gate: float = 0.0
    min_component_share: float = 0.0
    fill_holes: bool = False
    detect_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_unit("threshold", self.threshold, low_open=True)
        _check_unit("image_gate", self.image_gate, low_open=False)
        _check_unit("min_component_share", self.min_component_share, low_open=False)
        _check_unit("detect_fraction", self.detect_fraction, low_open=False)
        for name in ("tta_hflip", "lung_gate", "fill_holes"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: Any, source: str = "post-processing settings") -> Postprocess:
        """Validated settings from a JSON object; unknown or missing-typed keys are refused.

        Raises:
            CovidsegError: not an object, an unknown key, or a value of the wrong type or range.
        """
        if not isinstance(data, dict):
            raise CovidsegError(f"{source}: expected a JSON object of post-processing settings")
        if "min_component" in data:
            raise CovidsegError(
                f"{source} was written by an older covidseg (min_component in network pixels); "
                "run 'covidseg tune' again"
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CovidsegError(f"{source}: unknown post-processing key(s) {unknown}; valid: {sorted(names)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise CovidsegError(f"{source}: {exc}") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def min_component_pixels(self, pixels: int) -> int:
        """The smallest component kept, in pixels of an image with this many pixels."""
        return int(round(self.min_component_share * pixels))

    def apply(self, prob: np.ndarray, lung: np.ndarray | None = None, score: float | None = None) -> np.ndarray:
        """(H, W) infection probabilities -> the uint8 {0, 1} mask of the same shape.

        ``lung``: the predicted lung mask (same shape), used when ``lung_gate`` is on.
        ``score``: the image head's probability, when the network has one (the image gate's score).
        """
        mask = prob > self.threshold
        gated = self.lung_gate and lung is not None
        if gated:
            lung = np.asarray(lung).astype(bool)
            mask &= lung
        if self.image_gate > 0:
            gate_score = np.float32(score) if score is not None else self.peak(prob, lung if gated else None)
            if not gate_score > np.float32(self.image_gate):
                mask[:] = False
        min_size = self.min_component_pixels(mask.size)
        if min_size > 1:
            mask = keep_components(mask, lambda sizes: sizes >= min_size)
        if self.fill_holes:
            mask = fill_holes(mask)  # an empty mask comes back as it is (no box)
        return mask.astype(np.uint8)

    @staticmethod
    def peak(prob: np.ndarray, lung: np.ndarray | None) -> np.float32:
        """The image gate's score: the highest probability (inside ``lung`` when given; 0 if empty)."""
        inside = prob[lung.astype(bool)] if lung is not None else prob
        return np.float32(inside.max(initial=0))

    def call_rule(self, targets: Sequence[str]) -> str:
        """The COVID-19 call these settings make, in words, for a network with these outputs (the
        gate's score is the image head's probability when ``covid`` is one of them)."""
        return call_rule(self.detect_fraction, self.image_gate, "covid" in targets)

    def detected(self, mask: np.ndarray) -> bool:
        """The image-level call from one final infection mask."""
        return bool(mask.mean() > self.detect_fraction) if mask.size else False


def call_rule(cutoff: float, image_gate: float = 0.0, head: bool = False) -> str:
    """The image-level COVID-19 call in words, for a ``detect_fraction`` of ``cutoff``; with an
    ``image_gate`` the call also needs the image's score above it (else the mask is emptied): the
    COVID-19 head's probability (``head``), else the highest infection probability."""
    share = f"infection on more than {100 * cutoff:.3g}% of the image"
    if cutoff <= 0:
        share = "any predicted infection pixel"
    if image_gate <= 0:
        return share
    score = "the image head's COVID-19 probability" if head else "the highest infection probability"
    return f"{score} above {image_gate:.3g} and {share}"


def lung_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) lung probabilities -> uint8 mask: threshold, the two largest components (the two
    lungs), holes filled."""
    return fill_holes(keep_components(prob > threshold, _two_largest)).astype(np.uint8)


def _two_largest(sizes: np.ndarray) -> np.ndarray:
    """Which of the components (pixel counts; index 0 the background) are the two largest."""
    keep = np.zeros(len(sizes), bool)
    keep[1 + np.argsort(sizes[1:])[-2:]] = True
    return keep


def upsample(prob: np.ndarray, h: int, w: int) -> np.ndarray:
    """One (S, S) probability map at (h, w), bilinear, float32 (unchanged when the size matches)."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape == (h, w):
        return prob
    return np.asarray(Image.fromarray(prob, mode="F").resize((w, h), Image.BILINEAR))


@dataclass
class Masks:
    """The final masks of one image at its own size."""

    mask: np.ndarray  # (H, W) uint8 {0, 1}: the first output (infection, or lung for lung-only models)
    probability: np.ndarray  # (H, W) float32: the first output's probability
    lung: np.ndarray | None  # (H, W) uint8 {0, 1}, for models with a lung output
    score: float | None = None  # the image-level COVID-19 head's probability, for models with one


def head_score(probs: np.ndarray, targets: tuple[str, ...]) -> float | None:
    """The image-level head's probability from (C, S, S) probabilities (its channel holds one value)."""
    return float(np.mean(probs[targets.index("covid")])) if "covid" in targets else None


def finalize(
    probs: np.ndarray,
    shape: tuple[int, int],
    post: Postprocess,
    targets: tuple[str, ...],
    lung: np.ndarray | None = None,
) -> Masks:
    """(C, S, S) probabilities of one image -> its final masks at ``shape`` (H, W).

    ``lung``: this image's lung mask when already computed from the same probabilities (tuning
    reuses it across trials); it is derived here otherwise.
    """
    h, w = shape
    first = upsample(probs[0], h, w)
    if lung is None and "lung" in targets:
        k = targets.index("lung")
        lung = lung_mask(first if k == 0 else upsample(probs[k], h, w))
    if targets[0] == "lung":
        return Masks(lung, first, lung)
    score = head_score(probs, targets)
    return Masks(post.apply(first, lung, score), first, lung, score)


def read_postprocess(path: str | Path) -> tuple[Postprocess, dict[str, Any]]:
    """The settings in a ``postprocess.json`` and the whole record (steps, cross-fitting).

    Raises:
        CovidsegError: the file is unreadable, not JSON, or holds invalid settings.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CovidsegError(f"{path} is damaged ({exc}); delete it and run 'covidseg tune' again") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise CovidsegError(f"{path} holds no 'settings' object; run 'covidseg tune' again")
    return Postprocess.from_dict(record["settings"], str(path)), record


def load_postprocess(run_dir: str | Path | None) -> Postprocess | None:
    """The run's tuned settings, or None when it was never tuned."""
    if run_dir is None:
        return None
    path = Path(run_dir) / FILENAME
    return read_postprocess(path)[0] if path.is_file() else None


def resolve_postprocess(saved: Postprocess | None, config_threshold: float, threshold: float | None) -> Postprocess:
    """The one precedence: a ``threshold`` flag > the saved settings > the config's threshold."""
    post = saved if saved is not None else Postprocess(threshold=config_threshold)
    if threshold is not None:
        try:
            post = replace(post, threshold=threshold)
        except ConfigError as exc:
            raise ConfigError(f"--threshold: {exc}") from None
    return post
