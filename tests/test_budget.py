"""Training within a time budget: it ends in time with its schedule completed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from conftest import interrupt_training
from covidseg.config import OptimConfig
from covidseg.engine.budget import Budget, lr_factor, steps_that_fit
from covidseg.engine.fit import fit
from covidseg.engine.run_folder import read_history


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_over_progress_start_peak_and_end_where_they_should(schedule: str) -> None:
    cfg = OptimConfig(name="adamw", lr=1e-3, schedule=schedule, warmup_epochs=1)
    warm = 0.2
    start, peak, end = (lr_factor(cfg, p, warm)[0] for p in (0.0, warm, 1.0))
    assert peak == pytest.approx(1.0)
    assert start < 0.05 and end < 0.02
    values = [lr_factor(cfg, p / 100, warm)[0] for p in range(101)]
    top = values.index(max(values))
    assert all(a <= b + 1e-12 for a, b in zip(values[:top], values[1 : top + 1]))  # rises, then
    assert all(a >= b - 1e-12 for a, b in zip(values[top:], values[top + 1 :]))  # falls
    if schedule == "onecycle":
        assert lr_factor(cfg, 0.0, warm)[1] == pytest.approx(0.95) and lr_factor(cfg, warm, warm)[1] == pytest.approx(
            0.85
        )


def test_plan_leaves_room_for_the_checks_ahead() -> None:
    b = Budget(seconds=100.0, steps_per_epoch=10, val_batches=4, max_steps=10_000, started=time.perf_counter())
    b.step_time, b.val_time = 1.0, 5.0
    b._replan()
    # 98 s left (2% margin), one step kept to spare: n one-second steps and ceil(n / 10) checks of
    # 5 s must fit in 97 s. 62 steps and 7 checks take 97 s; 63 steps and 7 checks would take 98 s.
    assert steps_that_fit(97.0, 1.0, 5.0, 10, 0) == 62 and steps_that_fit(98.0, 1.0, 5.0, 10, 0) == 63
    assert b.planned in (61, 62)  # a few microseconds have passed
    assert b.planned * 1.0 + math.ceil(b.planned / 10) * 5.0 <= 97.0
    # Halfway through an epoch, its end comes sooner: 6 steps to the first check.
    assert steps_that_fit(12.0, 1.0, 5.0, 10, 4) == 6 and steps_that_fit(10.9, 1.0, 5.0, 10, 4) == 5
    b.max_steps = 20
    b._replan()
    assert b.planned == 20  # the epochs cap


def test_a_budgeted_run_ends_in_time_with_its_schedule_complete(tiny_cfg, tmp_path: Path) -> None:
    budget = 25.0
    cfg = tiny_cfg(
        **{
            "train.epochs": 500,  # a cap far away: the budget decides
            "train.time_budget": budget,
            "optim.name": "adamw",
            "optim.schedule": "onecycle",
        }
    )
    t0 = time.perf_counter()
    result = fit(cfg, tmp_path / "run")
    took = time.perf_counter() - t0
    assert took <= budget * 1.05, took
    assert took >= budget * 0.75, took  # and it used the time it had
    hist = read_history(tmp_path / "run" / "history.csv")
    assert result.epochs_run == len(hist) < 500
    assert hist[-1]["steps"] == hist[-1]["planned_steps"]  # the schedule reached its end
    record = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert record["progress"] == pytest.approx(1.0) and record["seconds"] == budget
    assert record["elapsed"] <= budget * 1.05  # the promise: within the budget + 5%
    # The learning rate at the end is the schedule's last value (one-cycle: lr / 25e4), and it
    # peaked on the way there.
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 25e4, rel=1e-6)
    assert max(h["lr"] for h in hist) > 10 * hist[0]["lr"]


def test_a_fixed_step_run_ends_at_its_steps_and_rebuilds_bit_for_bit(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.steps: the schedule over exactly N steps (the last epoch partial); the same seed gives
    the same weights, whatever the time the steps took, and so does a run stopped and resumed
    (a network with dropout: its draws continue where they stopped)."""
    overrides = {
        "train.epochs": 10, "train.steps": 7, "optim.name": "adamw", "optim.schedule": "onecycle",
        "model.name": "smp-unet", "model.encoder_name": "resnet18", "model.targets": "infection+lung+covid",
    }  # fmt: skip
    fit(tiny_cfg(**overrides), tmp_path / "a")
    time.sleep(0.5)  # a different pace between the runs must not matter
    fit(tiny_cfg(**overrides), tmp_path / "b")
    interrupt_training(monkeypatch, in_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg(**overrides), tmp_path / "c")
    fit(tiny_cfg(**overrides), tmp_path / "c", resume=True)
    runs = [torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=True) for n in "abc"]
    hist = read_history(tmp_path / "a" / "history.csv")
    assert [h["steps"] for h in hist] == [4, 7]  # 16 Train images, batch 4: 4 steps an epoch
    assert hist[-1]["planned_steps"] == 7
    assert runs[0]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 25e4, rel=1e-6)
    record = json.loads((tmp_path / "a" / "budget.json").read_text())
    assert record["seconds"] is None and record["progress"] == pytest.approx(1.0)
    a = runs[0]["model"]
    for other in runs[1:]:
        assert a.keys() == other["model"].keys() and all(torch.equal(a[k], other["model"][k]) for k in a)


def test_steps_must_fit_the_epoch_cap_and_exclude_a_time_budget(tiny_cfg, tmp_path: Path) -> None:
    from covidseg.errors import ConfigError, CovidsegError

    with pytest.raises(CovidsegError, match="needs 3 epochs"):
        fit(tiny_cfg(**{"train.epochs": 2, "train.steps": 9}), tmp_path / "run")
    with pytest.raises(ConfigError, match="exclude each other"):
        tiny_cfg(**{"train.steps": 9, "train.time_budget": 60.0})
