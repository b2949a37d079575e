"""Post-processing settings and their application at an image's own size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from covidseg.errors import ConfigError, CovidsegError
from covidseg.inference.postprocess import (
    Postprocess,
    box,
    call_rule,
    fill_holes,
    finalize,
    load_postprocess,
    lung_mask,
    read_postprocess,
    resolve_postprocess,
    upsample,
)


def test_threshold_components_and_holes() -> None:
    prob = np.zeros((10, 10), np.float32)
    prob[1:6, 1:6] = 0.9  # a 25-pixel square with a hole
    prob[3, 3] = 0.1
    prob[8, 8] = 0.9  # a lone pixel
    plain = Postprocess(threshold=0.5).apply(prob)
    assert plain.sum() == 24 + 1 and plain.dtype == np.uint8
    # The minimum component is a share of the image: 2% of 100 pixels = 2 pixels.
    cleaned = Postprocess(threshold=0.5, min_component_share=0.02, fill_holes=True).apply(prob)
    assert cleaned.sum() == 25 and cleaned[8, 8] == 0 and cleaned[3, 3] == 1
    assert Postprocess(threshold=0.05).apply(prob).sum() == 26  # the low pixel of the hole counts too
    # Diagonal neighbours are one component (8-connectivity): 4 pixels of 16 survive a 25% rule.
    diag = np.eye(4, dtype=np.float32)
    assert Postprocess(min_component_share=0.25).apply(diag).sum() == 4
    assert Postprocess(min_component_share=0.3).apply(diag).sum() == 0  # 5 pixels needed
    # The same share on a larger image is a larger pixel count.
    assert Postprocess(min_component_share=0.02).min_component_pixels(400 * 400) == 3200


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7, 0.9])
def test_fill_holes_is_scipy_s_binary_fill_holes(density: float) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(int(density * 100))
    for shape in [(1, 1), (1, 9), (6, 6), (64, 48), (200, 300)]:
        for smooth in (False, True):
            mask = rng.random(shape) < density
            if smooth and min(shape) > 4:
                mask = ndimage.binary_opening(mask)  # blobs with real holes, not only noise
            assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask)), (shape, smooth)
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    ring[0, :] = True  # and a band along the edge, which closes nothing
    filled = fill_holes(ring)
    assert filled[4, 4] and not filled[1, 4] and filled.sum() == ring.sum() + 1


def _blobs_in_part(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    """Random blobs inside a random part of the image (touching its edge or not)."""
    from scipy import ndimage

    mask = np.zeros(shape, bool)
    y0, x0 = rng.integers(0, shape[0] // 2), rng.integers(0, shape[1] // 2)
    y1, x1 = rng.integers(y0 + 1, shape[0] + 1), rng.integers(x0 + 1, shape[1] + 1)
    part = rng.random((y1 - y0, x1 - x0)) < density
    mask[y0:y1, x0:x1] = ndimage.binary_opening(part) if min(part.shape) > 4 else part
    return mask


def test_labelling_inside_the_masks_box_gives_the_whole_image_results() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for density in (0.3, 0.6, 0.85):
        for shape in ((40, 60), (123, 77)):
            for _ in range(8):
                mask = _blobs_in_part(rng, shape, density)
                assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
                labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
                sizes = np.bincount(labels.ravel(), minlength=n + 1)
                big = sizes >= 6
                big[0] = False
                kept = Postprocess(min_component_share=6 / mask.size).apply(mask.astype(np.float32))
                assert np.array_equal(kept, big[labels])
                two = np.zeros(n + 1, bool)
                two[1 + np.argsort(sizes[1:])[-2:]] = True
                two[0] = False
                assert np.array_equal(lung_mask(mask.astype(np.float32)), ndimage.binary_fill_holes(two[labels]))
    assert box(np.zeros((3, 4), bool)) is None and fill_holes(np.zeros((3, 4))).sum() == 0
    assert box(np.eye(4, dtype=bool)[::-1][1:]) == (slice(0, 3), slice(0, 3))


def test_image_gate_keeps_a_mask_only_when_its_peak_passes() -> None:
    faint_with_peak = np.zeros((6, 6), np.float32)
    faint_with_peak[1:4, 1:4] = 0.4
    faint_with_peak[2, 2] = 0.95  # a faint region with one confident pixel: kept whole at threshold 0.3
    faint = np.where(faint_with_peak > 0, 0.4, 0).astype(np.float32)
    post = Postprocess(threshold=0.3, image_gate=0.9)
    assert post.apply(faint_with_peak).sum() == 9 and post.apply(faint).sum() == 0
    lung = np.ones((6, 6), np.uint8)
    lung[2, 2] = 0  # the peak pixel outside the lung: the rest is faint, so the mask is dropped
    gated = Postprocess(threshold=0.3, image_gate=0.9, lung_gate=True)
    assert gated.apply(faint_with_peak, lung=lung).sum() == 0
    assert Postprocess(threshold=0.3, lung_gate=True).apply(faint_with_peak, lung=lung).sum() == 8


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("threshold", 1.5),
        ("threshold", 0),
        ("threshold", -1),
        ("threshold", math.nan),
        ("threshold", "0.5"),
        ("image_gate", 1.0),
        ("min_component_share", math.inf),
        ("min_component_share", -0.1),
        ("detect_fraction", 2),
        ("fill_holes", "yes"),
        ("tta_hflip", 1),
    ],
)
def test_settings_out_of_range_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        Postprocess(**{key: value})


def test_from_dict_refuses_unknown_keys_and_old_files() -> None:
    assert Postprocess.from_dict({"threshold": 0.3}) == Postprocess(threshold=0.3)
    with pytest.raises(CovidsegError, match="unknown post-processing key"):
        Postprocess.from_dict({"threshold": 0.3, "kidney": True})
    with pytest.raises(CovidsegError, match="older covidseg"):
        Postprocess.from_dict({"threshold": 0.3, "min_component": 8})
    with pytest.raises(CovidsegError, match="JSON object"):
        Postprocess.from_dict(["threshold", 0.3])


def test_one_precedence_flag_then_saved_then_config(tmp_path: Path) -> None:
    assert load_postprocess(tmp_path) is None
    assert resolve_postprocess(None, 0.4, None) == Postprocess(threshold=0.4)
    saved = Postprocess(threshold=0.3, tta_hflip=True)
    assert resolve_postprocess(saved, 0.4, None) == saved
    assert resolve_postprocess(saved, 0.4, 0.7) == Postprocess(threshold=0.7, tta_hflip=True)
    with pytest.raises(ConfigError, match="--threshold"):
        resolve_postprocess(saved, 0.4, 1.5)


def test_postprocess_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"settings": {"threshold": 0.3, "fill_holes": True}, "tuned_for": "balanced"}))
    post, record = read_postprocess(path)
    assert post == Postprocess(threshold=0.3, fill_holes=True) and record["tuned_for"] == "balanced"
    assert load_postprocess(tmp_path) == post
    path.write_text("{not json")
    with pytest.raises(CovidsegError, match="damaged"):
        load_postprocess(tmp_path)
    path.write_text(json.dumps({"settings": {"threshold": 5}}))
    with pytest.raises(CovidsegError, match="threshold"):
        load_postprocess(tmp_path)


def test_lung_mask_keeps_two_largest_and_fills_holes_and_gate() -> None:
    prob = np.zeros((20, 20), np.float32)
    prob[2:18, 2:8] = 0.9
    prob[2:18, 12:18] = 0.9
    prob[8, 4] = 0.1  # a hole
    prob[0, 10] = 0.9  # a speck: a third component
    lung = lung_mask(prob)
    assert lung[0, 10] == 0 and lung[8, 4] == 1 and lung.sum() == 2 * 16 * 6
    inf = np.full((20, 20), 0.8, np.float32)
    gated = Postprocess(lung_gate=True).apply(inf, lung=lung)
    assert gated.sum() == lung.sum()
    assert Postprocess(lung_gate=False).apply(inf, lung=lung).sum() == 400
    assert Postprocess(detect_fraction=0.5).detected(gated) is False
    assert Postprocess(detect_fraction=0.1).detected(gated) is True


def test_finalize_works_at_the_images_own_size() -> None:
    probs = np.zeros((2, 8, 8), np.float32)
    probs[0, 2:6, 2:4] = 0.9  # infection in the left half
    probs[1, 1:7, 1:4] = 0.9  # one lung field
    probs[1, 1:7, 5:7] = 0.9  # the other
    m = finalize(probs, (30, 40), Postprocess(lung_gate=True), ("infection", "lung"))
    assert m.mask.shape == m.lung.shape == m.probability.shape == (30, 40)
    assert m.mask.any() and not (m.mask.astype(bool) & ~m.lung.astype(bool)).any()
    # The probability map is the bilinear enlargement; a map of the right size is kept as is.
    assert np.array_equal(m.probability, upsample(probs[0], 30, 40))
    assert upsample(probs[0], 8, 8) is not None and np.array_equal(upsample(probs[0], 8, 8), probs[0])
    lung_only = finalize(probs[1:], (16, 16), Postprocess(), ("lung",))
    assert np.array_equal(lung_only.mask, lung_only.lung)


def test_the_call_rule_names_a_zero_cutoff_as_any_pixel_and_others_as_a_share() -> None:
    assert call_rule(0.0) == "any predicted infection pixel"
    assert call_rule(0.00784) == "infection on more than 0.784% of the image"
    # A gate empties the mask of an image whose score does not pass it: the call names it too.
    assert call_rule(0.005, 0.05, head=True) == (
        "the image head's COVID-19 probability above 0.05 and infection on more than 0.5% of the image"
    )
    assert call_rule(0.0, 0.9) == "the highest infection probability above 0.9 and any predicted infection pixel"
