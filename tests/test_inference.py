"""One inference path: what ``evaluate`` scores is exactly what ``predict`` writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_run
from covidseg.cli import main
from covidseg.data.discovery import discover
from covidseg.errors import CovidsegError
from covidseg.evaluation import evaluate_run
from covidseg.inference.builtin import sha256
from covidseg.inference.predictor import Predictor
from covidseg.metrics import confusion_counts, dice_iou


def _dice_of_predict_masks(out: Path, val: list) -> dict[str, float]:
    """Per image, the Dice of the mask file ``predict`` wrote against the original mask file."""
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    mask_of = {Path(r["image"]): r["mask"] for r in records}
    dice = {}
    for s in val:
        pred = np.asarray(Image.open(out / mask_of[s.image])) > 127
        truth = np.asarray(Image.open(s.infection)) > 127
        assert pred.shape == truth.shape  # the X-ray's own size, not the network's
        dice[s.id] = float(dice_iou(confusion_counts(pred[None], truth[None]))[0][0])
    return dice


def _partial_threshold(run: Path, synth_root: Path, quantile: float) -> float:
    """A threshold inside the run's own Val probabilities, so that its masks are partial."""
    p = Predictor.load(run)
    probs = np.concatenate([p.predict_file(s.image).probability.ravel() for s in discover(synth_root).split("Val")])
    return float(np.quantile(probs, quantile))


@pytest.mark.parametrize(
    ("quantile", "settings"),
    [
        (None, None),  # the plain threshold of the config
        (0.9, {"tta_hflip": True, "lung_gate": True, "min_component_share": 0.002, "fill_holes": True}),
        (0.8, {"image_gate": 0.01, "min_component_share": 0.01}),
    ],
)
def test_evaluate_scores_exactly_the_masks_predict_writes(
    two_output_run: Path, synth_root: Path, tmp_path: Path, quantile: float | None, settings: dict | None
) -> None:
    run = copy_run(two_output_run, tmp_path / "run")
    if settings is not None:
        settings = {**settings, "threshold": _partial_threshold(run, synth_root, quantile)}
        (run / "postprocess.json").write_text(json.dumps({"settings": settings}))
    s = evaluate_run(run, split="Val", panel=0)
    assert s["scored_at"] == "native" and len(s["sizes"]) > 1  # the synthetic X-rays differ in size
    rows = {r["id"]: float(r["dice"]) for r in csv.DictReader((run / "eval" / "Val" / "per_image.csv").open())}
    d = discover(synth_root)
    val_dir = d.root / "Val"
    assert main(["predict", str(run), str(val_dir), "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    written = _dice_of_predict_masks(tmp_path / "pred", d.split("Val"))
    assert set(written) == set(rows)  # the X-rays only: the mask folders of the layout are left out
    assert len((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()) == len(rows)
    for key, value in rows.items():
        assert value == pytest.approx(written[key], abs=1e-6), key
    # Not a vacuous comparison: with tuned-like settings the masks are partial (neither empty nor
    # everything), and the lung gate has lungs to gate with.
    per_image = csv.DictReader((run / "eval" / "Val" / "per_image.csv").open())
    shares = [float(r["image_infected_share_pct"]) / 100 for r in per_image]
    assert settings is None or any(0 < x < 1 for x in shares)
    assert s["lung"]["per_image"]["dice"] > 0.2


def test_native_and_input_scoring_differ_and_are_recorded(two_output_run: Path, tmp_path: Path) -> None:
    run = copy_run(two_output_run, tmp_path / "run")
    native = evaluate_run(run, split="Val", panel=0)
    small = evaluate_run(run, split="Val", panel=0, scored_at="input")
    assert small["scored_at"] == "input" and small["sizes"] == {"64x64": native["images"]}
    assert sum(native["sizes"].values()) == native["images"] and "64x64" not in native["sizes"]
    assert native["pooled"] != small["pooled"]


def test_a_model_is_named_by_the_bytes_it_was_loaded_from(two_output_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Training may replace best.pt while a run is being loaded: the hash recorded is of the
    weights in use, not of the file that replaced them."""
    import torch

    import covidseg.engine.checkpoint as checkpoint

    run = copy_run(two_output_run, tmp_path / "run")
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    loaded = sha256(best)
    last.write_bytes(last.read_bytes() + b"\0")  # another file, as a later epoch's would be
    real_load = torch.load

    def load_while_training_writes(*args, **kwargs):
        best.write_bytes(last.read_bytes())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "load", load_while_training_writes)
    predictor = Predictor.load(run)
    assert sha256(best) != loaded and predictor.sha256 == loaded


def test_predictor_accepts_arrays_and_files_alike(two_output_run: Path, synth_root: Path) -> None:
    p = Predictor.load(two_output_run)
    sample = discover(synth_root).split("Val")[0]
    from covidseg.data.image_io import read_xray

    by_file, by_array = p.predict_file(sample.image), p.predict(read_xray(sample.image))
    assert np.array_equal(by_file.mask, by_array.mask) and by_file.mask.shape == read_xray(sample.image).shape
    with pytest.raises(CovidsegError, match="2-D uint8"):
        p.predict(np.zeros((3, 4, 4), np.uint8))


@pytest.mark.parametrize("name", ["smp-fpn", "smp-unet"])
def test_smp_networks_export_with_the_shapes_a_bundle_checks(name: str, tmp_path: Path) -> None:
    """The exporter leaves symbolic output sizes for these networks; export writes the static ones."""
    from covidseg.config import build_config
    from covidseg.export import export_onnx
    from covidseg.inference.backends import onnx_backend
    from covidseg.inference.bundle import _check_onnx
    from covidseg.models import create_model, model_spec

    cfg = build_config("cpu", overrides={"model.name": name, "data.image_size": 64})
    path = export_onnx(create_model(model_spec(cfg)).eval(), 64, tmp_path / "model.onnx")
    _check_onnx(path, 64, 3)  # infection, lung, and the image head's channel
    x = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    assert onnx_backend(path)(x).shape == (3, 3, 64, 64)
