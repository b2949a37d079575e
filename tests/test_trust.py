"""The input check and calibrated probabilities (``covidseg calibrate``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_run
from covidseg.cli import main
from covidseg.data.discovery import discover
from covidseg.data.image_io import preprocess_image, read_xray
from covidseg.errors import CovidsegError
from covidseg.inference.calibration import Calibration, LogitHistogram, fit_platt, pixel_reliability
from covidseg.inference.input_check import LUNG_FIGURES, LUNG_ONLY, InputCheck, layout_figures, lung_figures
from covidseg.inference.predictor import Predictor
from covidseg.predict import prediction_record


def test_platt_scaling_fixes_overconfident_pixels_and_keeps_the_masks() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    truth = rng.random(p.size) < p**3  # the model says p; the truth is rarer
    hist = LogitHistogram.of(p, truth)
    a, b = fit_platt(hist)
    before, after = pixel_reliability(hist)["ece"], pixel_reliability(hist, a, b)["ece"]
    assert before > 0.1 and after < 0.02
    cal = Calibration(a, b)
    for t in (0.2, 0.45, 0.8):
        assert np.array_equal(p > t, cal.pixels(p) > cal.threshold(t))


def test_input_check_distance_grows_off_the_training_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    check = InputCheck.fit(train, k=8)
    near = check.distance(train[:50])
    far = check.distance(train[:50] + 20 * rng.normal(size=(50, 32)))
    assert far.min() > np.quantile(near, 0.9)
    check.set_cutoffs(near, [None] * 50)
    assert np.mean(check.flags(near, [None] * 50) > 0) <= 0.01
    settings = check.save(tmp_path / "input_check.npz")
    again = InputCheck.load(tmp_path / "input_check.npz", json.loads(json.dumps(settings)))
    assert np.allclose(again.distance(train[:5]), check.distance(train[:5]), rtol=1e-2)


def test_damaged_input_check_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "input_check.npz"
    np.savez(path, mean=np.zeros(4), components=np.full((2, 4), np.nan), variances=np.ones(2))
    with pytest.raises(CovidsegError, match="non-finite"):
        InputCheck.load(path, {"noise": 1.0, "cutoff": 1.0, "far": 2.0})
    path.write_bytes(b"not an npz")
    with pytest.raises(CovidsegError, match="damaged"):
        InputCheck.load(path, {"noise": 1.0, "cutoff": 1.0, "far": 2.0})
    np.savez(path, mean=np.zeros(4), components=np.eye(4)[:2], variances=np.ones(2))
    with pytest.raises(CovidsegError, match="positive finite"):
        InputCheck.load(path, {"noise": -1, "cutoff": 1.0, "far": 2.0})
    with pytest.raises(CovidsegError, match="positive finite"):
        InputCheck.load(path, json.loads('{"noise": 1' + "0" * 400 + ', "cutoff": 1.0, "far": 2.0}'))
    good = {"noise": 1.0, "cutoff": 1.0, "far": 2.0, "lung_ranges": dict.fromkeys(LUNG_ONLY, [0, 1])}
    huge = json.loads("1" + "0" * 400)  # an integer no float can hold
    for margin in (True, float("nan"), -0.1, huge, {**dict.fromkeys(LUNG_ONLY, 0.1), "extra": 0.1}, [0.1]):
        with pytest.raises(CovidsegError, match="lung_margin"):
            InputCheck.load(path, {**good, "lung_margin": margin})
    with pytest.raises(CovidsegError, match="lung_ranges"):
        InputCheck.load(path, {**good, "lung_ranges": {**good["lung_ranges"], "balance": [0, huge]}})


@pytest.mark.parametrize(
    "bad",
    [
        {"a": "x", "b": 0},
        {"a": 0, "b": 0},
        {"a": 1e9, "b": 0},
        {"a": 1, "b": float("nan")},
        {"a": 1, "b": 0, "image": [1, 2]},
        {"a": 1, "b": 0, "image": "abc"},
        {"a": 1, "b": 0, "extra": 1},
        [1, 2],
    ],
)
def test_tampered_calibration_records_are_refused(bad) -> None:
    with pytest.raises(CovidsegError):
        Calibration.from_dict(bad, "calibration.json")


def test_lung_figures_see_two_fields_side_by_side_and_notice_rotation() -> None:
    lungs = np.zeros((64, 64), np.float32)
    lungs[10:50, 8:28] = 1
    lungs[10:50, 36:56] = 1
    lungs[10:20, 8:28] = 0.0  # narrower apex: more lung in the lower half
    upright, turned = lung_figures(lungs), lung_figures(np.rot90(lungs))
    assert upright["fields"] == 2 and upright["side_by_side"] > 0.8 and upright["apex_share"] < 0.5
    assert turned["side_by_side"] < 0.2
    assert lung_figures(np.zeros((64, 64)))["fields"] == 0


def test_image_figures_see_contrast_detail_and_dark_lungs() -> None:
    """A uniform image has no contrast and no detail; on an X-ray the lungs are darker than the
    rest, on its negative brighter."""
    lungs = np.zeros((64, 64), np.float32)
    lungs[10:50, 8:28] = lungs[10:50, 36:56] = 1
    xray = np.where(lungs > 0.5, 0.2, 0.7).astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, (64, 64))
    xray = np.clip(xray, 0, 1).astype(np.float32)
    plain, inverted, flat = (lung_figures(lungs, im) for im in (xray, 1 - xray, np.full((64, 64), 0.5, np.float32)))
    assert plain["lung_darkness"] > 0.4 and inverted["lung_darkness"] < -0.4
    assert flat["contrast"] == 0 and flat["detail"] == 0 and plain["contrast"] > 0.2 and plain["detail"] > 0.01
    assert "contrast" not in lung_figures(lungs)  # without the image: the lung figures alone


def test_layout_figures_notice_an_upside_down_or_inverted_film(synth_root: Path) -> None:
    """On a frontal film the bottom is brighter than the top and the midline brighter than the
    lung fields; turning the film upside down reverses the first, inverting it both."""
    for sample in discover(synth_root).split("Val")[:4]:
        x = preprocess_image(read_xray(sample.image), 96)
        upright, turned, negative = (layout_figures(im) for im in (x, np.rot90(x, 2), 1 - x))
        assert upright["lower_over_upper"] > 0.05 and upright["midline_over_sides"] > 0.05
        assert turned["lower_over_upper"] == pytest.approx(-upright["lower_over_upper"], abs=0.02)
        assert turned["midline_over_sides"] > 0.05
        assert negative["lower_over_upper"] < -0.05 and negative["midline_over_sides"] < -0.05


def _check_with_ranges(names: tuple[str, ...]) -> InputCheck:
    check = InputCheck.fit(np.random.default_rng(0).normal(size=(40, 8)), k=4)
    check.lung_ranges = dict.fromkeys(names, (0.0, 1.0))
    return check


def test_each_figure_has_its_own_margin(tmp_path: Path) -> None:
    """A figure with a long tail on Val widens its own margin, not the others\': a value just
    outside a tight figure is still flagged."""
    names = ("lung_area", "balance", "side_by_side", "apex_share")
    check = _check_with_ranges(names)
    rng = np.random.default_rng(0)
    val = [{**dict.fromkeys(names, 0.5), "fields": 2.0} for _ in range(400)]
    for f in val[:12]:  # 3% of Val far outside on one figure
        f["balance"] = 1 + rng.uniform(0.5, 2.0)
    distances = rng.uniform(0.5, 1.0, 400)
    check.set_cutoffs(distances, val)
    assert check.margin("balance") > 1.0 and check.margin("lung_area") < 0.05
    assert np.mean(check.flags(distances, val) > 0) <= 0.01
    odd = {**dict.fromkeys(names, 0.5), "fields": 2.0, "lung_area": 1.3}
    assert check.lung_reasons(odd)[1] and not check.lung_reasons({**odd, "lung_area": 0.5, "balance": 2.0})[1]
    settings = json.loads(json.dumps(check.save(tmp_path / "c.npz")))
    again = InputCheck.load(tmp_path / "c.npz", settings)
    assert again.lung_margin == check.lung_margin and again.lung_reasons(odd) == check.lung_reasons(odd)
    with pytest.raises(CovidsegError, match="lung_margin"):
        InputCheck.load(tmp_path / "c.npz", {**settings, "lung_margin": {"lung_area": 0.1}})


def test_the_margins_leave_the_feature_cut_off_its_share(tmp_path: Path) -> None:
    """Nine long-tailed figures on Val: at most 0.5% of Val falls outside any figure, so the
    feature distance still flags its own share and the whole stays at 1%."""
    check = _check_with_ranges(LUNG_FIGURES)
    rng = np.random.default_rng(1)
    val = [{**{n: float(v) for n, v in zip(LUNG_FIGURES, rng.standard_t(3, 9) * 0.3 + 0.5)}, "fields": 2.0}
           for _ in range(3000)]  # fmt: skip
    distances = rng.uniform(0.5, 1.0, 3000)
    check.set_cutoffs(distances, val)
    lung_only = check.flags(np.zeros(3000), val) > 0
    assert 0 < lung_only.sum() <= 15 and (distances[~lung_only] > check.cutoff).sum() >= 15
    assert np.mean(check.flags(distances, val) > 0) <= 0.01


def test_calibrate_runs_over_a_damaged_calibration(calibrated_run: Path, tmp_path: Path) -> None:
    """calibrate fits from the uncalibrated model: the file it replaces is never read."""
    run = copy_run(calibrated_run, tmp_path / "run")
    (run / "calibration.json").write_text("{not json")
    with pytest.raises(CovidsegError, match="damaged"):
        Predictor.load(run)
    assert main(["calibrate", str(run)]) == 0
    assert Predictor.load(run).check is not None


def test_a_check_calibrated_before_the_image_figures_still_loads(tmp_path: Path) -> None:
    check = InputCheck.fit(np.random.default_rng(0).normal(size=(40, 8)), k=4)
    old = {n: [0.1, 0.9] for n in ("lung_area", "balance", "side_by_side", "apex_share")}
    settings = {**check.save(tmp_path / "c.npz"), "cutoff": 1.0, "far": 2.0, "lung_ranges": old}
    loaded = InputCheck.load(tmp_path / "c.npz", settings)
    figures = {**dict.fromkeys(old, 0.5), "fields": 2.0, "contrast": 0.0, "detail": 0.0, "lung_darkness": -1.0}
    assert loaded.lung_reasons(figures) == ([], [])  # the image figures are not judged without their ranges
    with pytest.raises(CovidsegError, match="lung_ranges"):
        InputCheck.load(tmp_path / "c.npz", {**settings, "lung_ranges": {**old, "colour": [0, 1]}})


@pytest.fixture(scope="module")
def calibrated_run(two_output_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = copy_run(two_output_run, tmp_path_factory.mktemp("cal") / "run")
    assert main(["calibrate", str(run)]) == 0
    return run


def test_calibrate_writes_the_check_and_calibration_and_keeps_masks(
    calibrated_run: Path, two_output_run: Path, synth_root: Path
) -> None:
    record = json.loads((calibrated_run / "calibration.json").read_text())
    assert "synthetic" in record["fitted_on"]["data"]
    assert sum(record["cross_fit"]["halves"]) == record["fitted_on"]["images"]
    assert (calibrated_run / "input_check.npz").is_file() and (calibrated_run / "plots" / "reliability.png").is_file()
    plain, calibrated = Predictor.load(two_output_run), Predictor.load(calibrated_run)
    assert plain.check is None and calibrated.check is not None
    for s in discover(synth_root).split("Val")[:4]:
        gray = read_xray(s.image)
        a, b = plain.predict(gray), calibrated.predict(gray)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.lung, b.lung)
        assert a.input_check is None and b.input_check["verdict"] in ("ok", "unusual", "not_a_frontal_cxr")
        if b.input_check["verdict"] == "not_a_frontal_cxr":  # no call for what is no chest X-ray
            assert b.covid_probability is None and b.covid_call is None and a.covid_call is not None
        check, calibrated.check = calibrated.check, None  # the calibration itself, check or no check
        c = calibrated.predict(gray)
        calibrated.check = check
        assert 0 <= c.covid_probability <= 1 and c.covid_call == a.covid_call
        t = calibrated.calibration.threshold(calibrated.threshold)
        assert np.array_equal(
            b.mask.astype(bool) & b.lung.astype(bool), (b.calibrated_probability > t) & b.lung.astype(bool)
        )


def test_a_photograph_and_noise_are_flagged(calibrated_run: Path) -> None:
    import matplotlib.cbook

    predictor = Predictor.load(calibrated_run)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        from PIL import Image

        photo = np.asarray(Image.open(f).convert("L"))
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    flat = np.full((300, 300), 128, np.uint8)
    for image in (photo, noise, flat):
        check = predictor.predict(image).input_check
        assert check["verdict"] != "ok" and check["reason"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_bundle_and_predict_carry_the_check(
    calibrated_run: Path, tmp_path: Path, synth_root: Path, precision: str
) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", str(calibrated_run), "--out", str(bundle), "--precision", precision]) == 0
    config = json.loads((bundle / "config.json").read_text())
    assert {"calibration.json", "input_check.npz"} <= set(config["files"])
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["onnx_vs_torch_max_rel_feature_diff"] < (0.05 if precision == "fp16" else 1e-3)
    xray = discover(synth_root).split("Val")[0].image
    run, onnx = Predictor.load(calibrated_run), Predictor.load(bundle)
    run_pred, onnx_pred = run.predict(xray), onnx.predict(xray)
    tol = 1e-2 if precision == "fp16" else 1e-3  # fp16: the weights are rounded
    assert onnx_pred.input_check["verdict"] == run_pred.input_check["verdict"]
    assert onnx_pred.input_check["score"] == pytest.approx(run_pred.input_check["score"], rel=tol)
    assert (onnx_pred.covid_probability is None) == (run_pred.input_check["verdict"] == "not_a_frontal_cxr")
    run.check = onnx.check = None  # the calibrated probability itself, whatever the check says of a phantom
    p_run, p_onnx = run.predict(xray).covid_probability, onnx.predict(xray).covid_probability
    assert 0 <= p_run <= 1 and p_onnx == pytest.approx(p_run, abs=tol)
    if precision == "fp16":
        return
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(xray), "--out", str(out)]) == 0
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["input_check"]["verdict"] in ("ok", "unusual", "not_a_frontal_cxr")
    assert 0 < record["threshold_calibrated"] < 1
    assert record["covid_probability"] == (
        None if run_pred.covid_probability is None else pytest.approx(run_pred.covid_probability, abs=tol)
    )


def test_settings_changed_after_calibrate_are_named(
    calibrated_run: Path, tmp_path: Path, synth_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert Predictor.load(calibrated_run).calibration_stale == []
    with caplog.at_level("WARNING"):
        flagged = Predictor.load(calibrated_run, threshold=0.123)
    assert flagged.calibration_stale == ["threshold"] and "approximate" in caplog.text
    assert "calibrate' on" not in caplog.text  # a threshold flag is not a reason to calibrate again
    caplog.clear()
    run = copy_run(calibrated_run, tmp_path / "run")
    fitted = json.loads((run / "calibration.json").read_text())["postprocess"]
    changed = {
        **fitted,
        "threshold": 0.25 if fitted["threshold"] != 0.25 else 0.3,
        "fill_holes": not fitted["fill_holes"],
    }
    (run / "postprocess.json").write_text(json.dumps({"settings": changed}))
    with caplog.at_level("WARNING"):
        predictor = Predictor.load(run)
    assert predictor.calibration_stale == ["fill_holes", "threshold"]
    assert "calibrate" in caplog.text and "threshold" in caplog.text
    out = tmp_path / "out"
    assert main(["predict", str(run), str(discover(synth_root).split("Val")[0].image), "--out", str(out)]) == 0
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["calibration_stale"] == predictor.calibration_stale


def test_the_report_shows_the_calibration_and_its_reliability_diagram(calibrated_run: Path, tmp_path: Path) -> None:
    from covidseg.report.build import build_report

    md, page = build_report([calibrated_run], tmp_path / "report")
    text = md.read_text()
    assert "ECE after Platt scaling" in text and "Reliability diagrams" in text and "SYNTHETIC" in text
    assert "data:image/png;base64," in page.read_text()


def test_no_covid_call_probability_or_severity_for_what_is_no_chest_x_ray(tmp_path: Path) -> None:
    from PIL import Image

    import covidseg

    model = covidseg.load_model()
    example = Path(covidseg.__file__).parent / "examples" / "covid-19.png"
    film = read_xray(example)
    ok = model.predict(example)
    assert ok.input_check["verdict"] == "ok" and ok.covid_call is True and ok.severity is not None
    blobs = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(blobs).resize((256, 256), Image.BILINEAR).save(tmp_path / "photo.png")
    cases = {
        "tiny": film[:40, :40].copy(),
        "strip": np.asarray(Image.fromarray(film).resize((600, 150))),
        "photo": tmp_path / "photo.png",
    }
    for name, image in cases.items():
        pred = model.predict(image)
        check = pred.input_check
        assert check["verdict"] == "not_a_frontal_cxr", (name, check)
        reason = {"tiny": "too small", "strip": "near square", "photo": "a colour image"}[name]
        assert reason in check["reason"], (name, check)
        assert pred.covid_call is None and pred.covid_probability is None and pred.peak is None, name
        assert pred.severity["severity"] is None and pred.severity["severity_score"] is None, name
        assert pred.severity["infected_share_pct"] is not None  # what describes the masks stays
        record = prediction_record(pred, model, pred.mask.shape)
        assert record["covid_call"] is None and record["covid_head_probability"] is None
        assert record["severity"] is None and record["infected_share_pct"] == pred.severity["infected_share_pct"]
    # A film a little off the usual shape is only unusual, and keeps its call.
    wide = model.predict(np.asarray(Image.fromarray(film).resize((410, 256))))
    assert wide.input_check["verdict"] == "unusual" and wide.covid_call is not None
