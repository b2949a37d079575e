"""The built-in model: shipped as package data within its size limit, described by its card,
used by ``predict`` with no model named, by ``covidseg.load_model()`` and by ``covidseg models``;
on the real Val split it scores what its card says."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import covidseg
from conftest import NEEDS_PROC, assert_synced_before_named, copy_run, record_disk_writes
from covidseg.cli import main
from covidseg.data.discovery import discover
from covidseg.data.image_io import read_mask, read_xray
from covidseg.inference.builtin import DEFAULT, builtin_names, builtin_path, describe, sha256
from covidseg.inference.postprocess import call_rule
from covidseg.metrics import confusion_counts, dice_iou
from covidseg.report import model_card

EXAMPLES = Path(covidseg.__file__).parent / "examples"
LIMIT_BYTES = 25 * 1000 * 1000


def test_the_default_model_ships_within_its_size_limit_with_a_true_card() -> None:
    assert DEFAULT in builtin_names()
    d = describe()
    assert d["default"] and d["builtin"] and d["outputs"] == ["infection", "lung", "covid"]
    # The limit holds for all built-in models together: they are package data of every install.
    total = sum(describe(name)["size_bytes"] for name in builtin_names())
    assert d["size_bytes"] <= total <= LIMIT_BYTES, total
    shipped = {"model.onnx", "config.json", "metadata.json", "calibration.json", "input_check.npz"}
    assert set(d["files"]) == shipped | {"MODEL_CARD.md"}
    card = d["card"]
    needed_words = ("COVID-QU-Ex", "Command", "seed", "cross-fitted", "not for diagnosis", "failure modes", "Speed")
    for needed in needed_words + ("input check", "ECE", "ROC AUC"):
        assert needed.lower() in card.lower(), needed
    # The card's hashes are those of the shipped files.
    listed = dict(re.findall(r"\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|", card))
    assert set(listed) == shipped
    for name, digest in listed.items():
        assert sha256(builtin_path() / name) == digest, name
    # Every built-in model's card states the COVID-19 call its shipped settings make, gate included.
    for name in builtin_names():
        cfg = json.loads((builtin_path(name) / "config.json").read_text())
        post, head = cfg["postprocess"], "covid" in cfg["outputs"]
        rule = call_rule(post["detect_fraction"], post["image_gate"], head)
        assert f"**COVID-19 call** ({rule}; shipped, in-sample)" in describe(name)["card"], name
        assert ("image head's" in rule) == head and ("above" in rule) == (post["image_gate"] > 0), name


def test_predict_with_no_model_uses_the_built_in_one(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(EXAMPLES), "--out", str(out), "--no-progress"]) == 0
    records = {Path(r["image"]).name: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert set(records) == {"covid-19.png", "non-covid.png", "normal.png"}
    for name, r in records.items():
        assert r["model"] == DEFAULT and r["engine"] == "onnx"
        assert r["model_sha256"] == sha256(builtin_path(DEFAULT) / "model.onnx")
        assert Image.open(out / r["mask"]).size == Image.open(EXAMPLES / name).size
        assert r["severity"] in ("none", "mild", "moderate", "severe")
    # The example with a large infection (51% of the lungs in its true mask) is found as such.
    covid = records["covid-19.png"]
    assert covid["covid_call"] is True and covid["infected_share_pct"] > 10


@NEEDS_PROC
def test_every_file_predict_writes_reaches_the_disk_before_it_is_named(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    events = record_disk_writes(monkeypatch)
    assert main(["predict", str(EXAMPLES), "--out", str(out), "--no-progress"]) == 0
    files = [f.resolve() for f in out.iterdir() if f.name != ".covidseg.lock"]
    assert len(files) == 1 + 3 * 3  # predictions.jsonl, and each X-ray's mask, lung and overlay
    assert_synced_before_named(files, events)


def test_load_model_predicts_a_path_and_an_array_alike() -> None:
    model = covidseg.load_model()
    path = EXAMPLES / "covid-19.png"
    by_path, by_array = model.predict(path), model.predict(read_xray(path))
    assert np.array_equal(by_path.mask, by_array.mask) and np.array_equal(by_path.lung, by_array.lung)
    assert by_path.mask.shape == (256, 256) and by_path.severity["severity"] == by_array.severity["severity"]
    assert covidseg.load_model(DEFAULT).name == DEFAULT


def test_built_in_model_passes_its_examples_and_flags_what_is_not_a_chest_x_ray() -> None:
    model = covidseg.load_model()
    for name in ("covid-19.png", "non-covid.png", "normal.png"):
        pred = model.predict(EXAMPLES / name)
        assert pred.input_check["verdict"] == "ok", (name, pred.input_check)
        assert 0 <= pred.covid_probability <= 1
    covid, normal = model.predict(EXAMPLES / "covid-19.png"), model.predict(EXAMPLES / "normal.png")
    assert covid.covid_probability > 0.5 > normal.covid_probability
    xray = read_xray(EXAMPLES / "normal.png")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    for image in (noise, np.full((256, 256), 128, np.uint8), np.rot90(xray).copy()):
        check = model.predict(image).input_check
        assert check["verdict"] != "ok", check


def test_a_folder_named_like_the_built_in_model_hides_it_only_if_it_holds_a_model(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    image = str(EXAMPLES / "covid-19.png")
    # predict's own output folder, named like the model, is no model: the built-in one is used.
    assert main(["predict", image, "--model", DEFAULT, "--out", DEFAULT, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", image, "--model", DEFAULT, "--out", "again", "--no-progress"]) == 0
    assert f"model: built-in {DEFAULT}" in capsys.readouterr().err
    # "./NAME" names the folder, which holds no model.
    assert main(["predict", image, "--model", f"./{DEFAULT}", "--out", "x", "--no-progress"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    # A bundle of that name is the user's own model and wins.
    mine = tmp_path / "mine" / DEFAULT
    shutil.copytree(builtin_path(), mine)
    monkeypatch.chdir(mine.parent)
    assert main(["predict", image, "--model", DEFAULT, "--out", "own", "--no-progress"]) == 0
    assert "built-in" not in capsys.readouterr().err
    assert json.loads((mine.parent / "own" / "predictions.jsonl").read_text())["model"] == DEFAULT


def test_models_lists_the_built_in_model_and_unknown_names_are_refused(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{DEFAULT} (default)" in out and "MODEL_CARD.md" in out and "smp-fpn" in out
    assert main(["predict", str(EXAMPLES), "--out", "/tmp/never", "--model", "no-such-model"]) == 2
    assert "built-in" in capsys.readouterr().err


@pytest.mark.realdata
def test_built_in_model_scores_on_val_what_its_card_says(real_root: Path) -> None:
    """Per-image Dice over Val COVID-19 X-rays at their own size, as the card's shipped row."""
    model = covidseg.load_model()
    meta = json.loads((builtin_path() / "metadata.json").read_text())
    card = describe()["card"]
    shipped = re.search(r"\*\*shipped bundle[^|]*\*\* \| ([\d.]+) \| ([\d.]+) \|", card)
    assert shipped, "the card has no shipped row"
    samples = [s for s in discover(real_root).split("Val") if s.group == "COVID-19"]
    dice = []
    for s in samples:
        pred = model.predict(s.image).mask
        truth = read_mask(s.infection)
        dice.append(dice_iou(confusion_counts(pred[None], truth[None]), 1.0)[0][0])
    assert np.mean(dice) == pytest.approx(float(shipped.group(1)), abs=0.002)
    assert meta["weights_precision"] == "fp16"


def test_a_model_card_is_refused_for_a_run_scored_on_synthetic_data(two_output_run: Path, tmp_path: Path) -> None:
    """The card's figures would be read from the synthetic set under a COVID-QU-Ex heading."""
    run, bundle = copy_run(two_output_run, tmp_path / "run"), tmp_path / "bundle"
    assert main(["evaluate", str(run), "--no-postprocess", "--panel", "0", "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--panel", "0", "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(bundle), "--onnx-only", "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--bundle", str(bundle), "--panel", "0", "--no-progress"]) == 0
    with pytest.raises(SystemExit, match="synthetic set"):
        model_card.main([str(run), str(bundle), "--name", "synthetic-test"])
    assert not (bundle / "MODEL_CARD.md").exists()
