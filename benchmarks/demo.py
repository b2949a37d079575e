"""Time the main job on the embedded default and print its synthetic Val numbers.

Target (issue: the reference system, end to end): under 5 minutes on a 2-core CPU without GPU,
pooled Dice >= 0.7 on the synthetic Val split.

    python benchmarks/demo.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from covidseg.demo import run_demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output folder (default: a temporary one)")
    a = p.parse_args()
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="covidseg-demo-"))
    t0 = time.perf_counter()
    r = run_demo(out)
    seconds = time.perf_counter() - t0
    s = r.summary
    print(f"device: cpu, {torch.get_num_threads()} threads")
    print(f"demo wall time: {seconds:.1f} s (target < 300 s)")
    print(
        f"synthetic Val pooled Dice {s['pooled']['dice']:.4f} (target >= 0.7), IoU {s['pooled']['iou']:.4f}, "
        f"pixel accuracy {s['pooled']['pixel_accuracy']:.4f}"
    )
    print(f"per-image Dice {s['per_image']['dice']:.4f}, COVID-19 per-image Dice {s['per_image_covid']['dice']:.4f}")
    print(f"run folder: {r.run.run_dir}")


if __name__ == "__main__":
    main()
