"""Infection as a share of the lung, for each lung and both, and a severity grade.

Left and right lungs are the two largest connected components of the lung mask; on a frontal
(PA/AP) chest X-ray displayed as usual, the component on the image's left is the patient's
**right** lung. Where the lungs touch and form one component, it is split at the middle column
of its bounding box (``split: "midline"`` in the record).

Grading (defaults in :class:`SeverityRule`):

- each lung scores 0-4 from the infected share of its area: 0 none, 1 below 25%, 2 from 25%,
  3 from 50%, 4 from 75%. This is the chest X-ray extent score of Wong et al., "Frequency and
  distribution of chest radiographic findings in patients positive for COVID-19", Radiology
  296(2), 2020 (a modified RALE score), computed here from masks instead of by eye;
- the total (0-8) gives the grade: 0 ``none``, 1-2 ``mild``, 3-5 ``moderate``, 6-8 ``severe``.
  These bands are covidseg's default, not a published standard; change them with
  ``eval.severity_extent`` and ``eval.severity_grades`` (thresholds, comma separated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from covidseg.errors import ConfigError
from covidseg.inference.postprocess import box

GRADES = ("none", "mild", "moderate", "severe")


def parse_bands(text: str, count: int, name: str) -> tuple[float, ...]:
    """``"25,50,75"`` -> (25.0, 50.0, 75.0), checked to be ``count`` increasing numbers."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(f"{name} must be {count} comma-separated numbers, got {text!r}") from None
    if len(values) != count or any(b <= a for a, b in zip(values, values[1:])) or values[0] <= 0:
        raise ConfigError(f"{name} must be {count} increasing positive numbers, got {text!r}")
    return values


@dataclass(frozen=True)
class SeverityRule:
    """``extent``: per-lung infected-share thresholds in percent for scores 2, 3 and 4 (any
    infected pixel scores at least 1); ``grades``: total-score thresholds for mild, moderate and
    severe."""

    extent: tuple[float, float, float] = (25.0, 50.0, 75.0)
    grades: tuple[float, float, float] = (1.0, 3.0, 6.0)

    @classmethod
    def from_text(cls, extent: str, grades: str) -> SeverityRule:
        return cls(parse_bands(extent, 3, "eval.severity_extent"), parse_bands(grades, 3, "eval.severity_grades"))

    def lung_score(self, percent: float) -> int:
        if percent <= 0:
            return 0
        return 1 + sum(percent >= b for b in self.extent)

    def grade(self, total: int) -> str:
        return GRADES[sum(total >= b for b in self.grades)]

    def as_dict(self) -> dict[str, Any]:
        return {"extent_percent": list(self.extent), "grade_totals": list(self.grades), "grade_names": list(GRADES)}


def split_lungs(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(image-left mask, image-right mask, how) from a lung mask, that is (patient-right,
    patient-left) on a frontal film.

    ``components``: the two largest components (4-connected, found inside the mask's box) when
    they lie side by side, as two lungs do: the smaller one shares at most half of its columns
    with the larger and has at least :data:`MIN_SECOND_LUNG` of its pixels. Otherwise (the lungs
    in one piece, with or without a speck or a fragment beside or below them) ``midline``: every
    lung pixel split at the middle of the largest component's columns. ``none``: no lung, empty
    masks."""
    lung = np.asarray(lung).astype(bool)
    image_left, image_right = np.zeros_like(lung), np.zeros_like(lung)
    b = box(lung)
    if b is None:
        return image_left, image_right, "none"
    labels, n = ndimage.label(lung[b])
    sizes = np.bincount(labels.ravel())[1:]
    order = 1 + np.argsort(sizes)[::-1]
    columns = [np.flatnonzero((labels == k).any(axis=0)) for k in order[:2]]
    if n >= 2 and _side_by_side(columns[0], columns[1], sizes[order[1] - 1] / sizes[order[0] - 1]):
        ma, mc = labels == order[0], labels == order[1]
        if np.nonzero(ma)[1].mean() >= np.nonzero(mc)[1].mean():
            ma, mc = mc, ma
        image_left[b], image_right[b] = ma, mc
        return image_left, image_right, "components"
    middle = b[1].start + (columns[0][0] + columns[0][-1] + 1) / 2
    column = np.arange(lung.shape[1])[None, :]
    return lung & (column < middle), lung & (column >= middle), "midline"


# The smallest second component, as a share of the largest one's pixels, taken for the other lung.
MIN_SECOND_LUNG = 0.02


def _side_by_side(larger: np.ndarray, smaller: np.ndarray, size_ratio: float) -> bool:
    """Whether two components (their sorted column indices) can be the two lungs."""
    shared = min(larger[-1], smaller[-1]) - max(larger[0], smaller[0]) + 1
    return size_ratio >= MIN_SECOND_LUNG and shared <= (smaller[-1] - smaller[0] + 1) / 2


def _percent(infected: np.ndarray, region: np.ndarray) -> float | None:
    area = int(region.sum())
    return round(100.0 * int((infected & region).sum()) / area, 3) if area else None


def quantify(infection: np.ndarray, lung: np.ndarray, rule: SeverityRule | None = None) -> dict[str, Any]:
    """Infected share of each lung and of both, the per-lung scores, the total and the grade.

    Infection outside the lung mask is not counted. Percentages are ``None`` where there is no
    lung to measure (and then the scores and grade are ``None`` too).
    """
    rule = rule or SeverityRule()
    infection = np.asarray(infection).astype(bool)
    lung = np.asarray(lung).astype(bool)
    right, left, how = split_lungs(lung)
    out: dict[str, Any] = {
        "lung_pixels": int(lung.sum()),
        "infected_lung_pixels": int((infection & lung).sum()),
        "infected_share_pct": _percent(infection, lung),
        "right_lung_infected_share_pct": _percent(infection, right),
        "left_lung_infected_share_pct": _percent(infection, left),
        "lung_split": how,
    }
    if out["right_lung_infected_share_pct"] is None or out["left_lung_infected_share_pct"] is None:
        out.update({"right_score": None, "left_score": None, "severity_score": None, "severity": None})
        return out
    rs, ls = rule.lung_score(out["right_lung_infected_share_pct"]), rule.lung_score(out["left_lung_infected_share_pct"])
    out.update({"right_score": rs, "left_score": ls, "severity_score": rs + ls, "severity": rule.grade(rs + ls)})
    return out
