"""DataLoader throughput with augmentation, by number of workers, against the training step.

    python benchmarks/loader_speed.py --data ../shared/data/covid-qu-ex --batches 60

Reads Train from the on-disk cache (decoded, resized arrays; the first call fills it), applies
the preset's augmentation, and prints images/s of the loader alone for each worker count. Compare
with ``benchmarks/train_speed.py``: while the loader is several times faster than the training
step, workers only take cores from the step (``data.num_workers=0`` on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

import torch

from covidseg.config import build_config
from covidseg.data.loading import discover_root, load_dataset, make_loader
from covidseg.transforms import build_train_transform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--workers", default="0,1,2")
    a = p.parse_args()
    cfg = build_config(a.preset, overrides={"data.root": a.data})
    t0 = time.perf_counter()
    ds = load_dataset(
        discover_root(a.data),
        "Train",
        cfg.data.image_size,
        cfg.data.cache_dir,
        transform=build_train_transform(cfg.augment),
    )
    print(f"Train: {len(ds)} images at {cfg.data.image_size}px from the cache in {time.perf_counter() - t0:.1f} s")
    print(f"augmentation '{cfg.augment.name}', batch {cfg.train.batch_size}, {torch.get_num_threads()} torch threads")
    for workers in (int(w) for w in a.workers.split(",")):
        loader = make_loader(ds, cfg.train.batch_size, True, workers, generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        next(it)  # start-up (worker processes) excluded
        t0 = time.perf_counter()
        n = 0
        for _ in range(a.batches):
            n += len(next(it)["image"])
        print(f"num_workers={workers}: {n / (time.perf_counter() - t0):8.1f} images/s")


if __name__ == "__main__":
    main()
