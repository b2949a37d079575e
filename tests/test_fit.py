from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from conftest import NEEDS_PROC, assert_synced_before_named, interrupt_training, record_disk_writes
from covidseg.cli import main
from covidseg.data.discovery import discover
from covidseg.data.loading import load_dataset, make_loader
from covidseg.engine.checkpoint import load_checkpoint, load_run, save_checkpoint
from covidseg.engine.epoch_check import evaluate
from covidseg.engine.fit import fit
from covidseg.engine.run_folder import COLUMNS, read_history
from covidseg.errors import CheckpointError, CovidsegError, DivergedError
from covidseg.metrics import pooled


def test_run_folder_is_complete(tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = fit(tiny_cfg(), run)
    assert result.epochs_run == 2 and result.best_epoch in (1, 2)
    for name in (
        "config.yaml",
        "env.json",
        "splits.json",
        "history.csv",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "plots/samples.png",
        "plots/curves.png",
    ):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["image_size"] == 64 and saved["train"]["epochs"] == 2
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["packages"]["torch"] and env["device"] == "cpu"
    hist = read_history(run / "history.csv")
    assert len(hist) == 2 and set(COLUMNS) <= set(hist[0])
    assert 0 <= hist[-1]["val_pixel_accuracy"] <= 1 and hist[-1]["lr"] == pytest.approx(1e-3)
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["Train"]) == 16 and len(splits["Val"]) == 8


def test_same_seed_same_history_and_resume_matches_unbroken_run(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_cfg(**{"train.epochs": 3})
    a = fit(cfg, tmp_path / "a")
    b = fit(cfg, tmp_path / "b")
    keys = ("train_loss", "val_loss", "val_dice")
    assert [[h[k] for k in keys] for h in a.history] == [[h[k] for k in keys] for h in b.history]

    # A run interrupted in epoch 2 (Ctrl-C) and resumed gives the unbroken run's numbers.
    interrupt_training(monkeypatch, in_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "c")
    resumed = fit(cfg, tmp_path / "c", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for x, y in zip(a.history, resumed.history):
        for k in keys:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), k
    assert (tmp_path / "c" / "env-resume-2.json").is_file()


def test_best_epoch_by_covid_dice(tiny_cfg, tmp_path: Path) -> None:
    result = fit(tiny_cfg(**{"train.epochs": 3, "train.select_metric": "val_dice_per_image_covid"}), tmp_path / "r")
    hist = read_history(tmp_path / "r" / "history.csv")
    covid = [h["val_dice_per_image_covid"] for h in hist]
    assert all(0.0 <= x <= 1.0 for x in covid)
    assert result.best_epoch == 1 + max(range(3), key=lambda i: (covid[i], -i))
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == result.best_epoch


def test_refuses_to_overwrite_and_to_resume_nothing(tiny_cfg, tmp_path: Path) -> None:
    fit(tiny_cfg(**{"train.epochs": 1}), tmp_path / "run")
    with pytest.raises(CovidsegError, match="already holds a run; pass --resume"):
        fit(tiny_cfg(), tmp_path / "run")
    with pytest.raises(CovidsegError, match="nothing to resume"):
        fit(tiny_cfg(), tmp_path / "new", resume=True)


def test_resume_removes_the_temporary_files_of_a_killed_checkpoint_write(tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(tiny_cfg(**{"train.epochs": 1}), run)
    leftover = run / "checkpoints" / ".last.pt.k1ll3d"  # what save_checkpoint's temporary file is named
    leftover.write_bytes(b"half a checkpoint")
    fit(tiny_cfg(**{"train.epochs": 1}), run, resume=True)  # a finished run resumes to its end at once
    assert not leftover.exists() and (run / "checkpoints" / "last.pt").is_file()


def test_checkpoint_round_trip_gives_identical_logits(tiny_cfg, tmp_path: Path) -> None:
    """The reloaded checkpoint scores Val exactly as the in-memory model did at the end of training."""
    run = tmp_path / "run"
    result = fit(tiny_cfg(**{"train.epochs": 1}), run)
    model, cfg, state = load_run(run, "last")
    assert cfg.data.image_size == 64 and state["epoch"] == 1
    ds = load_dataset(discover(cfg.data.root), "Val", 64, cfg.data.cache_dir)
    ev = evaluate(model, make_loader(ds, cfg.train.batch_size, False), torch.device("cpu"), targets=("infection",))
    in_memory = result.history[-1]
    assert ev.loss == pytest.approx(in_memory["val_loss"], rel=1e-6, abs=1e-9)
    assert pooled(ev.stats)["pixel_accuracy"] == pytest.approx(in_memory["val_pixel_accuracy"], abs=1e-12)


def test_foreign_and_damaged_checkpoints_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="another program"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a covidseg checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": "covidseg-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")  # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        (tmp_path / "emptyrun").mkdir()
        load_run(tmp_path / "emptyrun")


def test_atomic_save_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "ck" / "last.pt"
    save_checkpoint(target, {"epoch": 1})
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        save_checkpoint(target, {"epoch": 2, "bad": lambda: 0})  # cannot be pickled
    assert load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]
    # A loaded checkpoint carries the hash of its file; saved again, it does not keep that hash.
    save_checkpoint(target, load_checkpoint(target))
    assert "file_sha256" not in torch.load(target, weights_only=True)


@NEEDS_PROC
def test_every_file_of_a_run_reaches_the_disk_before_it_is_named(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    """A power cut during training leaves each run file old or new, never empty: its data are synced
    before the rename that names it, and its folder after."""
    events = record_disk_writes(monkeypatch)
    run = tmp_path / "run"
    fit(tiny_cfg(**{"train.epochs": 1, "train.steps": 4}), run)
    appended = {".covidseg.lock", "train.log"}  # the lock, and the log that grows line by line
    files = [f.resolve() for f in run.rglob("*") if f.is_file() and f.name not in appended]
    assert {f.name for f in files} >= {"budget.json", "env.json", "splits.json", "history.csv", "last.pt"}
    assert_synced_before_named(files, events)


def test_training_that_diverges_stops_with_a_clear_error(tiny_cfg, tmp_path: Path, capsys) -> None:
    with pytest.raises(DivergedError, match="lower the learning rate"):
        fit(tiny_cfg(**{"train.epochs": 1, "optim.lr": 1e30}), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    cfg = tiny_cfg()
    args = ["train", "--data", cfg.data.root, "--out", str(tmp_path / "cli"), "--preset", "reference"]
    args += ["--image-size", "64", "--epochs", "1", "--lr", "1e30", "--cache-dir", cfg.data.cache_dir, "--no-progress"]
    assert main(args) == 2
    assert "covidseg: error: " in capsys.readouterr().err


def test_resume_with_changed_settings_is_refused_before_anything_is_written(tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit(tiny_cfg(**{"train.epochs": 1}), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for change in ({"optim.lr": 0.5}, {"data.image_size": 32}, {"train.epochs": 3}):
        with pytest.raises(CovidsegError, match=f"{next(iter(change))}.*differ"):
            fit(tiny_cfg(**{"train.epochs": 1, **change}), run, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # Where the data and cache are may change: the run resumes (and, finished, stays as it was).
    moved = tiny_cfg(**{"train.epochs": 1, "data.cache_dir": str(tmp_path / "other-cache")})
    assert fit(moved, run, resume=True).epochs_run == 1


def test_a_run_folder_has_one_writer(tiny_cfg, tmp_path: Path) -> None:
    from covidseg.locking import folder_lock

    run = tmp_path / "run"
    with folder_lock(run, "train"):
        with pytest.raises(CovidsegError, match="in use by another covidseg process"):
            fit(tiny_cfg(**{"train.epochs": 1}), run)
    assert not (run / "checkpoints").exists()
    fit(tiny_cfg(**{"train.epochs": 1}), run)  # released: the next writer goes ahead
