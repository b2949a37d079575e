"""``evaluate_run``: score a run folder's model on a split and write the results beside it.

Writes ``RUN_DIR/eval/<split>/summary.json`` (every definition of :mod:`covidseg.metrics`),
``per_image.csv`` (id, group, tp, fp, fn, tn, dice, iou) and the prediction panel
``RUN_DIR/plots/predictions_<split>.png``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from covidseg.config import Config
from covidseg.data.dataset import SegmentationDataset
from covidseg.data.discovery import GROUPS
from covidseg.data.loading import discover_root, load_dataset, make_loader
from covidseg.engine.checkpoint import load_run
from covidseg.engine.device import amp_dtype, autocast_factory, resolve_device
from covidseg.engine.evaluate import evaluate
from covidseg.errors import ConfigError
from covidseg.metrics import dice_iou, summarize
from covidseg.postprocess import load_postprocess
from covidseg.progress import Progress

log = logging.getLogger(__name__)


def _panel_indices(groups: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` examples, taken round-robin over the groups so each is shown."""
    per = [list(np.flatnonzero(groups == g)) for g in range(len(GROUPS))]
    out: list[int] = []
    while len(out) < n and any(per):
        for lst in per:
            if lst and len(out) < n:
                out.append(int(lst.pop(0)))
    return out


@dataclass
class RunSplit:
    """A run's model, ready on its device, with one split of its data."""

    model: nn.Module
    cfg: Config
    state: dict[str, Any]
    device: torch.device
    dataset: SegmentationDataset
    loader: DataLoader
    autocast: Callable[[], AbstractContextManager]
    data_root: Path


def open_run_split(
    run_dir: str | Path,
    split: str,
    data_root: str | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    limit: int | None = None,
    cache_dir: str | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> RunSplit:
    """Load a run's checkpoint and the preprocessed ``split`` it is to be scored on.

    ``data_root``, ``cache_dir`` and ``batch_size`` default to the run's own settings.
    """
    dev = resolve_device(device)
    model, cfg, state = load_run(run_dir, checkpoint, map_location=dev)
    model.to(dev)
    d = cfg.data
    discovery = discover_root(data_root or d.root)
    ds = load_dataset(discovery, split, d.image_size, cache_dir or d.cache_dir, limit, cfg.train.seed, progress)
    loader = make_loader(ds, batch_size or cfg.train.batch_size, False, d.num_workers)
    autocast = autocast_factory(dev, amp_dtype(cfg.train.amp, dev))
    return RunSplit(model, cfg, state, dev, ds, loader, autocast, discovery.root)


def evaluate_run(
    run_dir: str | Path,
    data_root: str | None = None,
    split: str = "Val",
    checkpoint: str = "best",
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    limit: int | None = None,
    panel: int = 6,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    postprocess: bool = True,
) -> dict[str, Any]:
    """Evaluate ``RUN_DIR/checkpoints/<checkpoint>.pt`` on ``split`` and write the results.

    Args:
        data_root: the data folder; default: the one the run was trained on.
        threshold: the probability threshold; default: the run's ``eval.threshold``.
        limit: evaluate a seeded, group-stratified subset of this many images.
        panel: how many examples to draw in the prediction panel (0: none).
        postprocess: apply the decisions in ``RUN_DIR/postprocess.json`` (from ``covidseg tune``)
            when present; False: the plain threshold.

    Returns:
        The summary dict, as written to ``summary.json``.
    """
    if split not in ("Train", "Val", "Test"):
        raise ConfigError(f"split must be Train, Val or Test, got {split!r}")
    run_dir = Path(run_dir)
    r = open_run_split(run_dir, split, data_root, checkpoint, device, limit, cache_dir, batch_size, progress)
    model, cfg, state, dev, ds = r.model, r.cfg, r.state, r.device, r.dataset
    post = load_postprocess(run_dir if postprocess else None, cfg.eval.threshold)
    if threshold is not None:
        if not 0 < threshold < 1:
            raise ConfigError(f"threshold must lie in (0, 1), got {threshold}")
        post = replace(post, threshold=threshold)
    threshold = post.threshold
    show = _panel_indices(ds.groups, panel)
    res = evaluate(
        model, r.loader, dev, threshold, r.autocast, keep=show, progress=progress, desc=f"evaluate {split}", post=post
    )

    samples = ds.split.samples
    groups = [samples[i].group for i in res.indices]
    summary = summarize(res.stats, groups, threshold, cfg.eval.empty_empty, split)
    summary["postprocess"] = {k: v for k, v in asdict(post).items() if k != "steps"}
    summary.update(
        {
            "checkpoint": checkpoint,
            "epoch": int(state["epoch"]),
            "data_root": str(r.data_root),
            "image_size": cfg.data.image_size,
            "loss": res.loss,
        }
    )
    out = run_dir / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dice, iou = dice_iou(res.stats, cfg.eval.empty_empty)
    with (out / "per_image.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "tp", "fp", "fn", "tn", "dice", "iou"])
        for row, i, d, j in zip(res.stats, res.indices, dice, iou):
            w.writerow(
                [
                    samples[i].id,
                    samples[i].group,
                    *map(int, row),
                    "" if np.isnan(d) else f"{d:.6f}",
                    "" if np.isnan(j) else f"{j:.6f}",
                ]
            )
    if show:
        from covidseg.report.plots import plot_predictions

        row_of = {int(i): k for k, i in enumerate(res.indices)}
        panels = []
        for i in show:
            d_i = dice[row_of[i]]
            caption = f"{samples[i].group}: {samples[i].image.name}\nDice {'n/a' if np.isnan(d_i) else f'{d_i:.3f}'}"
            panels.append((np.asarray(ds.split.images[i]), np.asarray(ds.split.infection[i]), res.kept[i], caption))
        plot_predictions(
            panels,
            run_dir / "plots" / f"predictions_{split}.png",
            title=f"{split}: X-ray, true mask, prediction (threshold {threshold})",
        )
    log.info("wrote %s and %s", out / "summary.json", out / "per_image.csv")
    return summary
