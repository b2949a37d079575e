"""``fit(cfg, run_dir)``: build everything, run the epoch loop, keep checkpoints and history.

The run folder is the artefact::

    RUN_DIR/config.yaml          resolved config, written before training starts
    RUN_DIR/env.json             versions, device, seed, command line
    RUN_DIR/splits.json          the image ids trained and validated on
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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg.config import Config, flatten, from_dict, load_yaml, save_yaml
from covidseg.data.dataset import SegmentationDataset
from covidseg.data.discovery import GROUPS
from covidseg.data.loading import discover_root, load_dataset, make_loader
from covidseg.engine.budget import Budget, ProgressSchedule
from covidseg.engine.checkpoint import load_checkpoint, remove_leftovers, save_checkpoint
from covidseg.engine.device import amp_dtype, autocast_factory, resolve_device
from covidseg.engine.distributed import DistInfo, all_gather, barrier, cleanup, init_distributed
from covidseg.engine.evaluate import EvalResult, evaluate
from covidseg.engine.history import write_history
from covidseg.engine.optim import build_optimizer, build_scheduler
from covidseg.engine.train import train_one_epoch
from covidseg.errors import CovidsegError
from covidseg.locking import folder_lock
from covidseg.losses import build_loss
from covidseg.metrics import dice_iou, nan_mean, pooled
from covidseg.models import create_model, model_spec
from covidseg.progress import Progress
from covidseg.repro import capture_environment, epoch_generator, seed_everything
from covidseg.transforms import build_train_transform

log = logging.getLogger(__name__)

# what env.json records as the precision the run trained in
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


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


def _budget(cfg: Config, dinfo: DistInfo, steps_per_epoch: int, val_images: int, started: float) -> Budget | None:
    """The time budget of a run that has one (``train.time_budget``), counted from ``started``."""
    t = cfg.train
    if t.time_budget is None:
        return None
    if dinfo.enabled:
        raise CovidsegError("train.time_budget is not supported with several processes yet; train with --epochs")
    val_batches = math.ceil(val_images / t.batch_size)
    log.info(
        "time budget %.0f s: the schedule is laid over the steps that fit (at most %d epochs)", t.time_budget, t.epochs
    )
    return Budget(t.time_budget, steps_per_epoch, val_batches, t.epochs * steps_per_epoch, started=started)


def _empty_share(val_ds: Any, target: str) -> float:
    """The share of Val images whose first target is empty: the per-image Dice (empty/empty = 1)
    that predicting nothing anywhere scores."""
    masks = val_ds.split.lung if target == "lung" else val_ds.split.infection
    return float(np.mean([not np.asarray(m).any() for m in masks]))


def _figure_note(discovery: Any) -> str:
    """Figure titles name synthetic data as such."""
    return "SYNTHETIC data (covidseg synth), not X-rays: " if discovery.synthetic else ""


def _sample_rows(ds: SegmentationDataset, per_group: int = 4) -> dict[str, list]:
    rows: dict[str, list] = {}
    for g_idx, g in enumerate(GROUPS):
        idx = np.flatnonzero(ds.groups == g_idx)[:per_group]
        if len(idx):
            rows[g] = [(ds.split.images[i], ds.split.infection[i], ds.split.samples[i].image.name) for i in idx]
    return rows


def load_run_config(run_dir: str | Path) -> Config:
    """The config saved in a run folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CovidsegError(f"{run_dir} has no config.yaml; it is not a covidseg run folder")
    return from_dict(load_yaml(path))


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
        with lock:
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
    started = time.perf_counter()
    main = dinfo.is_main
    if not main:
        progress = None
        logging.getLogger("covidseg").setLevel(logging.WARNING)
    t, d = cfg.train, cfg.data
    seed_everything(t.seed, t.deterministic)
    dtype = amp_dtype(t.amp, device)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        env = capture_environment(device, t.seed, argv)
        env["world_size"] = dinfo.world_size
        env["precision"] = PRECISION_NAMES[dtype]
        env_name = "env.json" if state is None else f"env-resume-{int(state['epoch']) + 1}.json"
        (run_dir / env_name).write_text(json.dumps(env, indent=2))

    discovery = discover_root(d.root)
    # Rank 0 decodes and caches first; the others then read its cache.
    if not main:
        barrier(dinfo)
    transform = build_train_transform(cfg.augment)
    train_ds = load_dataset(discovery, "Train", d.image_size, d.cache_dir, d.train_limit, t.seed, progress, transform)
    val_ds = load_dataset(discovery, "Val", d.image_size, d.cache_dir, d.val_limit, t.seed, progress)
    if main:
        barrier(dinfo)
        splits = {"Train": [s.id for s in train_ds.split.samples], "Val": [s.id for s in val_ds.split.samples]}
        (run_dir / "splits.json").write_text(json.dumps(splits, indent=0))

    spec = model_spec(cfg, with_weights=False)
    # Pre-trained encoder weights are fetched once, for a new run; a resumed run has its own.
    net = create_model(model_spec(cfg, with_weights=state is None)).to(device)
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, net.parameters())
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / dinfo.world_size) / t.batch_size)
    budget = _budget(cfg, dinfo, steps_per_epoch, len(val_ds), started)
    if budget is not None:
        scheduler: Any = ProgressSchedule(optimizer, cfg.optim, budget, t.epochs)
    else:
        scheduler = build_scheduler(cfg.optim, optimizer, t.epochs, steps_per_epoch)
    autocast = autocast_factory(device, dtype)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.deterministic
    loss_fn = build_loss(cfg.loss)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"metric": t.select_metric, "value": None, "epoch": 0, "smoothed": None}
    start_epoch = 1
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        history = list(state.get("history", []))
        if budget is not None:
            budget.spent = sum(h["seconds"] for h in history)  # the time already spent counts
        best = dict(state["best"])
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming %s at epoch %d of %d", run_dir, start_epoch, t.epochs)
    elif main:
        from covidseg.figures import plot_samples

        plot_samples(_sample_rows(train_ds), run_dir / "plots" / "samples.png", _figure_note(discovery))

    model: torch.nn.Module = net
    train_sampler = None
    val_part: Any = val_ds
    if dinfo.enabled:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler, Subset

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        train_sampler = DistributedSampler(train_ds, dinfo.world_size, dinfo.rank, shuffle=True, seed=t.seed)
        val_part = Subset(val_ds, list(range(dinfo.rank, len(val_ds), dinfo.world_size)))
    pin = device.type == "cuda"
    val_loader = make_loader(val_part, t.batch_size, False, d.num_workers, pin_memory=pin)
    log.info(
        "training %s on %s%s (%s) for %d epochs: %d train / %d val images, batch %d%s, lr %g",
        spec["name"],
        device,
        f" x {dinfo.world_size} processes" if dinfo.enabled else "",
        "fp32" if dtype is None else str(dtype).replace("torch.", ""),
        t.epochs,
        len(train_ds),
        len(val_ds),
        t.batch_size,
        " per process" if dinfo.enabled else "",
        cfg.optim.lr,
    )

    for epoch in range(start_epoch, t.epochs + 1):
        if budget is not None and budget.done:  # a resumed run whose budget was already used
            break
        if t.early_stop_patience and epoch - best["epoch"] > t.early_stop_patience:
            log.info("early stop: no better smoothed %s for %d epochs", t.select_metric, t.early_stop_patience)
            break
        t0 = time.perf_counter()
        train_ds.set_seed(t.seed * 1_000_003 + epoch * 1009 + dinfo.rank)  # augmentation draws, without workers
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        train_loader = make_loader(
            train_ds,
            t.batch_size,
            True,
            d.num_workers,
            generator=epoch_generator(t.seed, epoch),
            pin_memory=pin,
            sampler=train_sampler,
        )
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(
            model,
            train_loader,
            loss_fn,
            optimizer,
            device,
            autocast,
            scaler,
            progress,
            desc=f"epoch {epoch}/{t.epochs}",
            scheduler=scheduler,
            grad_clip=cfg.optim.grad_clip,
            channels_last=t.channels_last,
            targets=cfg.model.target_list,
            stop=(lambda: budget.done) if budget is not None else None,
        )
        if budget is not None:
            budget.pause()
        t_val = time.perf_counter()
        ev = evaluate(
            net,
            val_loader,
            device,
            cfg.eval.threshold,
            autocast,
            progress=progress,
            desc="val",
            channels_last=t.channels_last,
            targets=cfg.model.target_list,
        )
        trs, evs = all_gather(dinfo, tr), all_gather(dinfo, ev)
        ev = EvalResult.merge(evs) if dinfo.enabled else ev
        images, pixels = sum(x["images"] for x in trs), sum(x["pixels"] for x in trs)
        pool = pooled(ev.stats, cfg.eval.empty_empty)
        dice, iou = dice_iou(ev.stats, cfg.eval.empty_empty)
        covid = val_ds.groups[ev.indices] == GROUPS.index("COVID-19")
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": sum(x["loss"] * x["images"] for x in trs) / max(images, 1),
            "train_pixel_accuracy": sum(x["pixel_accuracy"] * x["pixels"] for x in trs) / max(pixels, 1),
            "val_loss": ev.loss,
            "val_pixel_accuracy": pool["pixel_accuracy"],
            "val_dice": pool["dice"],
            "val_iou": pool["iou"],
            "val_dice_per_image": float(np.nanmean(dice)),
            "val_iou_per_image": float(np.nanmean(iou)),
            "val_dice_per_image_covid": nan_mean(dice[covid]),
        }
        if ev.lung_stats is not None:
            row["val_lung_dice"] = pooled(ev.lung_stats, cfg.eval.empty_empty)["dice"]
            row["val_lung_dice_per_image"] = float(np.nanmean(dice_iou(ev.lung_stats, cfg.eval.empty_empty)[0]))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["steps"] = budget.steps if budget is not None else epoch * steps_per_epoch
        row["planned_steps"] = budget.planned if budget is not None else t.epochs * steps_per_epoch
        history.append(row)
        smoothed = _smooth(history, t.select_metric, t.select_smoothing)
        row[f"{t.select_metric}_smoothed"] = smoothed
        improved = _better(t.select_metric, smoothed, best.get("smoothed", best["value"]))
        if improved:
            best = {"metric": t.select_metric, "value": row[t.select_metric], "epoch": epoch, "smoothed": smoothed}
        if main:
            _save_epoch(run_dir, net, spec, cfg, optimizer, scaler, scheduler, epoch, best, history, improved)
            from covidseg.figures import plot_curves

            plot_curves(
                history,
                run_dir / "plots" / "curves.png",
                _figure_note(discovery),
                _empty_share(val_ds, cfg.model.target_list[0]),
            )
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f dice %.4f iou %.4f dice/img %.4f | %.0fs%s",
            epoch,
            t.epochs,
            row["train_loss"],
            row["train_pixel_accuracy"],
            row["val_loss"],
            row["val_pixel_accuracy"],
            row["val_dice"],
            row["val_iou"],
            row["val_dice_per_image"],
            row["seconds"],
            (f"  lung dice {row['val_lung_dice']:.4f}" if "val_lung_dice" in row else "")
            + ("  *best*" if improved else ""),
        )
        if budget is not None:  # the check: validation, checkpoints, history and curves
            budget.observe_val(time.perf_counter() - t_val)
            if main:
                (run_dir / "budget.json").write_text(json.dumps(budget.state(), indent=2))
        if budget is not None and budget.done:
            log.info(
                "time budget %.0f s: schedule complete after %d steps (%d epochs, the last %s) in %.0f s",
                budget.seconds,
                budget.steps,
                epoch,
                "whole" if budget.steps % steps_per_epoch == 0 else "partial",
                budget.elapsed(),
            )
            break

    return RunResult(
        run_dir,
        int(best["epoch"]),
        float(best["value"] if best["value"] is not None else math.nan),
        t.select_metric,
        len(history),
        history,
    )


def _save_epoch(
    run_dir: Path,
    net: torch.nn.Module,
    spec: dict[str, Any],
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    scheduler: Any,
    epoch: int,
    best: dict[str, Any],
    history: list[dict[str, Any]],
    improved: bool,
) -> None:
    """Checkpoints and history after an epoch."""
    ckpt = {
        "model": net.state_dict(),
        "model_spec": spec,
        "config": cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "best": best,
        "history": history,
    }
    # best.pt first: if the process dies between the writes, last.pt still points one epoch back.
    if improved:
        save_checkpoint(run_dir / "checkpoints" / "best.pt", ckpt)
    save_checkpoint(run_dir / "checkpoints" / "last.pt", ckpt)
    write_history(history, run_dir / "history.csv")
