"""Two models scored on the same X-rays: the paired difference of their per-image Dice, with a
bootstrap interval.

    python benchmarks/paired.py runs/b/eval/Val runs/a/eval/Val [--resamples 5000]

Each folder is what ``covidseg evaluate`` writes (``per_image.csv``); both must hold the same
images. Prints B minus A over all images (empty/empty = 1), over COVID-19 images, over the
negatives, and of the lung Dice where both have one: the mean difference and its 95% percentile
interval over resamples of the images (the same resample for both models, so image difficulty
cancels). An interval that holds 0 says the split cannot tell the two apart.
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
    """Mean of ``diff`` and the 2.5% / 97.5% percentiles of its bootstrap means."""
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("b", type=Path, help="evaluation folder of model B (the candidate)")
    p.add_argument("a", type=Path, help="evaluation folder of model A (the baseline)")
    p.add_argument("--resamples", type=int, default=5000)
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
    subsets = {"all images": groups == groups, "COVID-19": groups == "COVID-19", "negatives": groups != "COVID-19"}
    for column in ("dice", "lung_dice"):
        if not all(a[i].get(column) and b[i].get(column) for i in ids):
            continue
        diff = np.array([float(b[i][column]) - float(a[i][column]) for i in ids])
        for name, keep in subsets.items():
            if keep.any() and (column == "dice" or name == "all images"):
                mean, lo, hi = interval(diff[keep], args.resamples, rng)
                label = f"{'infection' if column == 'dice' else 'lung'} Dice, {name} ({int(keep.sum())})"
                print(f"  {label:<40} {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
