"""Golden values for the losses on tiny tensors, empty masks included."""

from __future__ import annotations

import math

import pytest
import torch

from covidseg.config import LossConfig
from covidseg.errors import ConfigError
from covidseg.losses import SoftTverskyLoss, build_loss

BIG = 30.0  # sigmoid(30) == 1 to float precision


def logits(*rows):
    """(N, 1, 2, 2) logits from per-image lists of four 0/1 predictions."""
    return (torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 2, 2) * 2 - 1) * BIG


def masks(*rows):
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 2, 2)


def test_soft_dice_golden_values() -> None:
    dice = SoftTverskyLoss(smooth=1.0)
    # tp 1, fp 1, fn 1: 1 - (1 + 1) / (1 + 0.5 + 0.5 + 1)
    assert float(dice(logits([1, 1, 0, 0]), masks([1, 0, 1, 0]))) == pytest.approx(1 - 2 / 3, abs=1e-5)
    assert float(dice(logits([1, 1, 0, 0]), masks([1, 1, 0, 0]))) == pytest.approx(0.0, abs=1e-5)
    # Empty truth, empty prediction: loss 0. Empty truth, two false pixels: 1 - 1 / (0.5 * 2 + 1).
    assert float(dice(logits([0, 0, 0, 0]), masks([0, 0, 0, 0]))) == pytest.approx(0.0, abs=1e-5)
    assert float(dice(logits([1, 1, 0, 0]), masks([0, 0, 0, 0]))) == pytest.approx(0.5, abs=1e-5)


def test_per_image_versus_batch_dice_on_an_empty_mask_batch() -> None:
    pred = logits([1, 1, 0, 0], [1, 0, 0, 0])
    truth = masks([1, 1, 0, 0], [0, 0, 0, 0])
    per_image = SoftTverskyLoss(smooth=1.0, per_image=True)(pred, truth)
    batch = SoftTverskyLoss(smooth=1.0, per_image=False)(pred, truth)
    # per image: image 1 perfect (0), image 2 one false pixel: 1 - 1 / (0.5 + 1) = 1/3; mean 1/6
    assert float(per_image) == pytest.approx(1 / 6, abs=1e-5)
    # batch: tp 2, fp 1, fn 0: 1 - 3 / (2 + 0.5 + 1)
    assert float(batch) == pytest.approx(1 - 3 / 3.5, abs=1e-5)


def test_skip_empty_leaves_negative_images_to_bce() -> None:
    pred = logits([1, 0, 0, 0], [1, 1, 1, 1])
    truth = masks([1, 1, 0, 0], [0, 0, 0, 0])
    skip = SoftTverskyLoss(smooth=1.0, skip_empty=True)
    # Only image 1 counts: tp 1, fn 1: 1 - 2 / (1 + 0.5 + 1); image 2's four false pixels do not.
    assert float(skip(pred, truth)) == pytest.approx(1 - 2 / 2.5, abs=1e-5)
    assert float(skip(pred[1:], truth[1:])) == 0.0  # no image with truth: no Dice term
    # Per channel: the lung channel (always present) still counts every image.
    two = SoftTverskyLoss(smooth=1.0, skip_empty=True)(
        pred.repeat(1, 2, 1, 1), torch.cat([truth, masks([1, 0, 0, 0], [1, 1, 1, 1])], 1)
    )
    lung = SoftTverskyLoss(smooth=1.0)(pred, masks([1, 0, 0, 0], [1, 1, 1, 1]))
    assert float(two) == pytest.approx((1 - 2 / 2.5 + float(lung)) / 2, abs=1e-5)
    # Through the config, and the BCE part still sees the negative image.
    cfg = LossConfig(name="bce_dice", dice_empty="skip")
    assert float(build_loss(cfg)(pred[1:], truth[1:])) > 1.0
    with pytest.raises(ConfigError, match="dice_empty"):
        LossConfig(dice_empty="never")


def test_tversky_weights_false_negatives() -> None:
    t = SoftTverskyLoss(alpha=0.3, beta=0.7, smooth=0.0)
    missed = float(t(logits([1, 0, 0, 0]), masks([1, 1, 0, 0])))  # tp 1, fn 1
    extra = float(t(logits([1, 1, 0, 0]), masks([1, 0, 0, 0])))  # tp 1, fp 1
    assert missed == pytest.approx(1 - 1 / 1.7, abs=1e-5) and extra == pytest.approx(1 - 1 / 1.3, abs=1e-5)


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice", "focal", "tversky"])
def test_every_loss_is_small_when_right_and_large_when_wrong(name: str) -> None:
    loss = build_loss(LossConfig(name=name))
    truth = masks([1, 1, 0, 0], [0, 0, 0, 0])
    right = float(loss(logits([1, 1, 0, 0], [0, 0, 0, 0]), truth))
    wrong = float(loss(logits([0, 0, 1, 1], [1, 1, 1, 1]), truth))
    assert math.isfinite(right) and right < 0.05 < wrong
    x = torch.zeros(2, 1, 2, 2, requires_grad=True)
    loss(x, truth).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bce_dice_is_the_weighted_sum() -> None:
    pred = torch.randn(2, 1, 4, 4)
    truth = (torch.rand(2, 1, 4, 4) > 0.5).float()
    both = build_loss(LossConfig(name="bce_dice", bce_weight=0.25))(pred, truth)
    bce = build_loss(LossConfig(name="bce"))(pred, truth)
    dice = build_loss(LossConfig(name="dice"))(pred, truth)
    assert float(both) == pytest.approx(float(0.25 * bce + 0.75 * dice), rel=1e-6)


def test_two_channel_loss_is_the_mean_of_the_channels() -> None:
    from covidseg.config import LossConfig
    from covidseg.losses import build_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, generator=g)
    target = (torch.rand(3, 2, 8, 8, generator=g) > 0.6).float()
    target[0, 0] = 0  # an empty infection mask
    for name in ("dice", "bce_dice", "tversky"):
        for per_image in (True, False):
            fn = build_loss(LossConfig(name=name, dice_per_image=per_image))
            both = fn(logits, target)
            each = [fn(logits[:, c : c + 1], target[:, c : c + 1]) for c in range(2)]
            assert both == pytest.approx(float(sum(each) / 2), rel=1e-5), (name, per_image)
