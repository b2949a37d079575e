"""Evaluation over a loader: per-image confusion counts, mean loss, and kept predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from covidseg.data.dataset import stack_targets
from covidseg.metrics import confusion_counts
from covidseg.postprocess import Postprocess, lung_mask
from covidseg.progress import Progress, silent
from covidseg.severity import SeverityRule, quantify


@dataclass
class EvalResult:
    """``stats``: (N, 4) tp/fp/fn/tn per image of the first target, in loader order;
    ``indices``: dataset index of each row; ``kept``: predicted masks (S, S) uint8 for the
    requested indices; ``loss``: mean BCE over all outputs; ``probs``: (N, S, S) float16
    probabilities of the first output when asked for.

    Models with an infection and a lung output also give ``lung_stats`` (N, 4),
    ``lung_masks`` (N, S, S) uint8 with ``probs``, and ``records``: per image the infected share
    of each lung and the severity grade (:func:`covidseg.severity.quantify`) of the prediction.
    """

    stats: np.ndarray
    indices: np.ndarray
    loss: float
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    probs: np.ndarray | None = None
    pixels: int = 0
    lung_stats: np.ndarray | None = None
    lung_masks: np.ndarray | None = None
    records: list[dict] | None = None

    @classmethod
    def merge(cls, parts: list[EvalResult]) -> EvalResult:
        """One result from the shards of several processes, rows in dataset order."""
        indices = np.concatenate([p.indices for p in parts])
        order = np.argsort(indices, kind="stable")
        pixels = sum(p.pixels for p in parts)
        loss = sum(p.loss * p.pixels for p in parts) / max(pixels, 1)
        kept = {k: v for p in parts for k, v in p.kept.items()}
        lung = None
        if all(p.lung_stats is not None for p in parts):
            lung = np.concatenate([p.lung_stats for p in parts])[order]
        return cls(np.concatenate([p.stats for p in parts])[order], indices[order], loss, kept, None, pixels, lung)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    tta_hflip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and probabilities ``(N, C, H, W)`` in fp32; with ``tta_hflip`` the probabilities
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
    targets: tuple[str, ...] = ("infection",),
    severity: SeverityRule | None = None,
) -> EvalResult:
    """Run ``model`` over ``loader`` and count, per image, pixels with ``sigmoid(logits) > threshold``.

    ``post`` replaces the plain threshold with a run's kept decisions (flip TTA, threshold,
    lung gate, component and hole rules). ``keep_probs`` keeps every probability map (float16)
    in ``EvalResult.probs``, for tuning. ``targets`` names the model's outputs
    (``model.targets``); a lung output is cleaned with :func:`covidseg.postprocess.lung_mask`.
    ``severity``: with an infection and a lung output, quantify every prediction by this rule.
    """
    model.eval()
    keep = set(keep)
    targets = tuple(targets)
    lung_ch = targets.index("lung") if "lung" in targets else None
    both = lung_ch is not None and targets[0] == "infection"
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    stats, lung_stats, indices, kept, probs, lungs = [], [], [], {}, [], []
    records: list[dict] = []
    total_loss, pixels = 0.0, 0
    bar = (progress or silent)(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None)
    for batch in bar:
        image = batch["image"].to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        target = stack_targets(batch, targets).to(device, non_blocking=True)
        logits, prob = predict_probs(model, image, autocast, post is not None and post.tta_hflip)
        total_loss += float(loss_fn(logits, target))
        pixels += target.numel()
        prob_all = prob.cpu().numpy()
        truth_all = (target > 0.5).cpu().numpy()
        lung_pred = lung_mask(prob_all[:, lung_ch]) if lung_ch is not None else None
        first = prob_all[:, 0]
        if keep_probs:
            probs.append(first.astype(np.float16))
            if both:
                lungs.append(lung_pred)
        if targets[0] == "lung":
            pred = lung_pred
        else:
            pred = post.apply(first, lung=lung_pred) if post is not None else (first > threshold)
        stats.append(confusion_counts(pred, truth_all[:, 0]))
        if both:
            lung_stats.append(confusion_counts(lung_pred, truth_all[:, lung_ch]))
            if severity is not None:
                records += [quantify(p, q, severity) for p, q in zip(pred, lung_pred)]
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
        np.concatenate(lung_stats) if both else None,
        np.concatenate(lungs) if keep_probs and both else None,
        records if both and severity is not None else None,
    )
