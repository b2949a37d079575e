"""Training within a time budget: the run measures its own speed and lays the schedule over the
optimiser steps that fit.

With ``train.time_budget`` (seconds) the learning-rate schedule is a function of *progress*,
``steps done / steps planned``, and the plan is renewed after every step from the measured
seconds per step and per validation pass: the steps left are those that fit in the time left,
after the validation passes still to come. So the schedule ends when the budget does, on any
CPU or GPU and under any load, and a resumed run counts the time it already spent.
``train.epochs`` caps the plan. The last epoch may be partial; the run ends with its check.

With ``train.steps`` instead (:class:`FixedSteps`), the same schedule over progress is laid over
exactly that many steps, whatever the time they take: two runs with the same seed take the same
steps at the same learning rates.

Schedules over progress ``p`` in [0, 1] (:func:`lr_factor`), the same shapes as the epoch-based
ones of :mod:`covidseg.engine.optim`: ``constant``; ``cosine`` (linear warm-up, cosine decay to
``final_lr_ratio``); ``onecycle`` (cosine up from lr/25 to lr over the warm-up share, then down
to lr/25e4, with the first-moment momentum cycled from 0.95 to 0.85 and back, as PyTorch's
OneCycleLR does).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from covidseg.config import OptimConfig

MARGIN = 0.02  # share of the budget kept free: the last check can take longer than the ones measured
RECORDED = ("seconds", "steps_per_epoch", "val_batches", "max_steps", "spent", "steps", "step_time", "step_spread",
            "val_time", "planned", "progress", "finished")  # fmt: skip


def _cos(start: float, end: float, x: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * min(max(x, 0.0), 1.0)) + 1)


def warmup_share(cfg: OptimConfig, epochs: int) -> float:
    if cfg.warmup_epochs > 0:
        return min(max(cfg.warmup_epochs / max(epochs, 1), 1e-3), 0.99)
    return 0.3 if cfg.schedule == "onecycle" else 0.0


def lr_factor(cfg: OptimConfig, p: float, warm: float) -> tuple[float, float | None]:
    """(learning-rate factor, first-moment momentum or None) at progress ``p``."""
    if cfg.schedule == "constant":
        return 1.0, None
    if cfg.schedule == "onecycle":
        if p < warm:
            x = p / warm
            return _cos(1 / 25, 1.0, x), _cos(0.95, 0.85, x)
        x = (p - warm) / max(1 - warm, 1e-9)
        return _cos(1.0, 1 / 25e4, x), _cos(0.85, 0.95, x)
    if p < warm:
        return max(p / warm, 1e-3), None
    x = (p - warm) / max(1 - warm, 1e-9)
    return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(x, 1.0))), None


def steps_that_fit(left: float, step: float, check: float, per_epoch: int, done: int) -> int:
    """The most steps n such that n steps and the checks they bring (one at every epoch end, and
    one at the end: ``ceil((done % per_epoch + n) / per_epoch)``, at least 1) fit in ``left`` seconds."""
    in_epoch = done % per_epoch
    best, checks = 0, 1
    while left - checks * check > 0:
        n = min(int((left - checks * check) / step), checks * per_epoch - in_epoch)
        best = max(best, n)
        if n < checks * per_epoch - in_epoch:  # time, not the epoch count, binds: more checks only cost
            break
        checks += 1
    return best


@dataclass
class Budget:
    """The plan of a budgeted run: what it measured and how many steps fit."""

    seconds: float
    steps_per_epoch: int
    val_batches: int
    max_steps: int
    spent: float = 0.0  # seconds of training before this process (a resumed run)
    steps: int = 0
    step_time: float | None = None  # seconds per step (moving average)
    step_spread: float = 0.0  # its moving mean absolute deviation
    val_time: float | None = None
    planned: int | None = None
    progress: float = 0.0
    finished: bool = False
    started: float = field(default_factory=time.perf_counter, repr=False)  # this process's clock
    _clock: float | None = field(default=None, repr=False)

    def elapsed(self) -> float:
        """Seconds spent: before this process (a resumed run) and since ``started``."""
        return self.spent + time.perf_counter() - self.started

    def tick(self) -> None:
        """One optimiser step is done: update the speed and the plan."""
        now = time.perf_counter()
        if self._clock is not None:
            dt = now - self._clock
            if self.step_time is None:
                self.step_time, self.step_spread = dt, 0.0
            else:
                self.step_spread = 0.9 * self.step_spread + 0.1 * abs(dt - self.step_time)
                self.step_time = 0.9 * self.step_time + 0.1 * dt
        self._clock = now
        self.steps += 1
        self._replan()
        self.finished = self.steps >= (self.planned or 0) > 0

    def pause(self) -> None:
        """Stop the step clock (a validation pass or a checkpoint follows)."""
        self._clock = None

    def observe_val(self, seconds: float) -> None:
        """The seconds of one epoch-end check (validation, checkpoints, history, curves)."""
        self.val_time = max(seconds, self.val_time or 0.0)  # plan every check as the slowest one seen
        self._replan()

    def _replan(self) -> None:
        if self.step_time is None:
            return
        tau = self.step_time + self.step_spread  # plan for slow steps, not the average one
        val = self.val_time if self.val_time is not None else self.val_batches * tau / 3
        left = self.seconds * (1 - MARGIN) - self.elapsed() - tau  # one slow step to spare
        self.planned = min(
            self.steps + steps_that_fit(left, tau, val, self.steps_per_epoch, self.steps), self.max_steps
        )
        self.progress = max(self.progress, self.steps / max(self.planned, 1))

    @property
    def done(self) -> bool:
        """The schedule is complete: a training step reached progress 1. (A plan that shrinks at a
        check does not end the run by itself: the next step then completes the schedule.)"""
        return self.finished

    def state(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k in RECORDED}
        out["seconds"] = self.seconds if math.isfinite(self.seconds) else None  # None: a fixed number of steps
        out["elapsed"] = self.elapsed()
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """The measured speed and progress of a resumed run (``spent`` is set from its history)."""
        for key in ("steps", "step_time", "step_spread", "val_time", "planned", "progress", "finished"):
            if key in state:
                setattr(self, key, state[key])


class ProgressSchedule:
    """Sets the learning rate (and momentum) of every parameter group from the budget's progress;
    stepped after every optimiser step like a PyTorch scheduler."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, budget: Budget, epochs: int) -> None:
        self.optimizer, self.cfg, self.budget = optimizer, cfg, budget
        self.warm = warmup_share(cfg, epochs)
        self.base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base):
            g["initial_lr"] = lr
        self._apply()

    def _apply(self) -> None:
        factor, momentum = lr_factor(self.cfg, self.budget.progress, self.warm)
        for g, lr in zip(self.optimizer.param_groups, self.base):
            g["lr"] = lr * factor
            if momentum is not None and "betas" in g:
                g["betas"] = (momentum, g["betas"][1])
            elif momentum is not None and "momentum" in g:
                g["momentum"] = momentum

    def step(self) -> None:
        self.budget.tick()
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return self.budget.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.restore(state)
        self._apply()


class FixedSteps(Budget):
    """A plan of exactly ``max_steps`` optimiser steps (``train.steps``), independent of speed."""

    def _replan(self) -> None:
        self.planned = self.max_steps
        self.progress = self.steps / self.max_steps
