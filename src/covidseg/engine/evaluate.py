"""Evaluation over a loader: per-image confusion counts, mean loss, and kept predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from covidseg.metrics import confusion_counts
from covidseg.postprocess import Postprocess
from covidseg.progress import Progress, silent


@dataclass
class EvalResult:
    """``stats``: (N, 4) tp/fp/fn/tn per image, in loader order; ``indices``: dataset index of each row;
    ``kept``: predicted masks (S, S) uint8 for the requested indices; ``loss``: mean BCE;
    ``probs``: (N, S, S) float16 probabilities when asked for."""

    stats: np.ndarray
    indices: np.ndarray
    loss: float
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    probs: np.ndarray | None = None
    pixels: int = 0

    @classmethod
    def merge(cls, parts: list[EvalResult]) -> EvalResult:
        """One result from the shards of several processes, rows in dataset order."""
        indices = np.concatenate([p.indices for p in parts])
        order = np.argsort(indices, kind="stable")
        pixels = sum(p.pixels for p in parts)
        loss = sum(p.loss * p.pixels for p in parts) / max(pixels, 1)
        kept = {k: v for p in parts for k, v in p.kept.items()}
        return cls(np.concatenate([p.stats for p in parts])[order], indices[order], loss, kept, None, pixels)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    tta_hflip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and probabilities ``(N, 1, H, W)`` in fp32; with ``tta_hflip`` the probabilities
    are the mean over the image and its mirror image (mirrored back)."""
    with autocast():
        logits = model(image)
    logits = logits.float()
    prob = torch.sigmoid(logits)
    if tta_hflip:
        with autocast():
            flipped = model(torch.flip(image, dims=[-1]))
        prob = 0.5 * (prob + torch.flip(torch.sigmoid(flipped.float()), dims=[-1]))
    return logits, prob


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
    channels_last: bool = False,
    post: Postprocess | None = None,
    keep_probs: bool = False,
) -> EvalResult:
    """Run ``model`` over ``loader`` and count, per image, pixels with ``sigmoid(logits) > threshold``.

    ``post`` replaces the plain threshold with a run's kept decisions (flip TTA, threshold,
    component and hole rules). ``keep_probs`` keeps every probability map (float16) in
    ``EvalResult.probs``, for tuning.
    """
    model.eval()
    keep = set(keep)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    stats, indices, kept, probs = [], [], {}, []
    total_loss, pixels = 0.0, 0
    bar = (progress or silent)(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None)
    for batch in bar:
        image = batch["image"].to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        mask = batch["mask"].to(device, non_blocking=True)
        logits, prob = predict_probs(model, image, autocast, post is not None and post.tta_hflip)
        total_loss += float(loss_fn(logits, mask))
        pixels += mask.numel()
        prob_np = prob.cpu().numpy()[:, 0]
        if keep_probs:
            probs.append(prob_np.astype(np.float16))
        pred = post.apply(prob_np) if post is not None else (prob_np > threshold)
        truth = (mask > 0.5).cpu().numpy()[:, 0]
        stats.append(confusion_counts(pred, truth))
        idx = batch["index"].numpy() if torch.is_tensor(batch["index"]) else np.asarray(batch["index"])
        indices.append(idx)
        for j, i in enumerate(idx):
            if int(i) in keep:
                kept[int(i)] = pred[j].astype(np.uint8)
    return EvalResult(
        np.concatenate(stats),
        np.concatenate(indices),
        total_loss / max(pixels, 1),
        kept,
        np.concatenate(probs) if keep_probs else None,
        pixels,
    )
