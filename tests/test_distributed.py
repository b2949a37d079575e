"""DistributedDataParallel on CPU: two gloo processes started by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covidseg.data.discovery import discover
from covidseg.data.loading import load_dataset, make_loader
from covidseg.engine.checkpoint import load_run
from covidseg.engine.epoch_check import evaluate
from covidseg.engine.run_folder import read_history
from covidseg.metrics import pooled


@pytest.mark.slow
def test_torchrun_two_processes_trains_one_run(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "covidseg", "train", "--data", str(synth_root), "--out", str(run), "--preset", "reference",
        "--image-size", "64", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--set", "model.base_channels=8", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    hist = read_history(run / "history.csv")
    assert [h["epoch"] for h in hist] == [1, 2]
    model, cfg, state = load_run(run, "last")
    assert state["epoch"] == 2 and cfg.data.image_size == 64
    # Validation was gathered from both processes: every Val image counted once, so one process
    # scoring the saved model on the whole of Val gets the same loss and pixel accuracy.
    ds = load_dataset(discover(synth_root), "Val", 64, str(tmp_path / "cache"))
    ev = evaluate(model, make_loader(ds, 4, False), torch.device("cpu"))
    assert len(ev.stats) == len(ds) == 8
    assert ev.loss == pytest.approx(hist[-1]["val_loss"], rel=1e-4)
    assert pooled(ev.stats)["pixel_accuracy"] == pytest.approx(hist[-1]["val_pixel_accuracy"], abs=1e-4)
    env_json = json.loads((run / "env.json").read_text())
    assert env_json["world_size"] == 2
    # Only rank 0 wrote: one log line per epoch.
    assert (run / "train.log").read_text().count("epoch 2/2") == 1
    assert done.stdout.count("best val_dice") == 1
