"""Training augmentation with albumentations, on the cached uint8 arrays.

What keeps a chest X-ray plausible: small rotations (a patient is never upside down), modest
scale and shift (framing varies between machines), brightness, contrast and gamma (exposure
and detector response vary), CLAHE (some archives are contrast-equalised), slight blur and
noise (resolution and quantum noise). Horizontal flips are off by default: they put the heart
on the right, which a real PA/AP film almost never shows; ``augment.hflip=True`` allows them.
No elastic warps or colour changes. Masks are warped with nearest-neighbour interpolation, so
they stay binary.

Presets (``augment.name``): ``none``; ``light`` (geometry only); ``xray`` (geometry and
intensity, the recommended one). ``augment.strength`` scales every magnitude.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidseg.config import AugmentConfig


def build_train_transform(cfg: AugmentConfig) -> Any | None:
    """The albumentations pipeline for training, or None for ``augment.name=none``."""
    if cfg.name == "none":
        return None
    import albumentations as A
    import cv2

    s = cfg.strength
    ops: list[Any] = [
        A.Affine(
            rotate=(-10 * s, 10 * s),
            scale=(1 - 0.1 * s, 1 + 0.1 * s),
            translate_percent=(-0.06 * s, 0.06 * s),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=0.7,
        )
    ]
    if cfg.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if cfg.name == "xray":
        ops += [
            A.RandomBrightnessContrast(brightness_limit=0.15 * s, contrast_limit=0.15 * s, p=0.5),
            A.RandomGamma(gamma_limit=(100 - 20 * s, 100 + 20 * s), p=0.3),
            A.CLAHE(clip_limit=(1, 3), tile_grid_size=(8, 8), p=0.15),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.GaussNoise(std_range=(0.01, 0.03 * s))], p=0.2),
        ]
    return A.Compose(ops, seed=0)


def apply(transform: Any, image: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``transform`` on a uint8 image and its {0, 1} masks."""
    out = transform(image=image, masks=masks)
    return out["image"], list(out["masks"])
