"""Two models scored on the same X-rays: the paired difference of their per-image Dice, with a
bootstrap interval.

    python benchmarks/paired.py runs/b/eval/Val runs/a/eval/Val [--resamples 5000]

Each folder is what ``covidseg evaluate`` writes (``per_image.csv``); both must hold the same
images. Prints B minus A over all images, over COVID-19 images, over the negatives, and of the
lung Dice where the models have a lung output: the mean difference and its 95% percentile
interval over resamples of the images (the same resample for both models, so image difficulty
cancels). An interval that holds 0 says the split cannot tell the two apart. Images whose Dice
is undefined in either folder (empty truth and empty mask under ``eval.empty_empty=nan``) are
left out, and the counts say so.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def read(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "per_image.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def interval(diff: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean of ``diff`` and the 2.5% / 97.5% percentiles of its bootstrap means (in chunks of
    about a million draws, so a large split stays within memory)."""
    chunk = max(1, 1_000_000 // len(diff))
    means = np.concatenate(
        [
            diff[rng.integers(0, len(diff), size=(min(chunk, resamples - start), len(diff)))].mean(axis=1)
            for start in range(0, resamples, chunk)
        ]
    )
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def differences(b: dict[str, dict[str, str]], a: dict[str, dict[str, str]], ids: list[str], column: str) -> np.ndarray:
    """B minus A of one column per image; NaN where either is empty (undefined)."""

    def value(row: dict[str, str]) -> float:
        return float(row[column]) if row.get(column) else np.nan

    return np.array([value(b[i]) - value(a[i]) for i in ids])


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number of at least 1, got {text}")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("b", type=Path, help="evaluation folder of model B (the candidate)")
    p.add_argument("a", type=Path, help="evaluation folder of model A (the baseline)")
    p.add_argument("--resamples", type=positive, default=5000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for folder in (args.b, args.a):
        if not (folder / "per_image.csv").is_file():
            raise SystemExit(f"{folder} holds no per_image.csv: name the folder 'covidseg evaluate' wrote")
    b, a = read(args.b), read(args.a)
    if set(a) != set(b):
        differ = len(set(a) ^ set(b))
        raise SystemExit(f"the two folders score different images ({len(a)} and {len(b)}; {differ} differ)")
    ids = sorted(a)
    groups = np.array([a[i]["group"] for i in ids])
    rng = np.random.default_rng(args.seed)
    print(f"{args.b} minus {args.a}: {len(ids)} X-rays, {args.resamples} paired resamples, 95% intervals")
    subsets = {
        "all images": np.ones(len(ids), bool),
        "COVID-19": groups == "COVID-19",
        "negatives": groups != "COVID-19",
    }
    for column, label in (("dice", "infection"), ("lung_dice", "lung")):
        diff = differences(b, a, ids, column)
        for name, keep in subsets.items():
            if column == "lung_dice" and name != "all images":
                continue
            defined = keep & np.isfinite(diff)
            if not defined.any():
                print(f"  {label} Dice, {name}: undefined for every image")
                continue
            mean, lo, hi = interval(diff[defined], args.resamples, rng)
            count = f"{int(defined.sum())}" + (f" of {int(keep.sum())}" if defined.sum() < keep.sum() else "")
            print(f"  {f'{label} Dice, {name} ({count})':<40} {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
