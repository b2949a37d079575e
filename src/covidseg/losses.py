"""Training losses.

Conventions (as in :mod:`covidseg.metrics`): logits ``(N, C, H, W)``; masks ``(N, C, H, W)``
float in {0, 1}, one channel per target (``model.targets``: infection, lung). Every loss treats
the channels alike and averages over them (Dice and Tversky per channel, then the mean).

- ``bce``: binary cross-entropy of ``sigmoid(logits)``, in the numerically stable logits form.
- ``dice``: soft Dice loss ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with ``s = smooth``
  (default 1 pixel). ``dice_per_image=True`` (default) computes it for each image and averages,
  so every X-ray counts the same whatever its infected area; ``False`` pools all pixels of the
  batch into one ratio (smp's binary ``DiceLoss``). The empty-mask rule is the smoothing term:
  an image with empty truth and an empty prediction scores loss 0, and an image with empty truth
  is pushed towards predicting nothing, with loss ``1 - s / (sum(p) + s)`` (``dice_empty="smooth"``,
  the default). That is as harsh as the per-image metric with empty/empty = 1: one pixel of
  probability mass on a negative X-ray costs a loss of 0.5, which teaches the network to stay
  silent on faint infection too. ``dice_empty="skip"`` leaves images with an empty truth channel
  out of the Dice term (the mean runs over the others; a batch with none adds 0); BCE still
  covers every pixel of them, and false positives on negatives are left to BCE and to the
  image-level gate that :mod:`covidseg.tune` can add.
- ``tversky``: the same with false positives weighted ``tversky_alpha`` and false negatives
  ``tversky_beta`` (Dice is alpha = beta = 0.5); same per-image rule.
- ``focal``: smp's binary focal loss (``focal_gamma``, mean over pixels).
- ``bce_dice``: ``bce_weight * bce + (1 - bce_weight) * dice``.

A network with an image-level COVID-19 head (``model.targets`` ending in ``covid``) carries its
logit as the last channel, the same at every pixel; :class:`WithImageLoss` applies the chosen
loss to the segmentation channels and adds ``image_weight`` times the BCE of the image logit
against the image label.
"""

from __future__ import annotations

import torch
from torch import nn

from covidseg.config import LossConfig


class SoftTverskyLoss(nn.Module):
    """Soft Tversky (and, with alpha = beta = 0.5, Dice) loss on logits; see the module docstring."""

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth: float = 1.0,
        per_image: bool = True,
        skip_empty: bool = False,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.smooth, self.per_image = alpha, beta, smooth, per_image
        self.skip_empty = skip_empty and per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        t = target.float()
        # Sum over the pixels of each image and channel (per image), or of each channel over the batch.
        dims = tuple(range(2, p.ndim)) if self.per_image else (0, *range(2, p.ndim))
        tp = (p * t).sum(dims)
        fp = (p * (1 - t)).sum(dims)
        fn = ((1 - p) * t).sum(dims)
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        if not self.skip_empty:
            return (1 - score).mean()
        # (N, C): Dice of each image and channel; average over those with some truth, per channel.
        has = (t.sum(dims) > 0).float()
        per_channel = ((1 - score) * has).sum(0) / has.sum(0).clamp(min=1)
        return per_channel.mean()


class WeightedSum(nn.Module):
    def __init__(self, parts: list[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = [w for w, _ in parts]
        self.parts = nn.ModuleList(m for _, m in parts)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * m(logits, target) for w, m in zip(self.weights, self.parts))


class WithImageLoss(nn.Module):
    """The segmentation loss on all channels but the last, plus the image head's weighted BCE."""

    def __init__(self, segmentation: nn.Module, weight: float) -> None:
        super().__init__()
        self.segmentation, self.weight = segmentation, weight
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        image_logit = logits[:, -1].float().mean(dim=(1, 2))
        label = target[:, -1].float().amax(dim=(1, 2))
        return self.segmentation(logits[:, :-1], target[:, :-1]) + self.weight * self.bce(image_logit, label)


def build_loss(cfg: LossConfig, targets: tuple[str, ...] = ("infection",)) -> nn.Module:
    """The loss named by ``cfg.name`` (see the module docstring) for a network with these outputs."""
    if targets and targets[-1] == "covid":
        return WithImageLoss(build_loss(cfg, targets[:-1]), cfg.image_weight)
    if cfg.name == "bce":
        return nn.BCEWithLogitsLoss()
    skip = cfg.dice_empty == "skip"
    dice = SoftTverskyLoss(0.5, 0.5, cfg.smooth, cfg.dice_per_image, skip)
    if cfg.name == "dice":
        return dice
    if cfg.name == "bce_dice":
        return WeightedSum([(cfg.bce_weight, nn.BCEWithLogitsLoss()), (1 - cfg.bce_weight, dice)])
    if cfg.name == "tversky":
        return SoftTverskyLoss(cfg.tversky_alpha, cfg.tversky_beta, cfg.smooth, cfg.dice_per_image, skip)
    if cfg.name == "focal":
        from segmentation_models_pytorch.losses import FocalLoss

        return FocalLoss("binary", gamma=cfg.focal_gamma)
    raise ValueError(f"unknown loss {cfg.name!r}")
