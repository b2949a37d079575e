"""Shared pieces of the command line: logging, progress bars, option types and the options every command has."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from covidseg.errors import CovidsegError

# The definitions 'covidseg tune' can optimise (covidseg.tune.METRICS; kept here so that building
# the parser does not import torch).
TUNE_METRICS = ("per_image", "per_image_covid", "balanced", "pooled")


def progress_bar(enabled: bool):
    """A tqdm progress bar on stderr when it is a terminal (or forced with --progress)."""
    from tqdm.auto import tqdm

    def bar(iterable, *, desc: str = "", total: int | None = None):
        return tqdm(
            iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=not enabled, file=sys.stderr
        )

    return bar


def setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    root = logging.getLogger("covidseg")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    root.propagate = False


def parse_sets(items: list[str]) -> dict[str, Any]:
    from covidseg.config import parse_value

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CovidsegError(f"--set expects KEY=VALUE (for example train.epochs=5), got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def whole_number(low: int, high: int, what: str):
    """An argparse type: a whole number in ``low``..``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}-{high:,}, got {text!r}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number above 0 (and below a million), got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0, ``"60m"`` -> 3600.0, ``"1.5h"`` -> 5400.0 (seconds)."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = str(text).strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise CovidsegError(f"--time-budget expects a duration such as 90s, 60m or 1.5h, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise CovidsegError(f"--time-budget must be a positive duration, got {text!r}")
    return value


def checkpoint_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="the run's best or last checkpoint (default best)",
    )


def threshold_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--threshold", type=float, help="probability threshold in (0, 1) (default: the model's tuned one, else 0.5)"
    )


def postprocess_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--postprocess",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the model's tuned decisions (postprocess.json) and calibration when present (default yes)",
    )


def device_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: CUDA when present)")


def common_options(sp: argparse.ArgumentParser) -> None:
    """The options every long-running command takes."""
    sp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="show progress bars (default: when stderr is a terminal)",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
