"""Training losses. Inputs are logits ``(N, 1, H, W)`` and masks ``(N, 1, H, W)`` in {0, 1}."""

from __future__ import annotations

from torch import nn

from covidseg.config import LossConfig


def build_loss(cfg: LossConfig) -> nn.Module:
    """``bce``: binary cross-entropy of ``sigmoid(logits)``, in the numerically stable logits form."""
    if cfg.name == "bce":
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"unknown loss {cfg.name!r}")
