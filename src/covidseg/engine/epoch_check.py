"""The per-epoch check during training: per-image confusion counts and mean loss on Val.

It scores at the network's input size against the cached (shrunk) masks with a plain threshold:
it only chooses the best epoch. The numbers covidseg reports come from
:mod:`covidseg.evaluation`, which scores what ``predict`` delivers at each X-ray's own size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from covidseg.data.dataset import stack_targets
from covidseg.inference.postprocess import lung_mask
from covidseg.metrics import confusion_counts
from covidseg.progress import Progress, silent


@dataclass
class EvalResult:
    """``stats``: (N, 4) tp/fp/fn/tn per image of the first target, in loader order;
    ``indices``: dataset index of each row; ``loss``: mean BCE over all outputs; ``pixels``: how
    many target pixels the loss is averaged over. Models with an infection and a lung output also
    give ``lung_stats`` (N, 4).
    """

    stats: np.ndarray
    indices: np.ndarray
    loss: float
    pixels: int = 0
    lung_stats: np.ndarray | None = None

    @classmethod
    def merge(cls, parts: list[EvalResult]) -> EvalResult:
        """One result from the shards of several processes, rows in dataset order."""
        indices = np.concatenate([p.indices for p in parts])
        order = np.argsort(indices, kind="stable")
        pixels = sum(p.pixels for p in parts)
        loss = sum(p.loss * p.pixels for p in parts) / max(pixels, 1)
        lung = None
        if all(p.lung_stats is not None for p in parts):
            lung = np.concatenate([p.lung_stats for p in parts])[order]
        return cls(np.concatenate([p.stats for p in parts])[order], indices[order], loss, pixels, lung)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    threshold: float = 0.5,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    progress: Progress | None = None,
    desc: str = "eval",
    channels_last: bool = False,
    targets: tuple[str, ...] = ("infection",),
) -> EvalResult:
    """Run ``model`` over ``loader`` and count, per image, pixels with ``sigmoid(logits) > threshold``.

    ``targets`` names the model's outputs (``model.targets``); a lung output is cleaned with
    :func:`covidseg.inference.postprocess.lung_mask`.
    """
    model.eval()
    targets = tuple(targets)
    lung_ch = targets.index("lung") if "lung" in targets else None
    both = lung_ch is not None and targets[0] == "infection"
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    stats, lung_stats, indices = [], [], []
    total_loss, pixels = 0.0, 0
    bar = (progress or silent)(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None)
    for batch in bar:
        image = batch["image"].to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        target = stack_targets(batch, targets).to(device, non_blocking=True)
        with autocast():
            logits = model(image)
        logits = logits.float()
        total_loss += float(loss_fn(logits, target))
        pixels += target.numel()
        prob = torch.sigmoid(logits).cpu().numpy()
        truth = (target > 0.5).cpu().numpy()
        lung_pred = np.stack([lung_mask(p) for p in prob[:, lung_ch]]) if lung_ch is not None else None
        pred = lung_pred if targets[0] == "lung" else prob[:, 0] > threshold
        stats.append(confusion_counts(pred, truth[:, 0]))
        if both:
            lung_stats.append(confusion_counts(lung_pred, truth[:, lung_ch]))
        idx = batch["index"].numpy() if torch.is_tensor(batch["index"]) else np.asarray(batch["index"])
        indices.append(idx)
    return EvalResult(
        np.concatenate(stats),
        np.concatenate(indices),
        total_loss / max(pixels, 1),
        pixels,
        np.concatenate(lung_stats) if both else None,
    )
