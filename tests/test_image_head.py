"""The image-level COVID-19 head (``model.targets`` infection+lung+covid): its logit travels as
the last output channel, is trained on the image label, and decides the image gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covidseg.cli import main
from covidseg.config import LossConfig, build_config
from covidseg.data.dataset import stack_targets
from covidseg.errors import ConfigError
from covidseg.inference.postprocess import Postprocess, finalize
from covidseg.losses import build_loss
from covidseg.models import create_model, model_spec

HEAD = "infection+lung+covid"


def test_the_head_is_one_more_channel_holding_one_value_per_image() -> None:
    cfg = build_config("cpu", overrides={"model.targets": HEAD, "data.image_size": 64})
    net = create_model(model_spec(cfg)).eval()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 3, 64, 64)
    head = out[:, 2]
    assert torch.equal(head, head[:, :1, :1].expand_as(head))  # constant over the pixels
    assert not torch.equal(out[:, 0], out[:, 0, :1, :1].expand_as(out[:, 0]))  # the masks are maps
    with pytest.raises(ConfigError, match="needs an smp"):
        model_spec(build_config("reference", overrides={"model.targets": HEAD}))


def test_the_head_learns_the_image_label_and_the_masks_their_own_loss() -> None:
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 2:4, 2:4] = 1  # the first image has infection, the second none
    batch = {"mask": mask, "lung": torch.ones(2, 1, 8, 8)}
    target = stack_targets(batch, ("infection", "lung", "covid"))
    assert target[0, 2].eq(1).all() and target[1, 2].eq(0).all()
    cfg = LossConfig(name="bce_dice", dice_empty="skip", image_weight=0.5)
    loss = build_loss(cfg, ("infection", "lung", "covid"))
    seg_logits = torch.randn(2, 2, 8, 8)

    def total(head: list[float]) -> float:
        h = torch.tensor(head)[:, None, None, None].expand(2, 1, 8, 8)
        return float(loss(torch.cat([seg_logits, h], 1), target))

    seg = float(build_loss(cfg, ("infection", "lung"))(seg_logits, target[:, :2]))
    assert total([20.0, -20.0]) == pytest.approx(seg, abs=1e-6)  # a right, sure head costs nothing
    assert total([-20.0, -20.0]) == pytest.approx(seg + 0.5 * 20 / 2, rel=1e-4)  # one sure miss of two


def test_the_gate_follows_the_head_not_the_peak_pixel() -> None:
    probs = np.zeros((3, 16, 16), np.float32)
    probs[0, 4:8, 4:8] = 0.99  # a sure-looking infection
    probs[1] = 1.0  # all lung
    post = Postprocess(threshold=0.5, image_gate=0.5)
    targets = ("infection", "lung", "covid")
    probs[2] = 0.2  # the head says: no COVID-19
    assert finalize(probs, (32, 32), post, targets).mask.sum() == 0
    probs[2] = 0.8
    m = finalize(probs, (32, 32), post, targets)
    assert m.score == pytest.approx(0.8) and m.mask.sum() == 64  # 4x4 at 16 -> 8x8 at 32
    assert finalize(probs, (32, 32), post, ("infection", "lung")).mask.sum() == 64  # no head: the peak, 0.99


def test_a_head_run_tunes_its_gate_exports_and_predicts_alike(synth_root: Path, tmp_path: Path) -> None:
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    common = ["--data", str(synth_root), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["train", "--preset", "cpu", "--image-size", "64", "--steps", "8", "--model", "smp-unet",
                 "--encoder", "resnet18", "--set", f"model.targets={HEAD}", "--set", "data.val_limit=None",
                 "--out", str(run), *common]) == 0  # fmt: skip
    assert main(["tune", str(run), "--metric", "balanced", "--no-progress"]) == 0
    record = json.loads((run / "postprocess.json").read_text())
    gates = [s for s in record["steps"] if s["step"] == "image_gate" and s.get("trial")]
    assert any(s["setting"].startswith("0.05 ") for s in gates)  # the head's grid reaches below 0.5
    assert main(["export", str(run), "--out", str(bundle), "--no-progress"]) == 0
    assert json.loads((bundle / "config.json").read_text())["outputs"] == ["infection", "lung", "covid"]
    images = synth_root / "Infection Segmentation Data" / "Val" / "COVID-19" / "images"
    rows = {}
    for name, model in (("run", run), ("bundle", bundle)):
        out = tmp_path / name
        assert main(["predict", str(images), "--model", str(model), "--out", str(out), "--no-progress"]) == 0
        rows[name] = [json.loads(x) for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    for a, b in zip(rows["run"], rows["bundle"]):
        assert a["covid_head_probability"] == pytest.approx(b["covid_head_probability"], abs=1e-3)
        assert a["image_gate"] == b["image_gate"] == record["settings"]["image_gate"]
        assert a["infected_pixels"] == pytest.approx(b["infected_pixels"], abs=max(3, 0.01 * a["infected_pixels"]))
