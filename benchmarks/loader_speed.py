"""DataLoader throughput with augmentation, by number of workers, against the training step.

    python benchmarks/loader_speed.py --data ../shared/data/covid-qu-ex --batches 60
    python benchmarks/loader_speed.py --data ../shared/data/covid-qu-ex --in-training 80

Reads Train from the on-disk cache (decoded, resized arrays; the first call fills it), applies
the preset's augmentation, and prints images/s of the loader alone for each worker count. Compare
with ``benchmarks/train_speed.py``: while the loader is several times faster than the training
step, workers only take cores from the step (``data.num_workers=0`` on a 2-core CPU).

``--in-training N`` measures what the loader costs where it runs, inside the training loop: N
steps of the preset's network, loss and optimiser (``train_one_epoch``, no workers) with each
augmentation (none, light, xray), and with OpenCV's own thread pool on and off (albumentations
runs on OpenCV; between steps, PyTorch's threads may still hold the cores). Seconds per step;
the first setting (no augmentation) is measured again at the end to show the machine's drift.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from itertools import islice

import torch

from covidseg.config import Config, build_config
from covidseg.data.loading import discover_root, load_dataset, make_loader
from covidseg.engine.device import cpu_info
from covidseg.transforms import build_train_transform


def in_training(a: argparse.Namespace, cfg: Config) -> None:
    """Seconds per training step with the loader in the loop, by augmentation and OpenCV threads."""
    import cv2
    from torch.utils.data import Subset

    from covidseg.engine.device import autocast_factory
    from covidseg.engine.optim import build_optimizer
    from covidseg.engine.train import train_one_epoch
    from covidseg.losses import build_loss
    from covidseg.models import create_model, model_spec

    ds = load_dataset(discover_root(a.data), "Train", cfg.data.image_size, cfg.data.cache_dir)
    part = Subset(ds, range(min(len(ds), (a.in_training + 3) * cfg.train.batch_size)))
    cv2_default = cv2.getNumThreads()
    print(f"CPU: {cpu_info()['summary']}; OpenCV threads by default {cv2_default}, torch {torch.get_num_threads()}")
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    cases = [(aug, n) for aug in ("none", "light", "xray") for n in (cv2_default, 1)] + [("none", cv2_default)]
    for aug, threads in cases:
        cv2.setNumThreads(threads)
        ds.transform = build_train_transform(replace(cfg.augment, name=aug))
        torch.manual_seed(0)
        net = create_model(model_spec(cfg, with_weights=False)).to(memory_format=fmt)
        opt = build_optimizer(cfg.optim, net.parameters())
        loss_fn = build_loss(cfg.loss, cfg.model.target_list)
        args = dict(autocast=autocast_factory(torch.device("cpu"), None), channels_last=cfg.train.channels_last,
                    targets=cfg.model.target_list, grad_clip=cfg.optim.grad_clip)  # fmt: skip
        warm = make_loader(Subset(part, range(3 * cfg.train.batch_size)), cfg.train.batch_size, False)
        train_one_epoch(net, warm, loss_fn, opt, torch.device("cpu"), **args)
        loader = make_loader(part, cfg.train.batch_size, True, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        train_one_epoch(net, islice(loader, a.in_training), loss_fn, opt, torch.device("cpu"), **args)
        print(f"augment {aug:<6} OpenCV threads {threads}: {(time.perf_counter() - t0) / a.in_training:.3f} s/step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--in-training", type=int, default=0, metavar="N", help="N training steps per setting instead")
    a = p.parse_args()
    cfg = build_config(a.preset, overrides={"data.root": a.data})
    if a.in_training:
        in_training(a, cfg)
        return
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
