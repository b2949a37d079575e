"""How much the network's grid alone costs: the true masks taken through it and back.

    python benchmarks/grid_ceiling.py --data ../shared/data/covid-qu-ex --sizes 96,128,160

Each true infection mask of the COVID-19 X-rays of a split goes the way a perfect network's
output would: shrunk to the grid as the cache shrinks masks (nearest neighbour), enlarged back to
the X-ray's own size as ``predict`` enlarges probabilities (bilinear, then > 0.5), and scored
against the original (per-image Dice, COVID-19 X-rays). Two grids: the whole X-ray, as covidseg
segments today, and a lung-crop cascade's: the box of the true lung mask with a margin on each
side, cut out and resized to the grid. The gap from 1 is the most a network at that size can lose
to resolution; the gap between the two columns is the most a lung-crop cascade can win back.
"""

from __future__ import annotations

import argparse

import numpy as np

from covidseg.data.discovery import discover
from covidseg.data.image_io import read_mask, resize_mask
from covidseg.inference.postprocess import upsample
from covidseg.metrics import confusion_counts, dice_iou


def through_grid(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask shrunk to (size, size) and enlarged back to its own shape, as predict does."""
    small = resize_mask(mask.astype(np.uint8) * 255, size).astype(np.float32)
    return upsample(small, *mask.shape) > 0.5


def lung_box(lung: np.ndarray, margin: float) -> tuple[slice, slice]:
    """The box of a lung mask widened by ``margin`` of its height and width on each side."""
    ys, xs = np.nonzero(lung)
    h, w = lung.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = int(margin * (y1 - y0)), int(margin * (x1 - x0))
    return slice(max(0, y0 - dy), min(h, y1 + dy)), slice(max(0, x0 - dx), min(w, x1 + dx))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(dice_iou(confusion_counts(pred[None], truth[None]))[0][0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="Val")
    p.add_argument("--sizes", default="96,128,160")
    p.add_argument("--margin", type=float, default=0.1, help="lung box margin, a share of its height and width")
    a = p.parse_args()
    samples = [s for s in discover(a.data).split(a.split) if s.group == "COVID-19" and s.lung is not None]
    masks = [(m, lung) for m, lung in ((read_mask(s.infection), read_mask(s.lung)) for s in samples) if lung.any()]
    boxes = [lung_box(lung, a.margin) for _, lung in masks]
    share = np.mean([(b[0].stop - b[0].start) * (b[1].stop - b[1].start) / m.size for b, (m, _) in zip(boxes, masks)])
    print(f"{a.split}: {len(masks)} COVID-19 X-rays, sizes {sorted({m.shape for m, _ in masks})}; "
          f"lung box with {a.margin:.0%} margin: {share:.0%} of the image on average")  # fmt: skip
    print(f"{'grid':>6} {'whole X-ray':>12} {'lung box':>10}   (per-image Dice of the true masks through the grid)")
    for size in (int(s) for s in a.sizes.split(",")):
        whole, crop = [], []
        for (mask, _), box in zip(masks, boxes):
            whole.append(dice(through_grid(mask, size), mask))
            cascade = np.zeros_like(mask)
            cascade[box] = through_grid(mask[box], size)
            crop.append(dice(cascade, mask))
        print(f"{size:>6} {np.mean(whole):>12.4f} {np.mean(crop):>10.4f}")


if __name__ == "__main__":
    main()
