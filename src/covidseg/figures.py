"""Figures of one run: sample X-rays with masks, training curves, prediction panels,
reliability diagrams; and the overlay ``predict`` draws.

A low layer: it draws what it is given and reads no run folder, so training, evaluation,
calibration, ``predict`` and the report all use it. Matplotlib's non-interactive Agg backend is
selected here, on first use, never at import time of the package.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.atomic import write_atomic

INFECTION_RGB = (1.0, 0.15, 0.1)
TRUTH_RGB = (0.1, 0.9, 0.2)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def overlay(
    image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float] = INFECTION_RGB, alpha: float = 0.45
) -> np.ndarray:
    """An RGB float image: the gray ``image`` (uint8 or [0, 1]) with ``mask`` tinted in ``color``."""
    gray = image.astype(np.float32)
    if gray.max(initial=0) > 1.0:
        gray = gray / 255.0
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    m = mask.astype(bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, np.float32)
    return np.clip(rgb, 0, 1)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        _pyplot().close(fig)
    write_atomic(path, buf.getvalue())  # whole or not at all
    return path


def plot_samples(rows: dict[str, list[tuple[np.ndarray, np.ndarray, str]]], path: str | Path, note: str = "") -> Path:
    """One row per group, each cell an X-ray with its infection mask overlaid.

    Args:
        rows: ``{group: [(image, infection_mask, title), ...]}``.
    """
    plt = _pyplot()
    ncols = max((len(v) for v in rows.values()), default=1)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(2.6 * ncols, 2.8 * len(rows)), squeeze=False, layout="constrained"
    )
    for r, (group, cells) in enumerate(rows.items()):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cells):
                image, mask, title = cells[c]
                ax.imshow(overlay(image, mask))
                ax.set_title(title, fontsize=7)
        axes[r][0].text(
            -0.06,
            0.5,
            group,
            transform=axes[r][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=11,
            fontweight="bold",
        )
    fig.suptitle(f"{note}Sample X-rays, infection masks in red", fontsize=11)
    return _save(fig, path)


def plot_curves(
    history: Sequence[dict[str, float]], path: str | Path, note: str = "", empty_share: float | None = None
) -> Path:
    """Train and Val loss, and Val Dice (pooled and per image), per epoch.

    ``empty_share``: the share of Val images with an empty mask, which is the per-image Dice of
    predicting nothing (empty/empty = 1); drawn as the all-background baseline (pooled: 0).
    """
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for split, style in (("train", "-o"), ("val", "-s")):
        ax1.plot(epochs, [h.get(f"{split}_loss", math.nan) for h in history], style, markersize=3, label=split)
    for key, style, label in (
        ("val_dice_per_image", "-s", "per image (empty/empty = 1)"),
        ("val_dice", "-o", "pooled"),
    ):
        ax2.plot(epochs, [h.get(key, math.nan) for h in history], style, markersize=3, label=label)
    if empty_share is not None:
        ax2.axhline(empty_share, color="0.5", ls="--", lw=1, label=f"predict nothing, per image ({empty_share:.2f})")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    ax2.set(xlabel="epoch", ylabel="Val Dice", title="Val Dice per epoch (network input size)", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if note:
        fig.suptitle(note.strip().rstrip(":"), fontsize=11)  # a title prefix stands alone here
    return _save(fig, path)


def plot_predictions(
    panels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: str | Path, title: str = ""
) -> Path:
    """One row per example: X-ray, true mask, predicted mask overlaid (truth outline in green).

    Args:
        panels: ``[(image, true_mask, predicted_mask, caption), ...]``.
    """
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(n, 3, figsize=(8.4, 2.8 * n), squeeze=False, layout="constrained")
    for r, (image, truth, pred, caption) in enumerate(panels):
        axes[r][0].imshow(image, cmap="gray", vmin=0, vmax=255 if image.max(initial=0) > 1 else 1)
        axes[r][0].set_title(caption, fontsize=8)
        axes[r][1].imshow(truth, cmap="gray", vmin=0, vmax=1)
        axes[r][1].set_title("true mask", fontsize=8)
        axes[r][2].imshow(overlay(image, pred))
        if truth.any():
            axes[r][2].contour(truth.astype(float), levels=[0.5], colors=[TRUTH_RGB], linewidths=0.8)
        axes[r][2].set_title("prediction (red), truth outline (green)", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_reliability(
    pixel_curves: Sequence[tuple[str, dict[str, Any]]],
    image_curves: Sequence[tuple[str, dict[str, Any]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Reliability diagrams: mean predicted probability against the observed rate per bin, for
    pixels (left) and images (right), each curve labelled with its expected calibration error."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
    for ax, curves, what in ((axes[0], pixel_curves, "infection pixels"), (axes[1], image_curves, "X-rays")):
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="perfect calibration")
        for label, table in curves:
            pts = [(p, o) for p, o in zip(table["mean_probability"], table["observed"]) if p is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=f"{label} (ECE {table['ece']:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed rate", title=what)
        ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_sweep_metric(
    rows: Sequence[dict[str, Any]], key: str, metric: str, path: str | Path, note: str = ""
) -> Path | None:
    """``metric`` against the values of one varied setting, marginalised over the others.

    Each point is the mean over the trials with that value (whatever their other settings), the
    bar spans their minimum and maximum, and the dots are the trials themselves. ``note`` is a
    third title line (a sweep's scale).
    """
    done = [r for r in rows if r.get(metric) is not None and r.get(key) is not None]
    if not done:
        return None
    values = sorted({r[key] for r in done}, key=lambda v: (isinstance(v, str), v))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    xs = np.arange(len(values))
    for x, v in zip(xs, values):
        ys = np.array([float(r[metric]) for r in done if r[key] == v])
        ax.scatter(np.full(len(ys), x) + np.linspace(-0.08, 0.08, len(ys)), ys, s=12, alpha=0.5, color="0.4")
        ax.errorbar([x], [ys.mean()], yerr=[[ys.mean() - ys.min()], [ys.max() - ys.mean()]], fmt="o", capsize=5)
    ax.set_xticks(xs, [f"{v:g}" if isinstance(v, float) else str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(f"Val {metric}")
    others = len(done) // max(len(values), 1)
    title = f"{metric} vs {key}\nmean over the other settings (about {others} trials each; bars: min-max)"
    ax.set_title(title + ("\n" + textwrap.fill(note, 70) if note else ""))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep_curves(histories: dict[str, Sequence[dict[str, float]]], path: str | Path) -> Path | None:
    """Val per-image Dice and val loss per epoch of every trial (name -> history rows), overlaid."""
    runs = sorted(histories)
    if not runs:
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    cmap = plt.get_cmap("viridis")
    for k, run in enumerate(runs):
        hist = histories[run]
        epochs = [h["epoch"] for h in hist]
        color = cmap(k / max(len(runs) - 1, 1))
        ax1.plot(epochs, [h["val_dice_per_image"] for h in hist], color=color, lw=1, alpha=0.8, label=run)
        ax2.plot(epochs, [h["val_loss"] for h in hist], color=color, lw=1, alpha=0.8)
    ax1.set(xlabel="epoch", ylabel="Val per-image Dice", title=f"Val per-image Dice, {len(runs)} trials")
    ax2.set(xlabel="epoch", ylabel="Val loss", title="Val loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if len(runs) <= 12:
        ax1.legend(fontsize=6)
    return _save(fig, path)
