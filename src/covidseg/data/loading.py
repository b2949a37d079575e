"""From a data root and a split name to a dataset and a DataLoader."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader

from covidseg.data.cache import load_split
from covidseg.data.dataset import SegmentationDataset, seed_worker, stratified_subset
from covidseg.data.discovery import Discovery, discover
from covidseg.errors import DataError
from covidseg.progress import Progress

log = logging.getLogger(__name__)


def load_dataset(
    discovery: Discovery,
    split: str,
    image_size: int,
    cache_dir: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    transform: Any | None = None,
) -> SegmentationDataset:
    """The preprocessed dataset of one split, optionally a seeded group-stratified subset."""
    samples = discovery.split(split)
    if not samples:
        found = ", ".join(discovery.splits) or "none"
        raise DataError(f"split {split!r} has no images under {discovery.root} (splits found: {found})")
    samples = stratified_subset(samples, limit, seed)
    cached = load_split(samples, image_size, cache_dir, progress=progress, desc=f"decode {split}")
    log.info("%s: %d images at %dx%d", split, len(cached), image_size, image_size)
    return SegmentationDataset(cached, transform)


def discover_root(root: str | None) -> Discovery:
    if not root:
        raise DataError(
            "no data folder given; pass --data ROOT (a COVID-QU-Ex folder, or one written by 'covidseg synth')"
        )
    return discover(root)


def make_loader(
    dataset: Any,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    sampler: Any | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        drop_last=False,
    )
