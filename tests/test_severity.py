"""Infected share per lung, the extent scores and the grade; detection metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from covidseg.detection import best_cutoff, detection_summary, infected_share, roc_auc
from covidseg.errors import ConfigError
from covidseg.severity import SeverityRule, quantify, split_lungs


def _lungs() -> np.ndarray:
    lung = np.zeros((40, 40), np.uint8)
    lung[5:35, 4:16] = 1  # image left: the patient's right lung, 360 px
    lung[5:35, 24:36] = 1  # image right: the patient's left lung, 360 px
    return lung


def test_percent_per_lung_scores_and_grade() -> None:
    lung = _lungs()
    inf = np.zeros_like(lung)
    inf[5:14, 4:16] = 1  # 108 px = 30% of the patient's right lung
    inf[0:3, 0:40] = 1  # outside both lungs: not counted
    r = quantify(inf, lung)
    assert r["right_lung_infected_share_pct"] == 30.0 and r["left_lung_infected_share_pct"] == 0.0
    assert r["infected_share_pct"] == 15.0 and r["infected_lung_pixels"] == 108 and r["lung_pixels"] == 720
    assert (r["right_score"], r["left_score"], r["severity_score"], r["severity"]) == (2, 0, 2, "mild")
    inf[5:35, 24:36] = 1  # all of the left lung
    r = quantify(inf, lung)
    assert (r["right_score"], r["left_score"], r["severity_score"], r["severity"]) == (2, 4, 6, "severe")
    assert quantify(np.zeros_like(lung), lung)["severity"] == "none"


def test_extent_score_boundaries_follow_the_rule() -> None:
    rule = SeverityRule()
    assert [rule.lung_score(p) for p in (0, 0.01, 24.99, 25, 49.9, 50, 75, 100)] == [0, 1, 1, 2, 2, 3, 4, 4]
    assert [rule.grade(t) for t in range(9)] == ["none", "mild", "mild"] + ["moderate"] * 3 + ["severe"] * 3
    custom = SeverityRule.from_text("10,20,30", "2,4,8")
    assert custom.lung_score(15) == 2 and custom.grade(3) == "mild"
    for bad in ("25,50", "50,25,75", "a,b,c", "0,1,2"):
        with pytest.raises(ConfigError, match="severity_extent"):
            SeverityRule.from_text(bad, "1,3,6")


def test_touching_lungs_split_at_the_midline_and_no_lung() -> None:
    lung = _lungs()
    lung[20:22, 16:24] = 1  # a bridge: one component
    right, left, how = split_lungs(lung)
    assert how == "midline" and right[:, 20:].sum() == 0 and left[:, :20].sum() == 0
    assert right.sum() + left.sum() == lung.sum()
    r = quantify(np.ones_like(lung), np.zeros_like(lung))
    assert r["infected_share_pct"] is None and r["severity"] is None and r["lung_split"] == "none"


def test_lungs_in_part_of_a_large_film_split_into_full_size_masks() -> None:
    film = np.zeros((300, 500), np.uint8)
    film[100:140, 230:270] = _lungs()  # the lungs in the lower middle of the film
    film[105, 234] = 0  # the image-left field one pixel smaller: 359 px
    film[250, 480] = 1  # a speck: a third piece, nearer the image-right lung
    right, left, how = split_lungs(film)
    assert how == "components" and right.shape == left.shape == film.shape
    assert right.sum() == 359 and np.array_equal(right[100:140, 230:250], film[100:140, 230:250])
    assert left.sum() == 361 and np.array_equal(left[100:140, 250:270], film[100:140, 250:270]) and left[250, 480]
    one = film.copy()
    one[120, 246:254] = 1  # a bridge: one piece
    one[250, 480] = 0
    right, left, how = split_lungs(one)
    assert how == "midline" and right[:, 250:].sum() == 0 and left[:, :250].sum() == 0
    assert right.sum() + left.sum() == one.sum()


def test_a_speck_or_a_fragment_is_not_taken_for_the_other_lung() -> None:
    joined = _lungs()
    joined[20:22, 16:24] = 1  # the two lungs in one piece
    for extra in ((slice(36, 39), slice(6, 12)), (slice(1, 3), slice(37, 39))):  # a fragment below, a speck beside
        lung = joined.copy()
        lung[extra] = 1
        right, left, how = split_lungs(lung)
        assert how == "midline" and right.sum() + left.sum() == lung.sum()
        assert right[:, 20:].sum() == 0 and left[:, :20].sum() == 0  # the middle of the joined lungs, not of the box
    small = _lungs()
    small[5:35, 24:36] = 0
    small[28:35, 28:34] = 1  # a much smaller image-right lung (42 px, 12% of the other), beside the first
    right, left, how = split_lungs(small)
    assert how == "components" and right.sum() == 360 and left.sum() == 42


def test_a_lung_in_two_pieces_joins_the_nearer_lung_and_one_lung_alone_has_no_grade() -> None:
    lung = _lungs()
    lung[20, 4:16] = 0  # the image-left lung in two pieces (180 and 168 px), each smaller than the other lung
    right, left, how = split_lungs(lung)
    assert how == "components" and right.sum() == 348 and left.sum() == 360 and right[:, 20:].sum() == 0
    alone = _lungs()
    alone[:, :20] = 0  # only the image-right lung (the patient's left) was found
    right, left, how = split_lungs(alone)
    assert how == "one_lung" and right.sum() == 0 and left.sum() == 360
    r = quantify(alone, alone)
    assert r["left_lung_infected_share_pct"] == 100.0 and r["right_lung_infected_share_pct"] is None
    assert r["severity"] is None and r["lung_split"] == "one_lung"


def test_the_split_of_a_mirrored_film_is_the_mirror_of_the_split() -> None:
    rng = np.random.default_rng(0)
    cases = [_lungs()]
    for _ in range(40):  # random rectangles: one, two or three pieces, touching or not (ties go by scan order,
        # so a film with equal pieces could split asymmetrically; these 40 have none that matter)
        m = np.zeros((40, 40), bool)
        for _ in range(rng.integers(1, 4)):
            y, x, h, w = rng.integers(0, 30), rng.integers(0, 30), rng.integers(1, 11), rng.integers(1, 11)
            m[y : y + h, x : x + w] = True
        cases.append(m)
    for m in cases:
        right, left, how = split_lungs(m)
        m_right, m_left, m_how = split_lungs(m[:, ::-1])
        assert how == m_how
        if how != "midline":  # the middle column of an odd-width piece goes to the image's left side
            assert np.array_equal(m_right, left[:, ::-1]) and np.array_equal(m_left, right[:, ::-1])
        assert (right | left).sum() == m.sum() and not (right & left).any()


def test_roc_auc_equals_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)
    labels = rng.random(40) < 0.5
    pairs = list(itertools.product(scores[labels], scores[~labels]))
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert np.isnan(roc_auc(scores, np.ones(40, bool)))


def test_cutoff_and_summary_per_group() -> None:
    stats = np.array([[30, 10, 0, 60], [0, 5, 10, 85], [0, 0, 0, 100], [0, 2, 0, 98], [0, 20, 0, 80]])
    shares = infected_share(stats)
    assert shares.tolist() == [0.4, 0.05, 0.0, 0.02, 0.2]
    groups = ["COVID-19", "COVID-19", "Normal", "Normal", "Non-COVID"]
    cut = best_cutoff(shares, np.array(groups) == "COVID-19")
    assert cut == 0.02  # calls both COVID-19 images (0.4, 0.05) and misses only the 0.2 Non-COVID one
    s = detection_summary(shares, groups, cut)
    assert s["sensitivity"] == 1.0 and s["specificity"] == pytest.approx(2 / 3)
    assert s["groups"]["Normal"]["specificity"] == 1.0 and s["groups"]["Non-COVID"]["specificity"] == 0.0
    assert s["groups"]["Normal"]["roc_auc_vs_covid"] == 1.0
    assert s["roc_auc"] == pytest.approx(5 / 6)
