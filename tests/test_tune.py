"""``covidseg tune``: trials score what ``predict`` delivers, and the cross-fitted estimate."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_run
from covidseg.cli import TUNE_METRICS, main
from covidseg.evaluation import eval_name, evaluate_run, open_split
from covidseg.inference.builtin import sha256
from covidseg.inference.postprocess import Postprocess, call_rule
from covidseg.inference.predictor import open_run
from covidseg.scoring import load_truth
from covidseg.tune import METRICS, THRESHOLDS, _log_result, collect, halves, stats_generic, stats_of


def test_cli_offers_the_metrics_tune_knows() -> None:
    assert TUNE_METRICS == METRICS


@pytest.fixture(scope="module")
def tune_data(two_output_run: Path):
    predictor, cfg, _ = open_run(two_output_run, postprocess=False)
    split = open_split(cfg, "Val")
    truth = load_truth(split.dataset, "native")
    return collect(predictor, split.dataset, truth, 4, cfg.eval.empty_empty)


def test_counted_trials_equal_masks_made_pixel_by_pixel(tune_data) -> None:
    """Threshold and gate trials are scored from counts; they must equal the full path."""
    idx = np.arange(len(tune_data))
    peaks = np.concatenate([tune_data.peak[k] for k in tune_data.peak])
    gates = [float(np.quantile(peaks, q)) for q in (0.25, 0.5, 0.75)]
    checked = 0
    for tta in (False, True):
        for lung_gate in (False, True):
            for t in THRESHOLDS[::4]:
                for g in [0.0, *gates]:
                    post = Postprocess(threshold=t, tta_hflip=tta, lung_gate=lung_gate, image_gate=min(g, 0.999))
                    assert np.array_equal(stats_of(tune_data, post, idx), stats_generic(tune_data, post, idx)), post
                    checked += 1
    assert checked == 2 * 2 * len(THRESHOLDS[::4]) * 4
    # Some of these settings predict infection and some gate it away: the comparison is not vacuous.
    post = Postprocess(threshold=THRESHOLDS[0])
    assert stats_of(tune_data, post, idx)[:, :2].sum() > 0


def test_halves_are_disjoint_stratified_and_cover() -> None:
    groups = np.array([0] * 7 + [1] * 4 + [2] * 5)
    a, b = halves(groups)
    assert len(np.intersect1d(a, b)) == 0 and sorted(np.concatenate([a, b]).tolist()) == list(range(16))
    for g in range(3):
        assert abs(int((groups[a] == g).sum()) - int((groups[b] == g).sum())) <= 1
    assert np.array_equal(halves(groups)[0], a)  # seeded


def test_tune_then_evaluate_scores_the_same_as_tune_in_sample(two_output_run: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(two_output_run, tmp_path / "run")
    plain = evaluate_run(run, split="Val", panel=0, postprocess=False)
    assert main(["tune", str(run), "--metric", "balanced", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cross-fitted" in out and "in-sample" in out
    record = json.loads((run / "postprocess.json").read_text())
    steps = [s["step"] for s in record["steps"] if not s.get("trial")]
    assert steps == ["baseline", "tta_hflip", "lung_gate", "threshold", "image_gate", "min_component",
                     "fill_holes", "detect_fraction"]  # fmt: skip
    # The baseline trial is the untuned pipeline, scored independently by evaluate.
    base = record["steps"][0]
    assert base["per_image"] == pytest.approx(plain["per_image"]["dice"], abs=1e-9)
    assert base["pooled"] == pytest.approx(plain["pooled"]["dice"], abs=1e-9)
    # With the tuned settings, evaluate (the predict path) scores what tune found in-sample.
    tuned = evaluate_run(run, split="Val", panel=0)
    cf = record["cross_fit"]
    assert tuned["postprocess"] == record["settings"]
    assert tuned["per_image"]["dice"] == pytest.approx(cf["in_sample"]["per_image"], abs=1e-9)
    assert tuned["per_image_covid"]["dice"] == pytest.approx(cf["in_sample"]["per_image_covid"], abs=1e-9)
    assert tuned["detection"]["sensitivity"] == pytest.approx(cf["in_sample"]["detection"]["sensitivity"])
    # Greedy tuning never lowers the in-sample score it optimises.
    balanced = (tuned["per_image"]["dice"] + tuned["per_image_covid"]["dice"]) / 2
    assert balanced >= (plain["per_image"]["dice"] + plain["per_image_covid"]["dice"]) / 2 - 1e-9
    # The cross-fitted estimate scores every image once, each with settings chosen without it.
    assert cf["cross_fitted"]["images"] == tuned["images"] == sum(cf["halves"])
    assert len(cf["chosen"]) == 2 and all(Postprocess.from_dict(c) for c in cf["chosen"])
    assert tuned["tuning"]["same_split"] and tuned["tuning"]["cross_fit"] == cf
    # The record names the weights it suits: the checkpoint tuned, by its SHA-256.
    assert record["tuned_on"]["checkpoint_sha256"] == sha256(run / "checkpoints" / "best.pt")


def test_two_thresholds_never_share_an_evaluation_folder() -> None:
    names = {t: eval_name("Val", threshold=t) for t in (0.4, 0.4000001, 0.40000001, 1e-7, 1.0)}
    assert len(set(names.values())) == len(names) and names[0.4] == "Val-t0.4"
    assert all(float(n.removeprefix("Val-t")) == t for t, n in names.items())


def test_each_kind_of_evaluation_keeps_its_own_folder(two_output_run: Path, tmp_path: Path, capsys) -> None:
    """Untuned, tuned, a quick --limit check and a --threshold trial never overwrite one another."""
    run = copy_run(two_output_run, tmp_path / "run")
    assert main(["tune", str(run), "--metric", "balanced", "--no-cross-fit", "--no-progress"]) == 0
    record = json.loads((run / "postprocess.json").read_text())
    record["settings"]["threshold"] = 0.35  # tuned settings that surely differ from the untuned ones
    (run / "postprocess.json").write_text(json.dumps(record))
    runs = {
        "Val": [],
        "Val-untuned": ["--no-postprocess"],
        "Val-limit6": ["--limit", "6"],
        "Val-last-untuned-t0.7-at-input": ["--checkpoint", "last", "--no-postprocess", "--threshold", "0.7",
                                           "--scored-at", "input"],
    }  # fmt: skip
    for name, extra in runs.items():
        capsys.readouterr()
        assert main(["evaluate", str(run), "--panel", "2", "--no-progress", *extra]) == 0
        assert capsys.readouterr().out.rstrip().endswith(f"written to {run / 'eval' / name}")
    read = {n: json.loads((run / "eval" / n / "summary.json").read_text()) for n in runs}
    tuned = record["settings"]
    assert read["Val"]["postprocess"] == tuned and read["Val"]["images"] == read["Val-untuned"]["images"] > 6
    assert read["Val-untuned"]["threshold"] == 0.5 and read["Val-limit6"]["threshold"] == 0.35
    assert read["Val-limit6"]["images"] == 6
    assert read["Val"]["detection"]["rule"] == call_rule(tuned["detect_fraction"], tuned["image_gate"], head=False)
    last = read["Val-last-untuned-t0.7-at-input"]
    assert last["threshold"] == 0.7 and last["checkpoint"] == "last" and last["scored_at"] == "input"
    assert all((run / "plots" / f"predictions_{n}.png").is_file() for n in runs)
    # Another data folder is named; the run's own, named again, is not.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(read["Val"]["data_root"], elsewhere)
    for data, name in ((elsewhere, "Val-data-elsewhere-limit6"), (read["Val"]["data_root"], "Val-limit6")):
        capsys.readouterr()
        assert main(["evaluate", str(run), "--data", str(data), "--limit", "6", "--panel", "0", "--no-progress"]) == 0
        assert capsys.readouterr().out.rstrip().endswith(f"written to {run / 'eval' / name}")
    # The run's own evaluation is what export reads into the bundle's metadata.
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--onnx-only", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["val_metrics"]["threshold"] == 0.35 and meta["val_metrics"]["images"] == read["Val"]["images"]


def test_tune_starts_from_the_configured_threshold(two_output_run: Path, tmp_path: Path) -> None:
    run = copy_run(two_output_run, tmp_path / "run")
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["config"]["eval"]["threshold"] = 0.3  # as if trained with --set eval.threshold=0.3
    torch.save(state, best)
    assert main(["tune", str(run), "--no-cross-fit", "--no-progress"]) == 0
    record = json.loads((run / "postprocess.json").read_text())
    assert record["steps"][0]["setting"] == "threshold 0.3" and record["cross_fit"] is None
    plain = evaluate_run(run, split="Val", panel=0, postprocess=False)
    assert plain["threshold"] == 0.3 and record["steps"][0]["per_image"] == pytest.approx(plain["per_image"]["dice"])


def test_stats_generic_matches_a_changed_setting(tune_data) -> None:
    idx = np.arange(len(tune_data))
    post = replace(Postprocess(threshold=THRESHOLDS[2]), min_component_share=0.01, fill_holes=True)
    assert np.array_equal(stats_of(tune_data, post, idx), stats_generic(tune_data, post, idx))


@pytest.mark.parametrize(("cross_fitted", "warns"), [(0.78, True), (0.80, False)])
def test_tune_warns_when_cross_fitting_says_the_tuning_does_not_help(
    cross_fitted: float, warns: bool, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Untuned 0.79 on Val: a procedure whose cross-fitted estimate falls below it is reported as
    fitting noise (the full-hour U-Net on ResNet-18 did: 0.790 untuned, 0.797 in-sample, 0.783)."""
    steps = [{"step": "baseline", "setting": "threshold 0.5", "kept": True, "balanced": 0.79}]
    record = {"cross_fit": {"cross_fitted": {"balanced": cross_fitted}}}
    _log_result("balanced", steps, {"balanced": 0.797}, record, tmp_path / "postprocess.json")
    assert ("is below the untuned 0.7900" in caplog.text) == warns
