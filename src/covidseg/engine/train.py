"""One training epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from covidseg.data.dataset import stack_targets
from covidseg.errors import DivergedError
from covidseg.progress import Progress, set_postfix, silent


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[dict],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    scaler: torch.amp.GradScaler | None = None,
    progress: Progress | None = None,
    desc: str = "train",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float = 0.0,
    channels_last: bool = False,
    targets: tuple[str, ...] = ("infection",),
    stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; returns the mean loss and the pixel accuracy (at 0.5)
    of the first target.

    ``scheduler`` is stepped after every batch; ``grad_clip`` > 0 clips the gradient norm;
    ``targets`` names the output channels (see ``model.targets``); ``stop``, asked after every
    step, ends the pass early (a time budget's schedule is complete).
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    total_loss, correct, pixels, seen = 0.0, 0, 0, 0
    bar = (progress or silent)(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None)
    for batch in bar:
        image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        mask = stack_targets(batch, targets).to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(image)
        # The loss is computed in fp32 whatever the autocast dtype.
        loss = loss_fn(logits.float(), mask)
        if not torch.isfinite(loss):
            raise DivergedError(
                f"training loss became {loss.item()}; lower the learning rate or turn off mixed precision "
                "(the run stops here; its last finished epoch is kept)"
            )
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = image.shape[0]
        total_loss += loss.item() * n
        seen += n
        with torch.no_grad():
            correct += int(((logits.detach()[:, :1] > 0) == (mask[:, :1] > 0.5)).sum())
            pixels += mask[:, :1].numel()
        set_postfix(bar, loss=total_loss / seen)
        if stop is not None and stop():
            break
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise DivergedError(
            f"the weights became non-finite ({bad[0]} and {len(bad) - 1} more); lower the learning rate "
            "(the run stops here; its last finished epoch is kept)"
        )
    return {
        "loss": total_loss / max(seen, 1),
        "pixel_accuracy": correct / max(pixels, 1),
        "images": seen,
        "pixels": pixels,
    }
