"""How far any thresholding rule could lift a trained run: the best threshold per X-ray, chosen
by looking at its true mask.

    python benchmarks/threshold_ceiling.py RUN_DIR [--data COVID-QU-Ex] [--split Val]

On the split's X-rays, at each X-ray's own size, from the network's probabilities as ``covidseg
tune`` collects them (plain and flip-averaged, with and without the lung gate): per-image Dice
over the COVID-19 X-rays with the best single threshold for all of them (what ``tune`` can
choose), and with each X-ray's own best threshold from the same grid (an oracle that no single
threshold per X-ray can beat: it reads the answer); then the all-image Dice (empty/empty = 1)
each would give behind a perfect image gate (every negative X-ray kept empty). No image gate, no
component filter, no hole filling: the figures bound what choosing thresholds can add to this
network's masks.
"""

from __future__ import annotations

import argparse

import numpy as np

from covidseg.evaluation import open_split
from covidseg.inference.predictor import open_run
from covidseg.scoring import load_truth
from covidseg.tune import THRESHOLDS, collect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data", default=None, help="the dataset folder (default: the run's)")
    p.add_argument("--split", default="Val")
    a = p.parse_args()
    predictor, cfg, _ = open_run(a.run, "best", "cpu", None, postprocess=False)
    split = open_split(cfg, a.split, a.data, None, None, None)
    truth = load_truth(split.dataset, "native", None)
    data = collect(predictor, split.dataset, truth, cfg.train.batch_size, cfg.eval.empty_empty, None)
    covid, n = data.covid, len(data)
    print(f"{a.run}, {a.split}: {n} X-rays, {covid.sum()} COVID-19; per-image Dice at each X-ray's own size")
    head = ("flip", "lung gate", "threshold", "COVID-19", "all*", "oracle COVID-19", "all*")
    print("{:>5} {:>9} | {:>9} {:>8} {:>6} | {:>15} {:>6}".format(*head))
    for (tta, gate), above in sorted(data.above.items()):
        pred, tp = above[..., 0].astype(float), above[..., 1].astype(float)
        true = data.true_pixels[:, None].astype(float)
        dice = np.where(pred + true > 0, 2 * tp / np.maximum(pred + true, 1), 1.0)[covid]  # (COVID-19, T)
        k = int(dice.mean(0).argmax())
        best, oracle = dice[:, k].mean(), dice.max(1).mean()
        gated = [(d * covid.sum() + n - covid.sum()) / n for d in (best, oracle)]
        row = ("on" if tta else "off", "on" if gate else "off", THRESHOLDS[k], best, gated[0], oracle, gated[1])
        print("{:>5} {:>9} | {:>9} {:>8.4f} {:>6.4f} | {:>15.4f} {:>6.4f}".format(*row))
    print("* all-image Dice behind a perfect image gate: every negative X-ray empty (Dice 1)")


if __name__ == "__main__":
    main()
