from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidseg.cli import main
from covidseg.engine.fit import fit
from covidseg.evaluation import evaluate_run
from covidseg.postprocess import Postprocess, load_postprocess
from covidseg.predict import Predictor


def test_threshold_components_and_holes() -> None:
    prob = np.zeros((10, 10), np.float32)
    prob[1:6, 1:6] = 0.9  # a 25-pixel square with a hole
    prob[3, 3] = 0.1
    prob[8, 8] = 0.9  # a lone pixel
    plain = Postprocess(threshold=0.5).apply(prob)
    assert plain.sum() == 24 + 1 and plain.dtype == np.uint8
    cleaned = Postprocess(threshold=0.5, min_component=2, fill_holes=True).apply(prob)
    assert cleaned.sum() == 25 and cleaned[8, 8] == 0 and cleaned[3, 3] == 1
    assert Postprocess(threshold=0.05).apply(prob).sum() == 26  # the low pixel of the hole counts too
    # Diagonal neighbours are one component (8-connectivity).
    diag = np.eye(4, dtype=np.float32)
    assert Postprocess(min_component=4).apply(diag).sum() == 4
    # A batch is cleaned image by image; area_scale scales the minimum size.
    batch = np.stack([prob, prob])
    assert Postprocess(min_component=2).apply(batch).shape == (2, 10, 10)
    assert Postprocess(min_component=10).apply(prob, area_scale=3.0).sum() == 0


def test_image_gate_keeps_a_mask_only_when_its_peak_passes() -> None:
    prob = np.zeros((3, 6, 6), np.float32)
    prob[0, 1:4, 1:4] = 0.4
    prob[0, 2, 2] = 0.95  # a faint region with one confident pixel: kept whole at threshold 0.3
    prob[1, 1:4, 1:4] = 0.4  # faint only: dropped
    prob[2, 0, 0] = 0.95  # confident, but outside the lung when the lung gate is on
    post = Postprocess(threshold=0.3, image_gate=0.9)
    assert post.apply(prob).sum(axis=(1, 2)).tolist() == [9, 0, 1]
    assert post.apply(prob[1]).sum() == 0 and post.apply(prob[0]).sum() == 9
    lung = np.ones_like(prob, np.uint8)
    lung[2, 0, 0] = 0
    lung[0, 2, 2] = 0  # the peak pixel outside the lung: the rest of image 0 is faint, so dropped
    gated = Postprocess(threshold=0.3, image_gate=0.9, lung_gate=True).apply(prob, lung=lung)
    assert gated.sum(axis=(1, 2)).tolist() == [0, 0, 0]
    assert Postprocess(threshold=0.3).apply(prob).sum(axis=(1, 2)).tolist() == [9, 9, 1]


def test_load_defaults_and_damaged_file(tmp_path: Path) -> None:
    assert load_postprocess(tmp_path, 0.4) == Postprocess(threshold=0.4)
    Postprocess(threshold=0.3, tta_hflip=True).save(tmp_path)
    assert load_postprocess(tmp_path).tta_hflip is True
    (tmp_path / "postprocess.json").write_text("{not json")
    with pytest.raises(Exception, match="damaged"):
        load_postprocess(tmp_path)


def test_tune_keeps_only_improvements_and_evaluate_uses_them(tiny_cfg, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    fit(tiny_cfg(**{"train.epochs": 3}), run)
    before = evaluate_run(run, split="Val", panel=0)
    assert main(["tune", str(run), "--metric", "per_image", "--no-progress"]) == 0
    assert "decisions written" in capsys.readouterr().out
    saved = json.loads((run / "postprocess.json").read_text())
    steps = [s for s in saved["steps"] if not s.get("trial")]
    names = ["baseline", "tta_hflip", "threshold", "image_gate", "min_component", "fill_holes", "detect_fraction"]
    assert [s["step"] for s in steps] == names
    # Kept steps raise the tuned number; the final score is the best seen among kept steps.
    best = steps[0]["per_image"]
    for s in steps[1:-1]:
        assert s["kept"] == (s["per_image"] > best + 1e-6)
        best = max(best, s["per_image"]) if s["kept"] else best
    after = evaluate_run(run, split="Val", panel=0)
    assert after["postprocess"]["threshold"] == saved["threshold"]
    assert after["detection"]["cutoff"] == saved["detect_fraction"]
    assert after["per_image"]["dice"] == pytest.approx(best, abs=1e-6)
    assert after["per_image"]["dice"] >= before["per_image"]["dice"] - 1e-9
    plain = evaluate_run(run, split="Val", panel=0, postprocess=False)
    assert plain["per_image"]["dice"] == pytest.approx(before["per_image"]["dice"])
    p = Predictor.from_run(run)
    assert p.post.threshold == saved["threshold"] and p.post.tta_hflip == saved["tta_hflip"]
    assert p.post.image_gate == saved["image_gate"]
    for s in saved["steps"][:-1]:
        assert s["balanced"] == pytest.approx((s["per_image"] + s["per_image_covid"]) / 2)
    gate_trials = [s for s in saved["steps"] if s["step"] == "image_gate" and s.get("trial")]
    assert gate_trials and all(
        float(s["setting"].split()[0]) > float(s["setting"].split()[-1][:-1]) for s in gate_trials
    )


def test_lung_mask_keeps_two_largest_and_fills_holes_and_gate() -> None:
    from covidseg.postprocess import lung_mask

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
