"""Where a model's per-image Dice on COVID-19 X-rays is lost: by the size of the true infection.

    python benchmarks/dice_by_size.py runs/a/eval/Val [runs/b/eval/Val ...]

Each folder is what ``covidseg evaluate`` writes (``per_image.csv``: pixel counts at each X-ray's
own size). Over the X-rays of the COVID-19 group it prints the per-image Dice by quartile of the
true infection's share of the image (quartile edges from the first folder, so that every model is
cut at the same sizes), the X-rays with an empty mask and with Dice below 0.3, and the predicted
area over the true area (median): whether the loss lies in small lesions, in missed X-rays or in
masks too large or too small throughout.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

GROUP = "COVID-19"


def counts(folder: Path) -> dict[str, np.ndarray]:
    """tp, fp, fn, tn and dice of the COVID-19 X-rays in ``folder/per_image.csv``."""
    with open(folder / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["group"] == GROUP]
    if not rows:
        raise SystemExit(f"{folder}: no {GROUP} X-rays in per_image.csv")
    return {k: np.array([float(r[k]) for r in rows]) for k in ("tp", "fp", "fn", "tn", "dice")}


def report(folder: Path, edges: np.ndarray | None) -> np.ndarray:
    """Print one folder's figures; returns the quartile edges it used."""
    c = counts(folder)
    truth, pred = c["tp"] + c["fn"], c["tp"] + c["fp"]
    share = truth / (truth + c["fp"] + c["tn"])
    edges = np.quantile(share, [0.25, 0.5, 0.75]) if edges is None else edges
    quartile = np.digitize(share, edges)
    dice = c["dice"]
    print(f"{folder}: {len(dice)} {GROUP} X-rays, per-image Dice {dice.mean():.3f} (median {np.median(dice):.3f})")
    bounds = ["0", *(f"{e:.1%}" for e in edges), "100%"]
    for q in range(4):
        part = dice[quartile == q]
        size = f"{bounds[q]:>6}-{bounds[q + 1]:<6}"
        print(f"  true infection {size} of the image: Dice {part.mean():.3f} ({len(part)} X-rays)")
    print(f"  empty masks {int((pred == 0).sum())}, Dice below 0.3 {int((dice < 0.3).sum())}")
    ratio = np.median(pred[truth > 0] / truth[truth > 0])
    print(f"  predicted over true area, median {ratio:.2f}")
    return edges


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="eval folders with per_image.csv")
    edges = None
    for folder in p.parse_args().folders:
        edges = report(folder, edges)


if __name__ == "__main__":
    main()
