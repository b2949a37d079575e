"""``covidseg train``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from covidseg.cli.common import (
    common_options,
    parse_duration,
    parse_sets,
    progress_bar,
    setup_logging,
)
from covidseg.errors import CovidsegError

log = logging.getLogger("covidseg")


def _train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "data.root": str(Path(a.data).expanduser().resolve()) if a.data else None,
        "data.image_size": a.image_size,
        "data.cache_dir": a.cache_dir,
        "data.train_limit": a.train_limit,
        "data.val_limit": a.val_limit,
        "data.num_workers": a.workers,
        "train.epochs": a.epochs,
        "train.time_budget": parse_duration(a.time_budget) if a.time_budget else None,
        "train.batch_size": a.batch_size,
        "train.seed": a.seed,
        "train.device": a.device,
        "optim.lr": a.lr,
        "model.name": a.model,
        "model.encoder_name": a.encoder,
        "model.encoder_weights": a.encoder_weights,
    }
    out = {k: v for k, v in flags.items() if v is not None}
    if a.steps is not None:  # a fixed number of steps replaces a preset's time budget
        if a.time_budget:
            raise CovidsegError("--steps and --time-budget exclude each other; give one")
        out.update({"train.steps": a.steps, "train.time_budget": None})
    out.update(parse_sets(a.set))
    return out


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from covidseg.config import build_config
    from covidseg.engine.fit import fit
    from covidseg.engine.run_folder import load_run_config

    out = Path(a.out)
    setup_logging(a.verbose)  # fit copies the log into RUN/train.log
    if a.resume:
        from covidseg.config import apply_overrides

        cfg = apply_overrides(load_run_config(out), _train_overrides(a))
    else:
        cfg = build_config(a.preset, a.config, _train_overrides(a), cuda_available=torch.cuda.is_available())
        if a.preset is None:
            log.info("no --preset given: using %r for this machine", cfg.preset)
    result = fit(cfg, out, resume=a.resume, progress=progress_bar(a.progress), argv=sys.argv)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return 0
    print(f"best {result.select_metric} {result.best_value:.4f} at epoch {result.best_epoch}; run folder: {out}")
    return 0


def _train_parser(sub: Any) -> None:
    """The parsers of train."""
    sp = sub.add_parser("train", help="train a model into a run folder")
    sp.add_argument("--data", help="data folder (COVID-QU-Ex layout)")
    sp.add_argument("-o", "--out", required=True, help="run folder to create (or continue with --resume)")
    sp.add_argument(
        "--preset",
        help="reference, reference-cpu, cpu (recommended without a GPU), gpu or demo; see 'covidseg presets' "
        "(default: reference on a GPU, reference-cpu on a CPU)",
    )
    sp.add_argument("-c", "--config", help="YAML file with config sections, applied over the preset")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    sp.add_argument("--epochs", type=int, help="epochs to train (with --time-budget: the most epochs)")
    sp.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="finish within this time, e.g. 60m or 90s: the run measures its speed and lays the learning-rate "
        "schedule over the steps that fit (train.time_budget, in seconds)",
    )
    sp.add_argument(
        "--steps",
        type=int,
        help="lay the learning-rate schedule over exactly this many optimiser steps, whatever their time "
        "(train.steps; replaces a preset's time budget): the same run whatever the machine's speed or load",
    )
    sp.add_argument("--batch-size", type=int, help="images per step (train.batch_size)")
    sp.add_argument("--image-size", type=int, help="network input size in pixels, a multiple of 8 (data.image_size)")
    sp.add_argument("--lr", type=float, help="learning rate (optim.lr)")
    sp.add_argument("--model", help="a name from 'covidseg models' (default unet, the reference)")
    sp.add_argument("--encoder", help="encoder of an smp-* model (default resnet34)")
    sp.add_argument("--encoder-weights", help="pre-trained encoder weights of an smp-* model: imagenet (needs network)")
    sp.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    sp.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    sp.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    sp.add_argument("--train-limit", type=int, help="train on a group-stratified subset of N images")
    sp.add_argument("--val-limit", type=int, help="validate on a group-stratified subset of N images")
    sp.add_argument(
        "--cache-dir", help="where decoded arrays are cached (default $COVIDSEG_CACHE_DIR, else ~/.cache/covidseg)"
    )
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.weight_decay=1e-4 (repeatable)",
    )
    common_options(sp)
    sp.set_defaults(func=cmd_train)
