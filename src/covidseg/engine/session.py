"""Everything a training run holds between epochs, built in the steps :func:`covidseg.engine.fit.fit`
takes before its first epoch: record the environment, load the data, build the network and its
optimiser, restore a resumed run, wrap for several processes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg.atomic import write_atomic
from covidseg.config import Config, save_yaml
from covidseg.data.dataset import SegmentationDataset
from covidseg.data.discovery import GROUPS
from covidseg.data.loading import discover_root, load_dataset, make_loader
from covidseg.engine.budget import Budget, FixedSteps, ProgressSchedule
from covidseg.engine.device import amp_dtype, autocast_factory
from covidseg.engine.distributed import DistInfo, barrier
from covidseg.engine.epoch_check import EvalResult
from covidseg.engine.optim import build_optimizer, build_scheduler
from covidseg.errors import CovidsegError
from covidseg.losses import build_loss
from covidseg.metrics import dice_iou, nan_mean, pooled
from covidseg.models import create_model, model_spec
from covidseg.progress import Progress
from covidseg.repro import capture_environment, seed_everything
from covidseg.transforms import build_train_transform

log = logging.getLogger(__name__)

# what env.json records as the precision the run trained in
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Training:
    """A run's data, network, optimiser and progress, as the epoch loop uses them."""

    cfg: Config
    run_dir: Path
    dinfo: DistInfo
    device: torch.device
    progress: Progress | None
    synthetic: bool
    train_ds: SegmentationDataset
    val_ds: SegmentationDataset
    net: torch.nn.Module
    spec: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    autocast: Any
    dtype: torch.dtype | None
    loss_fn: Any
    budget: Budget | None
    steps_per_epoch: int
    model: torch.nn.Module | None = None  # the network, wrapped for several processes
    train_sampler: Any = None
    val_loader: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 1
    empty_share: float | None = None  # Val images with an empty first-target mask (the curves' baseline)


def prepare(
    cfg: Config,
    run_dir: Path,
    state: dict[str, Any] | None,
    dinfo: DistInfo,
    device: torch.device,
    progress: Progress | None,
    argv: list[str] | None,
    started: float,
) -> Training:
    """Everything up to the first epoch (a resumed run: up to the epoch it stopped in)."""
    if not dinfo.is_main:
        progress = None
        logging.getLogger("covidseg").setLevel(logging.WARNING)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    dtype = amp_dtype(cfg.train.amp, device)
    if dinfo.is_main:
        record_environment(cfg, run_dir, state, dinfo, device, dtype, argv)
    synthetic, train_ds, val_ds = load_data(cfg, run_dir, dinfo, progress)
    tr = build(cfg, run_dir, state, dinfo, device, dtype, progress, train_ds, val_ds, started)
    tr.synthetic = synthetic
    tr.empty_share = empty_share(val_ds, cfg.model.target_list[0])
    restore(tr, state)
    parallelize(tr)
    return tr


def record_environment(
    cfg: Config, run_dir: Path, state: dict[str, Any] | None, dinfo: DistInfo, device: torch.device,
    dtype: torch.dtype | None, argv: list[str] | None,
) -> None:  # fmt: skip
    """``config.yaml`` and ``env.json`` (``env-resume-N.json`` for a resume), with the precision
    the run trains in (which may differ from the one asked for)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")
    env = capture_environment(device, cfg.train.seed, argv)
    env["world_size"] = dinfo.world_size
    env["precision"] = PRECISION_NAMES[dtype]
    name = "env.json" if state is None else f"env-resume-{int(state['epoch']) + 1}.json"
    write_atomic(run_dir / name, json.dumps(env, indent=2))


def load_data(
    cfg: Config, run_dir: Path, dinfo: DistInfo, progress: Progress | None
) -> tuple[bool, SegmentationDataset, SegmentationDataset]:
    """Whether the data is synthetic, and the Train and Val sets (``splits.json`` records them).
    Rank 0 decodes and caches first; the others then read its cache."""
    t, d = cfg.train, cfg.data
    discovery = discover_root(d.root)
    if not dinfo.is_main:
        barrier(dinfo)
    transform = build_train_transform(cfg.augment)
    train_ds = load_dataset(discovery, "Train", d.image_size, d.cache_dir, d.train_limit, t.seed, progress, transform)
    val_ds = load_dataset(discovery, "Val", d.image_size, d.cache_dir, d.val_limit, t.seed, progress)
    if dinfo.is_main:
        barrier(dinfo)
        splits = {"Train": [s.id for s in train_ds.split.samples], "Val": [s.id for s in val_ds.split.samples]}
        write_atomic(run_dir / "splits.json", json.dumps(splits, indent=0))
    return discovery.synthetic, train_ds, val_ds


def build(
    cfg: Config, run_dir: Path, state: dict[str, Any] | None, dinfo: DistInfo, device: torch.device,
    dtype: torch.dtype | None, progress: Progress | None, train_ds: SegmentationDataset,
    val_ds: SegmentationDataset, started: float,
) -> Training:  # fmt: skip
    """The network (pre-trained encoder weights fetched only for a new run), optimiser, schedule
    (over the time budget's steps when there is one), mixed precision and loss."""
    t = cfg.train
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.deterministic
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return Training(
        cfg, run_dir, dinfo, device, progress, False, train_ds, val_ds, net, model_spec(cfg, with_weights=False),
        optimizer, scheduler, scaler, autocast_factory(device, dtype), dtype,
        build_loss(cfg.loss, cfg.model.target_list), budget, steps_per_epoch,
        best={"metric": t.select_metric, "value": None, "epoch": 0, "smoothed": None},
    )  # fmt: skip


def _budget(cfg: Config, dinfo: DistInfo, steps_per_epoch: int, val_images: int, started: float) -> Budget | None:
    """The time budget of a run that has one (``train.time_budget``), counted from ``started``, or
    its fixed number of steps (``train.steps``)."""
    t = cfg.train
    if t.steps is not None:
        if t.steps > t.epochs * steps_per_epoch:
            raise CovidsegError(
                f"train.steps {t.steps} needs {math.ceil(t.steps / steps_per_epoch)} epochs of {steps_per_epoch} "
                f"steps; train.epochs is {t.epochs}: raise it"
            )
        log.info("the schedule is laid over %d steps (%.1f epochs)", t.steps, t.steps / steps_per_epoch)
        return FixedSteps(math.inf, steps_per_epoch, 0, t.steps, started=started)
    if t.time_budget is None:
        return None
    if dinfo.enabled:
        raise CovidsegError("train.time_budget is not supported with several processes yet; train with --epochs")
    val_batches = math.ceil(val_images / t.batch_size)
    log.info(
        "time budget %.0f s: the schedule is laid over the steps that fit (at most %d epochs)", t.time_budget, t.epochs
    )
    return Budget(t.time_budget, steps_per_epoch, val_batches, t.epochs * steps_per_epoch, started=started)


def restore(tr: Training, state: dict[str, Any] | None) -> None:
    """A resumed run's weights, optimiser, schedule, history and best epoch; a new run draws its
    sample figure instead."""
    if state is None:
        if tr.dinfo.is_main:
            from covidseg.figures import plot_samples

            plot_samples(_sample_rows(tr.train_ds), tr.run_dir / "plots" / "samples.png", figure_note(tr.synthetic))
        return
    tr.net.load_state_dict(state["model"])
    tr.optimizer.load_state_dict(state["optimizer"])
    if isinstance(state.get("rng"), torch.Tensor) and state["rng"].dtype == torch.uint8:
        torch.set_rng_state(state["rng"])
    if tr.scaler is not None and state.get("scaler"):
        tr.scaler.load_state_dict(state["scaler"])
    if tr.scheduler is not None and state.get("scheduler"):
        tr.scheduler.load_state_dict(state["scheduler"])
    tr.history = list(state.get("history", []))
    if tr.budget is not None:
        tr.budget.spent = sum(h["seconds"] for h in tr.history)  # the time already spent counts
    tr.best = dict(state["best"])
    tr.start_epoch = int(state["epoch"]) + 1
    log.info("resuming %s at epoch %d of %d", tr.run_dir, tr.start_epoch, tr.cfg.train.epochs)


def parallelize(tr: Training) -> None:
    """DistributedDataParallel, a sampler and a Val shard per process when there are several; the
    Val loader."""
    t, d = tr.cfg.train, tr.cfg.data
    tr.model, val_part = tr.net, tr.val_ds
    if tr.dinfo.enabled:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler, Subset

        device_ids = [tr.device.index] if tr.device.type == "cuda" else None
        tr.model = DistributedDataParallel(tr.net, device_ids=device_ids)
        rank, world = tr.dinfo.rank, tr.dinfo.world_size
        tr.train_sampler = DistributedSampler(tr.train_ds, world, rank, shuffle=True, seed=t.seed)
        val_part = Subset(tr.val_ds, list(range(tr.dinfo.rank, len(tr.val_ds), tr.dinfo.world_size)))
    tr.val_loader = make_loader(val_part, t.batch_size, False, d.num_workers, pin_memory=tr.device.type == "cuda")
    length = f"{t.steps} steps" if t.steps else f"{t.epochs} epochs" + (" at most" if t.time_budget else "")
    log.info(
        "training %s on %s%s (%s) for %s: %d train / %d val images, batch %d%s, lr %g",
        tr.spec["name"], tr.device, f" x {tr.dinfo.world_size} processes" if tr.dinfo.enabled else "",
        PRECISION_NAMES[tr.dtype], length, len(tr.train_ds), len(tr.val_ds), t.batch_size,
        " per process" if tr.dinfo.enabled else "", tr.cfg.optim.lr,
    )  # fmt: skip


def epoch_row(tr: Training, epoch: int, lr: float, trs: list[dict], ev: EvalResult) -> dict[str, Any]:
    """One row of ``history.csv`` from the epoch's training records (one per process) and the
    merged per-epoch check."""
    ee = tr.cfg.eval.empty_empty
    images, pixels = sum(x["images"] for x in trs), sum(x["pixels"] for x in trs)
    pool = pooled(ev.stats, ee)
    dice, iou = dice_iou(ev.stats, ee)
    covid = tr.val_ds.groups[ev.indices] == GROUPS.index("COVID-19")
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
        row["val_lung_dice"] = pooled(ev.lung_stats, ee)["dice"]
        row["val_lung_dice_per_image"] = float(np.nanmean(dice_iou(ev.lung_stats, ee)[0]))
    return row


def log_epoch(tr: Training, row: dict[str, Any], improved: bool) -> None:
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f dice %.4f iou %.4f dice/img %.4f | %.0fs%s",
        row["epoch"], tr.cfg.train.epochs, row["train_loss"], row["train_pixel_accuracy"], row["val_loss"],
        row["val_pixel_accuracy"], row["val_dice"], row["val_iou"], row["val_dice_per_image"], row["seconds"],
        (f"  lung dice {row['val_lung_dice']:.4f}" if "val_lung_dice" in row else "")
        + ("  *best*" if improved else ""),
    )  # fmt: skip


def draw_curves(tr: Training) -> None:
    from covidseg.figures import plot_curves

    plot_curves(tr.history, tr.run_dir / "plots" / "curves.png", figure_note(tr.synthetic), tr.empty_share)


def empty_share(ds: SegmentationDataset, target: str) -> float:
    """The share of images whose ``target`` mask is empty: what predicting nothing anywhere scores
    as per-image Dice (empty/empty = 1), the curves' baseline."""
    masks = ds.split.lung if target == "lung" else ds.split.infection
    return float(np.mean([not np.asarray(m).any() for m in masks]))


def figure_note(synthetic: bool) -> str:
    """Figure titles name synthetic data as such."""
    return "SYNTHETIC data (covidseg synth), not X-rays: " if synthetic else ""


def _sample_rows(ds: SegmentationDataset, per_group: int = 4) -> dict[str, list]:
    rows: dict[str, list] = {}
    for g_idx, g in enumerate(GROUPS):
        idx = np.flatnonzero(ds.groups == g_idx)[:per_group]
        if len(idx):
            rows[g] = [(ds.split.images[i], ds.split.infection[i], ds.split.samples[i].image.name) for i in idx]
    return rows
