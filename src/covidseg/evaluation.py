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

from covidseg import detection
from covidseg.config import Config
from covidseg.data.dataset import SegmentationDataset
from covidseg.data.discovery import GROUPS
from covidseg.data.loading import discover_root, load_dataset, make_loader
from covidseg.engine.checkpoint import load_run
from covidseg.engine.device import amp_dtype, autocast_factory, resolve_device
from covidseg.engine.evaluate import EvalResult, evaluate
from covidseg.errors import ConfigError
from covidseg.metrics import dice_iou, json_safe, summarize
from covidseg.postprocess import load_postprocess
from covidseg.progress import Progress
from covidseg.severity import GRADES, SeverityRule, quantify

log = logging.getLogger(__name__)


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6f}"


def _per_image_rows(res: EvalResult, ds: SegmentationDataset, empty_empty: float) -> list[dict[str, Any]]:
    samples = ds.split.samples
    dice, iou = dice_iou(res.stats, empty_empty)
    rows = []
    for st, i, d, j in zip(res.stats, res.indices, dice, iou):
        row = {"id": samples[i].id, "group": samples[i].group}
        row.update(zip(("tp", "fp", "fn", "tn"), map(int, st)))
        row.update({"dice": _fmt(d), "iou": _fmt(j)})
        rows.append(row)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """``per_image.csv``: one row per image, empty cells for undefined values."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})


def severity_summary(
    predicted: list[dict[str, Any]] | None,
    truth: list[dict[str, Any]],
    groups: list[str],
    rule: SeverityRule,
) -> dict[str, Any]:
    """Severity grades per group (from the true masks, and predicted where the model has a lung
    output), with the agreement between the two."""
    groups_a = np.asarray(groups)

    def counts(records: list[dict[str, Any]], sel: np.ndarray) -> dict[str, int]:
        grades = [records[k]["severity"] for k in np.flatnonzero(sel)]
        return {g: grades.count(g) for g in GRADES}

    out: dict[str, Any] = {"rule": rule.as_dict(), "groups": {}}
    for g in GROUPS:
        sel = groups_a == g
        if not sel.any():
            continue
        entry: dict[str, Any] = {"true": counts(truth, sel)}
        if predicted is not None:
            entry["predicted"] = counts(predicted, sel)
        out["groups"][g] = entry
    if predicted is not None:
        pairs = [
            (p["infection_percent"], t["infection_percent"], p["severity"], t["severity"])
            for p, t in zip(predicted, truth)
            if p["infection_percent"] is not None and t["infection_percent"] is not None
        ]
        if pairs:
            pp, tp, pg, tg = zip(*pairs)
            out["agreement"] = {
                "images": len(pairs),
                "infection_percent_mae": float(np.mean(np.abs(np.subtract(pp, tp)))),
                "grade_accuracy": float(np.mean([a == b for a, b in zip(pg, tg)])),
                "grade_within_one": float(
                    np.mean([abs(GRADES.index(a) - GRADES.index(b)) <= 1 for a, b in zip(pg, tg)])
                ),
            }
    return out


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
    targets = cfg.model.target_list
    rule = SeverityRule.from_text(cfg.eval.severity_extent, cfg.eval.severity_grades)
    res = evaluate(
        model,
        r.loader,
        dev,
        threshold,
        r.autocast,
        keep=show,
        progress=progress,
        desc=f"evaluate {split}",
        post=post,
        targets=targets,
        severity=rule,
    )

    samples = ds.split.samples
    groups = [samples[i].group for i in res.indices]
    summary = summarize(res.stats, groups, threshold, cfg.eval.empty_empty, split)
    summary["target"] = targets[0]
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
    rows = _per_image_rows(res, ds, cfg.eval.empty_empty)
    if targets[0] == "infection":
        scores = detection.infected_share(res.stats)
        summary["detection"] = detection.detection_summary(scores, groups, post.detect_fraction)
        for row, score in zip(rows, scores):
            row["infected_share"] = round(float(score), 6)
            row["covid_call"] = int(score > post.detect_fraction)
    if res.lung_stats is not None:
        summary["lung"] = summarize(res.lung_stats, groups, 0.5, cfg.eval.empty_empty, split)
        for row, (d, j) in zip(rows, zip(*dice_iou(res.lung_stats, cfg.eval.empty_empty))):
            row["lung_dice"], row["lung_iou"] = _fmt(d), _fmt(j)
    if targets[0] == "infection":
        truth_sev = [
            quantify(np.asarray(ds.split.infection[i]), np.asarray(ds.split.lung[i]), rule) for i in res.indices
        ]
        summary["severity"] = severity_summary(res.records, truth_sev, groups, rule)
        for k, row in enumerate(rows):
            row["true_infection_percent"] = truth_sev[k]["infection_percent"]
            row["true_severity"] = truth_sev[k]["severity"]
            if res.records is not None:
                rec = res.records[k]
                for key in ("infection_percent", "right_percent", "left_percent", "severity_score", "severity"):
                    row[key] = rec[key]
    summary = json_safe(summary)
    out = run_dir / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_rows(rows, out / "per_image.csv")
    dice, _ = dice_iou(res.stats, cfg.eval.empty_empty)
    if show:
        from covidseg.report.plots import plot_predictions

        row_of = {int(i): k for k, i in enumerate(res.indices)}
        panels = []
        for i in show:
            d_i = dice[row_of[i]]
            caption = f"{samples[i].group}: {samples[i].image.name}\nDice {'n/a' if np.isnan(d_i) else f'{d_i:.3f}'}"
            truth = ds.split.lung[i] if targets[0] == "lung" else ds.split.infection[i]
            panels.append((np.asarray(ds.split.images[i]), np.asarray(truth), res.kept[i], caption))
        plot_predictions(
            panels,
            run_dir / "plots" / f"predictions_{split}.png",
            title=f"{split}: X-ray, true mask, prediction (threshold {threshold})",
        )
    log.info("wrote %s and %s", out / "summary.json", out / "per_image.csv")
    return summary
