"""Evaluation over a loader: per-image confusion counts, mean loss, and kept predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from covidseg.metrics import confusion_counts
from covidseg.progress import Progress, silent


@dataclass
class EvalResult:
    """``stats``: (N, 4) tp/fp/fn/tn per image, in loader order; ``indices``: dataset index of each row;
    ``kept``: predicted masks (S, S) uint8 for the requested indices; ``loss``: mean BCE."""

    stats: np.ndarray
    indices: np.ndarray
    loss: float
    kept: dict[int, np.ndarray] = field(default_factory=dict)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    threshold: float = 0.5,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    keep: Iterable[int] = (),
    progress: Progress | None = None,
    desc: str = "eval",
) -> EvalResult:
    """Run ``model`` over ``loader`` and count, per image, pixels with ``sigmoid(logits) > threshold``."""
    model.eval()
    keep = set(keep)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    stats, indices, kept = [], [], {}
    total_loss, pixels = 0.0, 0
    bar = (progress or silent)(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None)
    for batch in bar:
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        with autocast():
            logits = model(image)
        logits = logits.float()
        total_loss += float(loss_fn(logits, mask))
        pixels += mask.numel()
        pred = (torch.sigmoid(logits) > threshold).cpu().numpy()[:, 0]
        truth = (mask > 0.5).cpu().numpy()[:, 0]
        stats.append(confusion_counts(pred, truth))
        idx = batch["index"].numpy() if torch.is_tensor(batch["index"]) else np.asarray(batch["index"])
        indices.append(idx)
        for j, i in enumerate(idx):
            if int(i) in keep:
                kept[int(i)] = pred[j].astype(np.uint8)
    return EvalResult(np.concatenate(stats), np.concatenate(indices), total_loss / max(pixels, 1), kept)
