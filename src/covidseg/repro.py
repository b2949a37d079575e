"""Seeding and the record of the environment a run used (``env.json``)."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg.engine.device import cpu_info


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed ``random``, numpy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch: a resumed run draws the same order as an unbroken one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def capture_environment(device: torch.device, seed: int, argv: list[str] | None = None) -> dict[str, Any]:
    """Versions, device, seed and command line, as saved to ``env.json``."""
    cuda = torch.cuda.is_available()
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": argv if argv is not None else sys.argv,
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            p: _version(p)
            for p in (
                "covidseg",
                "torch",
                "torchvision",
                "segmentation-models-pytorch",
                "numpy",
                "pillow",
                "matplotlib",
            )
        },
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or None,
        "cpu_threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "git_commit": _git_commit(),
    }
