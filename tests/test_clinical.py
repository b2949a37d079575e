"""Two outputs (infection and lung), severity and detection in evaluation, real-world inputs to
``predict``, and the exported bundle run by onnxruntime."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_run
from covidseg.cli import main
from covidseg.config import build_config
from covidseg.data.image_io import read_dicom_gray8, read_xray
from covidseg.data.synthetic import write_dicom
from covidseg.engine.checkpoint import load_checkpoint, save_checkpoint
from covidseg.engine.fit import fit
from covidseg.errors import DataError
from covidseg.inference.builtin import sha256
from covidseg.inference.predictor import Predictor


def test_dicom_rescale_window_and_monochrome1(tmp_path: Path) -> None:
    stored = np.tile(np.linspace(0, 4000, 50).astype(np.uint16), (30, 1))
    plain = read_dicom_gray8(write_dicom(tmp_path / "a.dcm", stored))
    assert plain.shape == (30, 50) and plain[0, 0] == 0 and plain[0, -1] == 255
    assert np.all(np.diff(plain[0].astype(int)) >= 0)
    # MONOCHROME1: high values are dark; bone must come out bright as in the training data.
    inverted = read_dicom_gray8(write_dicom(tmp_path / "b.dcm", stored, "MONOCHROME1"))
    assert np.array_equal(inverted, 255 - plain)
    # Rescale (value = 2 * stored - 100), then a window over the lower half: the top half saturates.
    windowed = read_dicom_gray8(
        write_dicom(tmp_path / "c", stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=1900, WindowWidth=4000)
    )
    assert windowed[0, 0] == 0 and np.all(windowed[0, 25:] == 255) and 0 < windowed[0, 12] < 255
    assert np.array_equal(read_xray(tmp_path / "c"), windowed)  # found by its DICM marker, no suffix
    # A window width of 0 is invalid DICOM: a clear error for this file, not a crash.
    with pytest.raises(DataError, match="window is invalid"):
        read_xray(write_dicom(tmp_path / "ww0.dcm", stored, WindowCenter=1000, WindowWidth=0))
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(DataError, match="bad.dcm"):
        read_xray(tmp_path / "bad.dcm")
    (tmp_path / "text.dcm").write_bytes(b"no DICOM at all")
    with pytest.raises(DataError, match="not a readable DICOM") as caught:
        read_xray(tmp_path / "text.dcm")
    assert "force" not in str(caught.value)  # pydicom's advice to its callers is no use to a user


def test_sixteen_bit_images_are_stretched_to_their_range(tmp_path: Path) -> None:
    arr = np.tile(np.linspace(1000, 3000, 40), (20, 1)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    Image.fromarray(arr).save(tmp_path / "x16.tif")
    for name in ("x16.png", "x16.tif"):
        gray = read_xray(tmp_path / name)
        assert gray.dtype == np.uint8 and gray[0, 0] == 0 and gray[0, -1] == 255, name


@pytest.fixture(scope="module")
def lung_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lung")
    cfg = build_config(
        "reference",
        overrides={
            "data.image_size": 64,
            "model.base_channels": 8,
            "train.batch_size": 4,
            "optim.lr": 1e-3,
            "train.device": "cpu",
            "data.root": str(synth_root),
            "data.cache_dir": str(tmp / "cache"),
            "model.targets": "infection+lung",
            "train.epochs": 3,
        },
    )
    fit(cfg, tmp / "run")
    return tmp / "run"


def test_two_output_run_reports_lung_detection_and_severity(lung_run: Path, capsys) -> None:
    hist = list(csv.DictReader((lung_run / "history.csv").open()))
    assert all(0.0 <= float(r["val_lung_dice"]) <= 1.0 for r in hist)
    assert main(["tune", str(lung_run), "--no-progress"]) == 0
    steps = json.loads((lung_run / "postprocess.json").read_text())["steps"]
    assert "lung_gate" in [s["step"] for s in steps]
    assert main(["evaluate", str(lung_run), "--panel", "0", "--no-progress"]) == 0
    s = json.loads((lung_run / "eval" / "Val" / "summary.json").read_text())
    assert s["target"] == "infection" and set(s["lung"]) >= {"pooled", "per_image", "per_image_covid", "groups"}
    det = s["detection"]
    assert det["positives"] + det["negatives"] == s["images"] and 0 <= det["roc_auc"] <= 1
    assert set(det["groups"]["Normal"]) == {"images", "specificity", "roc_auc_vs_covid"}
    sev = s["severity"]
    assert sum(sev["groups"]["COVID-19"]["true"].values()) == s["groups"]["COVID-19"]["images"]
    assert sev["groups"]["Normal"]["true"] == {
        "none": s["groups"]["Normal"]["images"],
        "mild": 0,
        "moderate": 0,
        "severe": 0,
    }
    assert "predicted" in sev["groups"]["COVID-19"] and 0 <= sev["agreement"]["grade_accuracy"] <= 1
    rows = list(csv.DictReader((lung_run / "eval" / "Val" / "per_image.csv").open()))
    assert {
        "lung_dice",
        "infected_share_pct",
        "right_lung_infected_share_pct",
        "severity",
        "true_severity",
        "covid_call",
    } <= set(rows[0])
    covid = [r for r in rows if r["group"] == "COVID-19"]
    assert all(float(r["true_infected_share_pct"]) > 0 for r in covid)
    # The severity agreement is given over the COVID-19 X-rays apart from all: as per_image.csv has it.
    for key, subset in (("agreement_covid", covid), ("agreement", rows)):
        graded = [r for r in subset if r["severity"] and r["true_severity"]]
        assert sev[key]["images"] == len(graded) > 0
        agree = np.mean([r["severity"] == r["true_severity"] for r in graded])
        assert sev[key]["grade_accuracy"] == pytest.approx(agree)
        mae = np.mean([abs(float(r["infected_share_pct"]) - float(r["true_infected_share_pct"])) for r in graded])
        assert sev[key]["infected_share_mae_points"] == pytest.approx(mae, abs=1e-3)
    out = capsys.readouterr().out
    assert "lung" in out and "detection" in out and "severity    COVID-19 (" in out


def test_export_bundle_runs_in_onnxruntime_like_pytorch(lung_run: Path, synth_root: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", str(lung_run), "--out", str(bundle), "--no-progress"]) == 0
    assert {p.name for p in bundle.iterdir()} == {"model.onnx", "model.safetensors", "config.json", "metadata.json"}
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["output_shape"][1] == 2 and meta["onnx_vs_torch_max_abs_logit_diff"] < 1e-3
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["outputs"] == ["infection", "lung"] and cfg["severity"]["extent"] == "25,50,75"
    image = next((synth_root / "Infection Segmentation Data" / "Val" / "COVID-19" / "images").iterdir())
    gray = read_xray(image)
    by_run = Predictor.load(lung_run).predict(gray)
    by_onnx = Predictor.load(bundle).predict(gray)
    by_torch = Predictor.load(bundle, engine="torch").predict(gray)
    assert np.allclose(by_onnx.probability, by_run.probability, atol=1e-4)
    assert np.allclose(by_torch.probability, by_run.probability, atol=1e-6)
    assert (by_onnx.mask != by_run.mask).mean() < 1e-3 and (by_onnx.lung != by_run.lung).mean() < 1e-3
    assert by_onnx.severity["severity"] in ("none", "mild", "moderate", "severe")
    # A non-empty folder is not overwritten; a run folder cannot run in onnxruntime.
    assert main(["export", str(lung_run), "--out", str(bundle), "--no-progress"]) == 2
    assert main(["predict", str(lung_run), str(image), "-o", str(tmp_path / "p"), "--engine", "onnx"]) == 2


def test_fp16_onnx_only_bundle_is_half_the_size_and_scores_like_fp32(
    lung_run: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    full, half = tmp_path / "full", tmp_path / "half"
    assert main(["export", str(lung_run), "--out", str(full), "--no-progress"]) == 0
    argv = ["export", str(lung_run), "--out", str(half), "--precision", "fp16", "--onnx-only", "--no-progress"]
    assert main(argv) == 0
    assert {p.name for p in half.iterdir()} == {"model.onnx", "config.json", "metadata.json"}
    cfg = json.loads((half / "config.json").read_text())
    assert cfg["weights_precision"] == "fp16" and cfg["files"] == ["model.onnx"]
    ratio = (half / "model.onnx").stat().st_size / (full / "model.onnx").stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    image = next((synth_root / "Infection Segmentation Data" / "Val" / "COVID-19" / "images").iterdir())
    by_fp32, by_fp16 = Predictor.load(full).predict(image), Predictor.load(half).predict(image)
    assert np.abs(by_fp16.probability - by_fp32.probability).max() < 5e-3
    assert (by_fp16.mask != by_fp32.mask).mean() < 1e-3
    # No PyTorch weights in it: the torch engine says so in one line.
    capsys.readouterr()
    assert main(["predict", str(half), str(image), "-o", str(tmp_path / "p"), "--engine", "torch"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    # evaluate --bundle scores the shipped weights beside the run's own evaluation.
    assert main(["evaluate", str(lung_run), "--bundle", str(half), "--panel", "0", "--no-progress"]) == 0
    s = json.loads((lung_run / "eval" / "Val-half" / "summary.json").read_text())
    assert s["bundle"]["engine"] == "onnx" and s["scored_at"] == "native" and s["images"] > 0
    assert s["checkpoint"] == json.loads((half / "metadata.json").read_text())["checkpoint"]  # exported from
    # A bundle of another model (the built-in one: 128 px) is refused, not scored on this run's cache.
    from covidseg.inference.builtin import builtin_path

    capsys.readouterr()
    assert main(["evaluate", str(lung_run), "--bundle", str(builtin_path()), "--no-progress"]) == 2
    assert "does not fit the run" in capsys.readouterr().err


def test_evaluate_bundle_reports_the_runs_tuning_only_for_the_runs_settings(
    lung_run: Path, tmp_path: Path, capsys
) -> None:
    """A bundle exported before tuning applies other settings: the run's tuning record is not its own."""
    run = copy_run(lung_run, tmp_path / "run")
    (run / "postprocess.json").unlink(missing_ok=True)  # another test of this module may have tuned it
    early, tuned = tmp_path / "early", tmp_path / "tuned"
    assert main(["export", str(run), "--out", str(early), "--onnx-only", "--no-progress"]) == 0
    cross_fitted = {"per_image": 0.5, "per_image_covid": 0.4, "pooled": 0.45}
    record = {
        "settings": {"threshold": 0.3},
        "tuned_for": "balanced",
        "tuned_on": {"split": "Val", "checkpoint_sha256": sha256(run / "checkpoints" / "best.pt")},
        "cross_fit": {"cross_fitted": cross_fitted},
    }
    (run / "postprocess.json").write_text(json.dumps(record))
    assert main(["export", str(run), "--out", str(tuned), "--onnx-only", "--no-progress"]) == 0

    def evaluate(*extra: str) -> tuple[dict, str]:
        capsys.readouterr()
        assert main(["evaluate", str(run), "--panel", "0", "--no-progress", *extra]) == 0
        out = capsys.readouterr().out
        folder = Path(re.search(r"^written to (.+)$", out, re.M).group(1))
        return json.loads((folder / "summary.json").read_text()), out

    for extra in ((), ("--bundle", str(tuned))):
        s, out = evaluate(*extra)
        assert s["postprocess"]["threshold"] == 0.3 and s["tuning"]["same_split"], extra
        assert "tuned on this split for balanced: cross-fitted estimate per-image Dice 0.5000" in out
    s, out = evaluate("--bundle", str(early))
    assert s["postprocess"]["threshold"] != 0.3 and s["tuning"] is None
    assert "tuned on this split" not in out
    # A --threshold also applies settings other than the tuned ones, to the run and the bundle alike.
    for extra in (("--threshold", "0.6"), ("--threshold", "0.6", "--bundle", str(tuned))):
        s, out = evaluate(*extra)
        assert s["postprocess"]["threshold"] == 0.6 and s["tuning"] is None, extra
    # The run's weights change after tuning (trained on, or another run's weights with the same
    # settings, in effect): the record belongs to the weights tuned, which the first bundle holds.
    ckpt = run / "checkpoints" / "best.pt"
    state = load_checkpoint(ckpt)
    next(v for v in state["model"].values() if v.is_floating_point()).add_(0.01)
    save_checkpoint(ckpt, state)
    other = tmp_path / "other"
    assert main(["export", str(run), "--out", str(other), "--onnx-only", "--no-progress"]) == 0
    assert evaluate("--bundle", str(tuned))[0]["tuning"]["same_split"]
    for extra in ((), ("--bundle", str(other))):
        s, out = evaluate(*extra)
        assert s["postprocess"]["threshold"] == 0.3 and s["tuning"] is None, extra
        assert "tuned on this split" not in out
    # A record from before tune kept the hash: a bundle is compared with the run's checkpoint.
    record["tuned_on"].pop("checkpoint_sha256")
    (run / "postprocess.json").write_text(json.dumps(record))
    assert evaluate("--bundle", str(tuned))[0]["tuning"] is None
    assert evaluate("--bundle", str(other))[0]["tuning"]["same_split"]


def test_predict_real_world_inputs_and_skips_bad_ones(lung_run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((150, 220)) * 200).astype(np.uint8)
    Image.fromarray(base).save(inputs / "a.jpg")
    Image.fromarray(base.astype(np.uint16) * 16).save(inputs / "b16.png")
    Image.fromarray(base.astype(np.uint16) * 16).save(inputs / "c.tiff")
    write_dicom(inputs / "d.dcm", base.astype(np.uint16) * 16, "MONOCHROME1")
    (inputs / "e.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["predict", str(lung_run), str(inputs), "-o", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(Path(r["image"]).name for r in records) == ["a.jpg", "b16.png", "c.tiff", "d.dcm"]
    for r in records:
        assert (r["width"], r["height"]) == (220, 150)
        assert Image.open(out / r["mask"]).size == (220, 150) and Image.open(out / r["lung"]).size == (220, 150)
        assert {
            "infected_share_pct",
            "right_lung_infected_share_pct",
            "left_lung_infected_share_pct",
            "severity",
            "covid_call",
        } <= set(r)


def test_a_bundle_without_its_onnx_graph_runs_on_its_pytorch_weights(
    lung_run: Path, synth_root: Path, tmp_path: Path
) -> None:
    bundle, weights_only = tmp_path / "bundle", tmp_path / "weights-only"
    assert main(["export", str(lung_run), "--out", str(bundle), "--no-progress"]) == 0
    shutil.copytree(bundle, weights_only)
    (weights_only / "model.onnx").unlink()
    scores = {}
    for b in (bundle, weights_only):
        out = tmp_path / "scores" / b.name
        argv = ["evaluate", "--model", str(b), "--data", str(synth_root), "--out", str(out), "--panel", "0"]
        assert main([*argv, "--no-progress"]) == 0
        scores[b.name] = json.loads((out / "summary.json").read_text())
        assert main(["predict", str(b), str(synth_root), "--out", str(tmp_path / "masks" / b.name)]) == 0
    assert scores["bundle"]["engine"] == "onnx" and scores["weights-only"]["engine"] == "torch"
    assert scores["weights-only"]["model"]["file"] == "model.safetensors"
    assert scores["bundle"]["images"] == scores["weights-only"]["images"] > 0
    rows = {n: list(csv.DictReader((tmp_path / "scores" / n / "per_image.csv").open())) for n in scores}
    for a, b in zip(rows["bundle"], rows["weights-only"], strict=True):
        assert a["id"] == b["id"]
        for column in ("dice", "lung_dice", "infected_share_pct"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=0.02), (a["id"], column)
    assert rows["bundle"][0]["lung_dice"] not in ("", "0.0")


def test_evaluate_model_scores_a_bundle_without_its_run_as_the_run_scores_it(
    lung_run: Path, synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``evaluate --model B --data D``: the same figures and rows as ``evaluate RUN --bundle B``;
    its folder is replaced only by the same kind of evaluation, and nothing else is overwritten."""
    run, bundle = copy_run(lung_run, tmp_path / "run"), tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(bundle), "--onnx-only", "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--bundle", str(bundle), "--panel", "0", "--no-progress"]) == 0
    by_run = run / "eval" / "Val-bundle"
    out = tmp_path / "scores"
    argv = ["evaluate", "--model", str(bundle), "--data", str(synth_root), "--out", str(out), "--no-progress"]
    capsys.readouterr()
    assert main([*argv, "--panel", "2"]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC Val" in printed and f"written to {out}" in printed and "in-sample" not in printed
    s, ref = (json.loads((d / "summary.json").read_text()) for d in (out, by_run))
    for key in ("images", "pooled", "per_image", "per_image_covid", "lung", "detection", "severity", "postprocess"):
        assert s[key] == ref[key], key
    assert s["model"]["sha256"] == sha256(bundle / "model.onnx") and not s["model"]["builtin"]
    assert (out / "per_image.csv").read_text() == (by_run / "per_image.csv").read_text()
    assert (out / "predictions.png").stat().st_size > 0
    # The same evaluation again replaces its own files; another kind into the same folder is refused.
    assert main([*argv, "--panel", "0"]) == 0
    before = (out / "summary.json").read_text()
    for extra in (("--threshold", "0.9"), ("--limit", "6")):
        capsys.readouterr()
        assert main([*argv, *extra]) == 2, extra
        assert "holds another evaluation" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    # The leftover of a killed write does not block the same evaluation, which clears it.
    (out / ".covidseg-tmp-summary.json").write_text("{")
    assert main([*argv, "--panel", "0"]) == 0 and not (out / ".covidseg-tmp-summary.json").exists()
    # The same data named another way is the same kind; other data under the same name is not.
    monkeypatch.chdir(synth_root.parent)
    assert main([*argv[:4], synth_root.name, *argv[5:], "--panel", "0"]) == 0
    other = tmp_path / "elsewhere" / synth_root.name
    shutil.copytree(synth_root, other)
    capsys.readouterr()
    monkeypatch.chdir(other.parent)
    assert main([*argv[:4], synth_root.name, *argv[5:]]) == 2
    assert "holds another evaluation" in capsys.readouterr().err
    # So does a run's evaluation of another data folder, whose name is all its folder says.
    third = tmp_path / "third" / synth_root.name
    shutil.copytree(synth_root, third)
    assert main(["evaluate", str(run), "--data", str(other), "--panel", "0", "--no-progress"]) == 0
    kept = (run / "eval" / f"Val-data-{synth_root.name}" / "summary.json").read_text()
    assert main(["evaluate", str(run), "--data", str(third), "--panel", "0", "--no-progress"]) == 2
    assert "another data folder of the same name" in capsys.readouterr().err
    assert (run / "eval" / f"Val-data-{synth_root.name}" / "summary.json").read_text() == kept
    monkeypatch.chdir(tmp_path)  # the same folder by another relative path, from elsewhere: the same data
    assert main(["evaluate", str(run), "--data", f"elsewhere/{synth_root.name}", "--panel", "0"]) == 0
    # A command that fails before writing leaves no folder behind.
    assert main([*argv[:6], str(tmp_path / "fresh" / "x"), "--limit", "0"]) == 2
    assert not (tmp_path / "fresh").exists()
    (out / "notes.txt").write_text("mine")
    assert main(argv) == 2 and (out / "notes.txt").read_text() == "mine"
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    # A folder with files named like an evaluation's, but none, is not taken for one.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "per_image.csv").write_text("my own table")
    assert main([*argv[:6], str(mine)]) == 2 and (mine / "per_image.csv").read_text() == "my own table"
    # Without --out: one folder per kind under ./covidseg-eval, named after model, split and data.
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", str(bundle), "--data", str(synth_root), "--limit", "6", "--panel", "0"]) == 0
    assert (tmp_path / "covidseg-eval" / "bundle" / f"Val-data-{synth_root.name}-limit6" / "summary.json").is_file()
    # Wrong combinations: one line each.
    for bad, says in (
        (["evaluate", "--model", str(bundle)], "needs --data"),
        (["evaluate"], "needs a run folder, or --data D"),
        (["evaluate", str(run), "--model", str(bundle), "--data", str(synth_root)], "not both"),
        (["evaluate", "--model", str(run), "--data", str(synth_root)], "is a run folder"),
        (["evaluate", "--model", str(bundle), "--data", str(synth_root), "--checkpoint", "last"], "--checkpoint"),
        (["evaluate", str(run), "--out", str(tmp_path / "o")], "--out is for --model"),
        (["evaluate", "--model", "no-such-model", "--data", str(synth_root)], "neither a run folder"),
        (["evaluate", "--model", str(synth_root), "--data", str(synth_root)], "is not a bundle"),
        (["evaluate", "--model", str(bundle), "--data", str(synth_root), "--device", "cuda"], "--device"),
        (["evaluate", "--model", str(bundle), "--data", str(synth_root), "--batch-size", "0"], "batch size"),
        (["evaluate", "--model", str(bundle), "--data", str(synth_root), "--panel", "-1"], "panel"),
        (["evaluate", str(run), "--panel", "-1"], "panel"),
    ):
        capsys.readouterr()
        assert main([*bad, "--no-progress"]) == 2, bad
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, (bad, err)


def test_evaluation_without_some_lung_masks_scores_the_rest(
    lung_run: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    """An X-ray whose lung mask file is missing has no true severity; the rest are scored."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    lungs = data / "Infection Segmentation Data" / "Val" / "COVID-19" / "lung masks"
    gone = sorted(lungs.iterdir())[0]
    gone.unlink()
    run, bundle = copy_run(lung_run, tmp_path / "run"), tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(bundle), "--onnx-only", "--no-progress"]) == 0
    argv = ["--data", str(data), "--panel", "0", "--no-progress"]
    assert main(["evaluate", "--model", str(bundle), "--out", str(tmp_path / "out"), *argv]) == 0
    assert main(["evaluate", str(run), *argv]) == 0
    for folder in (tmp_path / "out", run / "eval" / "Val-data-data"):
        s = json.loads((folder / "summary.json").read_text())
        rows = {r["id"]: r for r in csv.DictReader((folder / "per_image.csv").open())}
        no_lung = rows[f"Val/COVID-19/{gone.stem}"]
        assert no_lung["true_infected_share_pct"] == "" and no_lung["true_severity"] == ""
        assert "lung" not in s  # the lung output is scored only where every X-ray has its mask
        covid = s["groups"]["COVID-19"]["images"]
        assert sum(s["severity"]["groups"]["COVID-19"]["true"].values()) == covid - 1
    # A mask stored as 0 and 1 stops the command in one line; read as > 127 it would be empty.
    mask = next((data / "Infection Segmentation Data" / "Val" / "COVID-19" / "infection masks").iterdir())
    Image.fromarray((read_xray(mask) > 127).astype(np.uint8)).save(mask)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(bundle), "--out", str(tmp_path / "out2"), *argv]) == 2
    err = capsys.readouterr().err
    assert mask.name in err and "store it as 8-bit 0 and 255" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"postprocess": {"threshold": 5}}, "threshold"),
        ({"postprocess": {"min_component_share": 1e18}}, "min_component_share"),
        ({"postprocess": {"threshold": 0.5, "kidney": True}}, "unknown post-processing key"),
        ({"outputs": ["kidney"]}, "outputs"),
        ({"preprocessing": {"image_size": "abc"}}, "image_size"),
        ({"preprocessing": {"image_size": 7}}, "image_size"),
        ({"preprocessing": {"image_size": 32}}, "config.json says"),  # the ONNX graph takes 64x64
        ({"severity": None}, "severity"),
        ({"format_version": 99}, "newer covidseg"),
    ],
)
def test_tampered_bundles_are_refused_with_one_line(
    lung_run: Path, tmp_path: Path, capsys, change: dict, message: str
) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", str(lung_run), "--out", str(bundle), "--no-progress"]) == 0
    cfg = json.loads((bundle / "config.json").read_text())
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    (bundle / "config.json").write_text(json.dumps(cfg))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((80, 90), np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", str(bundle), str(image), "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["1.5", "0", "-1", "nan"])
def test_predict_threshold_out_of_range_is_refused(lung_run: Path, tmp_path: Path, capsys, value: str) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(image)
    argv = ["predict", str(lung_run), str(image), "--out", str(tmp_path / "p"), "--threshold", value]
    assert main(argv) == 2
    assert "--threshold" in capsys.readouterr().err
    assert not (tmp_path / "p" / "predictions.jsonl").exists()
