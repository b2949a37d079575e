"""Torch datasets over cached arrays, and seeded, group-stratified subsets."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from covidseg.data.cache import CachedSplit
from covidseg.data.discovery import GROUPS, Sample


class SegmentationDataset(Dataset):
    """Items are dicts: ``image`` (1, S, S) float32 in [0, 1]; ``mask`` and ``lung`` (1, S, S)
    float32 {0, 1}; ``index`` (int, position in the split); ``group`` (int, index in GROUPS)."""

    def __init__(self, split: CachedSplit, transform: Any | None = None) -> None:
        self.split = split
        self.transform = transform
        self.groups = np.array([GROUPS.index(s.group) for s in split.samples], dtype=np.int64)

    def set_seed(self, seed: int) -> None:
        """Seed the random transform (per epoch in the main process, per worker in workers)."""
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        s = self.split
        image, infection, lung = np.asarray(s.images[i]), np.asarray(s.infection[i]), np.asarray(s.lung[i])
        if self.transform is not None:
            from covidseg.transforms import apply

            image, (infection, lung) = apply(self.transform, image, [infection, lung])
        image = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
        mask = torch.from_numpy(infection.astype(np.float32))[None]
        lung = torch.from_numpy(lung.astype(np.float32))[None]
        return {"image": image, "mask": mask, "lung": lung, "index": i, "group": int(self.groups[i])}


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's transform from the loader's generator."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, SegmentationDataset):
        info.dataset.set_seed(info.seed)


def stratified_subset(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """At most ``limit`` samples, drawn with ``seed`` so that each group keeps its share.

    The order of the input is kept, so the same call always gives the same list.
    """
    if limit is None or limit >= len(samples):
        return list(samples)
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_group.setdefault(s.group, []).append(i)
    chosen: list[int] = []
    remaining = limit
    groups = sorted(by_group, key=lambda g: -len(by_group[g]))
    for k, g in enumerate(groups):
        idx = by_group[g]
        share = remaining if k == len(groups) - 1 else round(limit * len(idx) / len(samples))
        share = max(0, min(share, len(idx), remaining))
        chosen += rng.sample(idx, share)
        remaining -= share
    return [samples[i] for i in sorted(chosen)]


TARGET_KEYS = {"infection": "mask", "lung": "lung"}


def stack_targets(batch: dict, targets: tuple[str, ...]) -> torch.Tensor:
    """The ``(N, C, S, S)`` training target of a batch: one channel per name in ``targets``."""
    if targets == ("infection",):
        return batch["mask"]
    return torch.cat([_target(batch, t) for t in targets], dim=1)


def _target(batch: dict, name: str) -> torch.Tensor:
    """One target channel; ``covid`` is the image label (the infection mask is not empty) at every pixel."""
    if name == "covid":
        mask = batch["mask"]
        return mask.amax(dim=(2, 3), keepdim=True).expand_as(mask)
    return batch[TARGET_KEYS[name]]
