"""Does bf16 autocast cost accuracy? The same short training in fp32 and in bf16, compared on Val.

    python benchmarks/bf16_accuracy.py --data ../shared/data/covid-qu-ex --out /tmp/bf16-check

Both runs use one preset, seed, subset and number of epochs; only ``train.amp`` differs. Prints
per-epoch Val per-image Dice of both (on the Val subset) and the final metrics under every
definition on all of Val, and the training time of each. Defaults: the ``cpu`` preset on 800 Train
and 300 Val images for 3 epochs (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from covidseg.config import build_config
from covidseg.engine.fit import fit
from covidseg.evaluation import evaluate_run
from covidseg.metrics import lookup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--train-limit", type=int, default=800)
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    results = {}
    for amp in ("off", "bf16"):
        cfg = build_config(
            a.preset,
            overrides={
                "data.root": a.data,
                "data.train_limit": a.train_limit,
                "data.val_limit": a.val_limit,
                "train.epochs": a.epochs,
                "train.amp": amp,
                "train.device": "cpu",
            },
        )
        run = Path(a.out) / amp
        t0 = time.perf_counter()
        result = fit(cfg, run, resume=(run / "checkpoints" / "last.pt").is_file())
        seconds = time.perf_counter() - t0
        s = evaluate_run(run, split="Val", panel=0, postprocess=False)
        results[amp] = {"history": result.history, "summary": s, "seconds": seconds}
    print(f"{a.preset} preset, {a.train_limit} Train / {a.val_limit} Val images, {a.epochs} epochs, threshold 0.5")
    print(f"final metrics on all {results['off']['summary']['images']} Val images")
    print("epoch  val per-image Dice fp32  bf16")
    for h32, h16 in zip(results["off"]["history"], results["bf16"]["history"]):
        print(f"{int(h32['epoch']):5d}  {h32['val_dice_per_image']:22.4f}  {h16['val_dice_per_image']:.4f}")
    print(f"{'definition':<28} {'fp32':>8} {'bf16':>8}")
    for name, path in (
        ("pooled Dice", ("pooled", "dice")),
        ("per-image Dice (all)", ("per_image", "dice")),
        ("per-image Dice (COVID-19)", ("per_image_covid", "dice")),
        ("negatives with FP", ("negatives_with_false_positives",)),
    ):
        vals = [lookup(results[amp]["summary"], path) for amp in ("off", "bf16")]
        print(f"{name:<28} {vals[0]:8.4f} {vals[1]:8.4f}")
    if "lung" in results["off"]["summary"]:
        l32, l16 = (results[k]["summary"]["lung"]["per_image"]["dice"] for k in ("off", "bf16"))
        print(f"{'lung per-image Dice':<28} {l32:8.4f} {l16:8.4f}")
    print(f"{'training seconds':<28} {results['off']['seconds']:8.0f} {results['bf16']['seconds']:8.0f}")
    (Path(a.out) / "bf16_check.json").write_text(
        json.dumps({k: {"summary": v["summary"], "seconds": v["seconds"]} for k, v in results.items()}, indent=2)
    )


if __name__ == "__main__":
    main()
