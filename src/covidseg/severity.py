"""Infection as a share of the lung, for each lung and both, and a severity grade.

Left and right lungs are the lung mask's largest piece and the largest piece beside it
(:func:`split_lungs`); on a frontal (PA/AP) chest X-ray displayed as usual, the one on the
image's left is the patient's **right** lung. Where the lungs form one piece, it is split at the
middle of its columns; where one lung alone is found, the other has no share and the image no
grade (``lung_split`` in the record: ``components``, ``midline``, ``one_lung`` or ``none``).

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
    patient-left) on a frontal film. The mask's pieces are its 4-connected components.

    - ``components``: the largest piece and the largest other piece that lies beside it, as two
      lungs do (:func:`_side_by_side`; at least :data:`MIN_SECOND_LUNG` of its pixels) are the
      two lungs; every other piece joins the lung whose columns' centre is nearer to its own.
    - ``midline``: no such second piece, and the largest piece spans the image's middle column
      (both lungs in one piece): every lung pixel is split at the middle of its columns.
    - ``one_lung``: no such second piece, and the largest piece lies on one side of the image's
      middle: the whole mask is that side's lung and the other lung is empty (not found). The
      image's middle stands in for the patient's: lungs in one piece far off the film's centre
      count as one lung, and one lung reaching past the middle is split.
    - ``none``: no lung; both masks empty.

    Ties (equal sizes, a piece equally near both lungs) go by the order of the pieces in the
    image (rows first), so a mirrored film can then split differently.
    """
    lung = np.asarray(lung).astype(bool)
    image_left, image_right = np.zeros_like(lung), np.zeros_like(lung)
    b = box(lung)
    if b is None:
        return image_left, image_right, "none"
    labels, _ = ndimage.label(lung[b])
    sizes = np.bincount(labels.ravel())[1:]
    spans = np.asarray([(o[1].start, o[1].stop) for o in ndimage.find_objects(labels)]) + b[1].start
    order = np.argsort(-sizes, kind="stable")
    first = order[0]
    second = next(
        (k for k in order[1:] if sizes[k] >= MIN_SECOND_LUNG * sizes[first] and _side_by_side(spans[first], spans[k])),
        None,
    )
    centres = spans.mean(axis=1)
    if second is not None:
        joins_second = np.abs(centres - centres[second]) < np.abs(centres - centres[first])
        in_second = np.concatenate([[False], joins_second])[labels]
        first_mask, second_mask = (labels > 0) & ~in_second, in_second
        if centres[first] > centres[second]:
            first_mask, second_mask = second_mask, first_mask
        image_left[b], image_right[b] = first_mask, second_mask
        return image_left, image_right, "components"
    middle_of_image = lung.shape[1] / 2
    if spans[first][0] < middle_of_image < spans[first][1]:
        column = np.arange(lung.shape[1])[None, :]
        middle = centres[first]
        return lung & (column < middle), lung & (column >= middle), "midline"
    if centres[first] < middle_of_image:
        return lung, image_right, "one_lung"
    return image_left, lung, "one_lung"


# The smallest second lung, as a share of the largest piece's pixels.
MIN_SECOND_LUNG = 0.02


def _side_by_side(a: np.ndarray, c: np.ndarray) -> bool:
    """Whether two pieces' column spans ([start, stop)) lie side by side, as two lungs do: they
    share at most half of the narrower one's columns."""
    shared = min(a[1], c[1]) - max(a[0], c[0])
    return shared <= min(a[1] - a[0], c[1] - c[0]) / 2


def _percent(infected: np.ndarray, region: np.ndarray) -> float | None:
    area = int(region.sum())
    return round(100.0 * int((infected & region).sum()) / area, 3) if area else None


def quantify(infection: np.ndarray, lung: np.ndarray | None, rule: SeverityRule | None = None) -> dict[str, Any]:
    """Infected share of each lung and of both, the per-lung scores, the total and the grade.

    Infection outside the lung mask is not counted. A percentage is ``None`` where there is no
    lung to measure (no lung mask, no lung in it, or the lung not found: ``lung_split``
    ``one_lung``); the scores, total and grade are ``None`` unless both lungs have a percentage.
    """
    rule = rule or SeverityRule()
    infection = np.asarray(infection).astype(bool)
    lung = np.zeros(infection.shape, bool) if lung is None else np.asarray(lung).astype(bool)
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
