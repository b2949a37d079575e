"""Golden values for every metric definition, empty cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidseg.metrics import confusion_counts, dice_iou, negatives_with_false_positives, pooled, summarize

# Shapes: (N=1, H=2, W=2) masks.
T = np.array([[[1, 1], [0, 0]]])
P = np.array([[[1, 0], [1, 0]]])
EMPTY = np.zeros((1, 2, 2), int)
FULL = np.ones((1, 2, 2), int)


def test_confusion_counts() -> None:
    assert confusion_counts(P, T).tolist() == [[1, 1, 1, 1]]
    assert confusion_counts(EMPTY, EMPTY).tolist() == [[0, 0, 0, 4]]
    assert confusion_counts(FULL, EMPTY).tolist() == [[0, 4, 0, 0]]


@pytest.mark.parametrize(
    "pred,truth,empty_empty,dice,iou",
    [
        (P, T, 1.0, 0.5, 1 / 3),  # tp 1, fp 1, fn 1
        (T, T, 1.0, 1.0, 1.0),
        (EMPTY, T, 1.0, 0.0, 0.0),  # missed infection
        (FULL, EMPTY, 1.0, 0.0, 0.0),  # false alarm on a negative image
        (EMPTY, EMPTY, 1.0, 1.0, 1.0),  # both empty: the policy value
        (EMPTY, EMPTY, 0.0, 0.0, 0.0),
    ],
)
def test_dice_iou_per_image(pred, truth, empty_empty, dice, iou) -> None:
    d, j = dice_iou(confusion_counts(pred, truth), empty_empty)
    assert d[0] == pytest.approx(dice) and j[0] == pytest.approx(iou)


def test_both_empty_is_nan_when_asked() -> None:
    d, j = dice_iou(confusion_counts(EMPTY, EMPTY), math.nan)
    assert math.isnan(d[0]) and math.isnan(j[0])


def test_pooled_sums_pixels_before_dividing() -> None:
    stats = np.concatenate([confusion_counts(P, T), confusion_counts(EMPTY, EMPTY)])
    p = pooled(stats)
    assert p == pytest.approx({"dice": 0.5, "iou": 1 / 3, "pixel_accuracy": 6 / 8, "precision": 0.5, "recall": 0.5})
    nothing = pooled(confusion_counts(EMPTY, EMPTY))
    assert nothing["dice"] == 1.0 and math.isnan(nothing["precision"]) and math.isnan(nothing["recall"])


def test_negatives_with_false_positives() -> None:
    stats = np.concatenate([confusion_counts(FULL, EMPTY), confusion_counts(EMPTY, EMPTY), confusion_counts(P, T)])
    assert negatives_with_false_positives(stats) == 0.5
    assert math.isnan(negatives_with_false_positives(confusion_counts(P, T)))


def test_summary_every_definition() -> None:
    # Three images: a COVID-19 image half right, a Normal image correctly empty, a Non-COVID false alarm.
    stats = np.concatenate([confusion_counts(P, T), confusion_counts(EMPTY, EMPTY), confusion_counts(FULL, EMPTY)])
    s = summarize(stats, ["COVID-19", "Normal", "Non-COVID"], threshold=0.5, split="Val")
    assert s["images"] == 3 and s["split"] == "Val" and s["threshold"] == 0.5
    # pooled: tp 1, fp 1 + 4, fn 1, tn 1 + 4 + 0
    assert s["pooled"]["dice"] == pytest.approx(2 / 8)
    assert s["pooled"]["iou"] == pytest.approx(1 / 7)
    assert s["pooled"]["pixel_accuracy"] == pytest.approx(6 / 12)
    assert s["per_image"]["dice"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert s["per_image"]["iou"] == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)
    assert s["per_image_covid"] == pytest.approx({"dice": 0.5, "iou": 1 / 3, "images": 1})
    assert s["negatives_with_false_positives"] == 0.5
    assert s["groups"]["Normal"]["dice"] == 1.0 and s["groups"]["Non-COVID"]["dice"] == 0.0
    # Undefined ratios are None, so summary.json stays strict JSON.
    assert s["groups"]["Normal"]["pooled"]["precision"] is None
    assert s["groups"]["COVID-19"]["negatives_with_false_positives"] is None
    nan_policy = summarize(stats, ["COVID-19", "Normal", "Non-COVID"], 0.5, empty_empty=math.nan)
    assert nan_policy["per_image"]["dice"] == pytest.approx(0.25)  # the both-empty image left out
