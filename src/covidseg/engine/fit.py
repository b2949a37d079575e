"""``fit(cfg, run_dir)``: build everything, run the epoch loop, keep checkpoints and history.

The run folder is the artefact::

    RUN_DIR/config.yaml          resolved config, written before training starts
    RUN_DIR/env.json             versions, device, seed, command line
    RUN_DIR/splits.json          the image ids trained and validated on
    RUN_DIR/train.log            the log of every session of the run
    RUN_DIR/budget.json          with a time budget (or train.steps): seconds per step and per check, steps
                                 planned and done
    RUN_DIR/history.csv          one row per epoch: train/val loss, pixel accuracy, Dice, IoU, lr
    RUN_DIR/checkpoints/last.pt  after every epoch (resume point)
    RUN_DIR/checkpoints/best.pt  the epoch with the best ``train.select_metric``
    RUN_DIR/plots/samples.png, plots/curves.png
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from covidseg.atomic import write_atomic
from covidseg.config import Config, flatten, from_dict
from covidseg.data.loading import make_loader
from covidseg.engine.checkpoint import load_checkpoint, remove_leftovers, save_checkpoint
from covidseg.engine.device import resolve_device
from covidseg.engine.distributed import DistInfo, all_gather, barrier, cleanup, init_distributed
from covidseg.engine.epoch_check import EvalResult, evaluate
from covidseg.engine.run_folder import write_history
from covidseg.engine.session import Training, draw_curves, epoch_row, log_epoch, prepare
from covidseg.engine.train import train_one_epoch
from covidseg.errors import CovidsegError
from covidseg.locking import folder_lock
from covidseg.progress import Progress
from covidseg.repro import epoch_generator

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    best_value: float
    select_metric: str
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new < old if metric == "val_loss" else new > old


def _smooth(history: list[dict[str, Any]], metric: str, alpha: float) -> float:
    """Exponential moving average of ``metric`` over the epochs so far (alpha = 0: the last value)."""
    value = math.nan
    for row in history:
        x = row.get(metric, math.nan)  # a column added since an older run was written: nan
        value = x if math.isnan(value) else alpha * value + (1 - alpha) * x
    return value


# What a resumed run may change: where the data and cache are, and where it runs. Anything else
# would make the second half of the run another run.
RESUME_MAY_CHANGE = ("data.root", "data.cache_dir", "data.num_workers", "train.device")


def check_resume(saved: Config, given: Config) -> None:
    """Refuse, before anything is written, a resume whose settings differ from the run's own."""
    a, b = flatten(saved.to_dict()), flatten(given.to_dict())
    changed = [k for k in sorted(set(a) | set(b)) if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)]
    if changed:
        diffs = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:5])
        raise CovidsegError(
            f"--resume continues the run as it was configured, but {diffs} differ; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change. Start a new run with another --out to change the rest"
        )


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy covidseg's log records (INFO and up) into ``path`` (appended) while the block runs:
    every run folder keeps its ``train.log``, whoever started the training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("covidseg")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def fit(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    argv: list[str] | None = None,
) -> RunResult:
    """Train ``cfg`` into ``run_dir``; with ``resume``, continue from ``checkpoints/last.pt``.

    A resumed run repeats the epoch that was in progress and then goes on exactly as an
    unbroken run would (the shuffling of each epoch depends only on the seed and the epoch).
    Started by ``torchrun`` with several processes, it trains with DistributedDataParallel
    (:mod:`covidseg.engine.distributed`); only rank 0 writes the run folder.

    Example:
        >>> result = fit(build_config("demo", overrides={"data.root": "synth"}), "runs/demo")
    """
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise CovidsegError(f"nothing to resume: {last_path} does not exist; start the run without --resume")
        state = load_checkpoint(last_path)
        check_resume(from_dict(state["config"]), cfg)
    elif last_path.is_file():
        raise CovidsegError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")

    dinfo, device_name = init_distributed(cfg.train.device)
    lock = folder_lock(run_dir, "train") if dinfo.is_main else nullcontext()
    try:
        with lock, run_log(run_dir / "train.log") if dinfo.is_main else nullcontext():
            if dinfo.is_main and remove_leftovers(run_dir / "checkpoints"):
                log.info("removed the temporary checkpoint files an interrupted run had left")
            result = _fit(cfg, run_dir, state, dinfo, resolve_device(device_name), progress, argv)
        # Every process waits for rank 0 to finish writing, so none tears down its
        # connections while another still uses them.
        barrier(dinfo)
        return result
    finally:
        cleanup(dinfo)


def _fit(
    cfg: Config,
    run_dir: Path,
    state: dict[str, Any] | None,
    dinfo: DistInfo,
    device: torch.device,
    progress: Progress | None,
    argv: list[str] | None,
) -> RunResult:
    tr = prepare(cfg, run_dir, state, dinfo, device, progress, argv, time.perf_counter())
    t = cfg.train
    for epoch in range(tr.start_epoch, t.epochs + 1):
        if tr.budget is not None and tr.budget.done:  # a resumed run whose budget was already used
            break
        if t.early_stop_patience and epoch - tr.best["epoch"] > t.early_stop_patience:
            log.info("early stop: no better smoothed %s for %d epochs", t.select_metric, t.early_stop_patience)
            break
        _run_epoch(tr, epoch)
        if tr.budget is not None and tr.budget.done:
            b = tr.budget
            log.info(
                "%s: schedule complete after %d steps (%d epochs, the last %s) in %.0f s",
                f"time budget {b.seconds:.0f} s" if math.isfinite(b.seconds) else f"{b.max_steps} steps",
                b.steps, epoch, "whole" if b.steps % tr.steps_per_epoch == 0 else "partial", b.elapsed(),
            )  # fmt: skip
            break
    value = tr.best["value"]
    return RunResult(
        run_dir, int(tr.best["epoch"]), float(value if value is not None else math.nan), t.select_metric,
        len(tr.history), tr.history,
    )  # fmt: skip


def _run_epoch(tr: Training, epoch: int) -> None:
    """Train one epoch, check it on Val, keep the history, checkpoints and curves."""
    t, d = tr.cfg.train, tr.cfg.data
    t0 = time.perf_counter()
    tr.train_ds.set_seed(t.seed * 1_000_003 + epoch * 1009 + tr.dinfo.rank)  # augmentation draws, without workers
    if tr.train_sampler is not None:
        tr.train_sampler.set_epoch(epoch)
    train_loader = make_loader(
        tr.train_ds, t.batch_size, True, d.num_workers, generator=epoch_generator(t.seed, epoch),
        pin_memory=tr.device.type == "cuda", sampler=tr.train_sampler,
    )  # fmt: skip
    lr = tr.optimizer.param_groups[0]["lr"]
    budget = tr.budget
    result = train_one_epoch(
        tr.model, train_loader, tr.loss_fn, tr.optimizer, tr.device, tr.autocast, tr.scaler, tr.progress,
        desc=f"epoch {epoch}/{t.epochs}", scheduler=tr.scheduler, grad_clip=tr.cfg.optim.grad_clip,
        channels_last=t.channels_last, targets=tr.cfg.model.target_list,
        stop=(lambda: budget.done) if budget is not None else None,
    )  # fmt: skip
    if budget is not None:
        budget.pause()
    t_val = time.perf_counter()
    ev = evaluate(
        tr.net, tr.val_loader, tr.device, tr.cfg.eval.threshold, tr.autocast, progress=tr.progress, desc="val",
        channels_last=t.channels_last, targets=tr.cfg.model.target_list,
    )  # fmt: skip
    evs = all_gather(tr.dinfo, ev)
    row = epoch_row(tr, epoch, lr, all_gather(tr.dinfo, result), EvalResult.merge(evs) if tr.dinfo.enabled else ev)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["steps"] = budget.steps if budget is not None else epoch * tr.steps_per_epoch
    row["planned_steps"] = budget.planned if budget is not None else t.epochs * tr.steps_per_epoch
    tr.history.append(row)
    smoothed = _smooth(tr.history, t.select_metric, t.select_smoothing)
    row[f"{t.select_metric}_smoothed"] = smoothed
    improved = _better(t.select_metric, smoothed, tr.best.get("smoothed", tr.best["value"]))
    if improved:
        tr.best = {"metric": t.select_metric, "value": row[t.select_metric], "epoch": epoch, "smoothed": smoothed}
    if tr.dinfo.is_main:
        _save_epoch(tr, epoch, improved)
        draw_curves(tr)
    log_epoch(tr, row, improved)
    if budget is not None:  # the check: validation, checkpoints, history and curves
        budget.observe_val(time.perf_counter() - t_val)
        if tr.dinfo.is_main:
            write_atomic(tr.run_dir / "budget.json", json.dumps(budget.state(), indent=2))


def _save_epoch(tr: Training, epoch: int, improved: bool) -> None:
    """Checkpoints and history after an epoch."""
    ckpt = {
        "model": tr.net.state_dict(),
        "model_spec": tr.spec,
        "config": tr.cfg.to_dict(),
        "optimizer": tr.optimizer.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler is not None else None,
        "scheduler": tr.scheduler.state_dict() if tr.scheduler is not None else None,
        "epoch": epoch,
        "best": tr.best,
        "history": tr.history,
        "rng": torch.get_rng_state(),  # dropout draws: a resumed run goes on as the unbroken one would
    }
    # best.pt first: if the process dies between the writes, last.pt still points one epoch back.
    if improved:
        save_checkpoint(tr.run_dir / "checkpoints" / "best.pt", ckpt)
    save_checkpoint(tr.run_dir / "checkpoints" / "last.pt", ckpt)
    write_history(tr.history, tr.run_dir / "history.csv")
