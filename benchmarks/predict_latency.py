"""End-to-end ``predict`` latency on CPU: one X-ray file in, final masks and numbers out.

Times :meth:`covidseg.inference.predictor.Predictor.predict_file` (decode, resize, network with
the model's flip TTA if tuned so, enlarging to the X-ray's size, post-processing, severity) on
the example COVID-19 X-ray (256x256) and on the same X-ray enlarged to 2000x2000, and prints the
median and 90th percentile with the CPU's model, cores and speed flags:

    python benchmarks/predict_latency.py                 # the built-in model
    python benchmarks/predict_latency.py --model runs/x  # a run folder or bundle
    python benchmarks/predict_latency.py --markdown      # as a Markdown table (model card)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from covidseg.engine.device import cpu_info
from covidseg.inference.predictor import Predictor

EXAMPLE = Path(__file__).parents[1] / "src" / "covidseg" / "examples" / "covid-19.png"


def latency(predictor: Predictor, path: Path, repeats: int) -> tuple[float, float]:
    predictor.predict_file(path)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict_file(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, float(np.percentile(times, 90)) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="run folder, bundle or built-in name (default: the built-in model)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    predictor = Predictor.load(a.model)
    cpu = cpu_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "xray-2000.png"
        Image.open(EXAMPLE).convert("L").resize((2000, 2000), Image.BILINEAR).save(big)
        for label, path in (("256 x 256", EXAMPLE), ("2000 x 2000", big)):
            rows.append((label, *latency(predictor, path, a.repeats)))
    where = f"{cpu['model']}, {cpu['summary']}, {torch.get_num_threads()} threads"
    if a.markdown:
        print(f"`covidseg predict` latency for one X-ray file, {predictor.engine}, on {where}")
        print(f"(`python benchmarks/predict_latency.py`, median of {a.repeats}):\n")
        print("| X-ray | median | 90th percentile |\n|---|---:|---:|")
        for label, med, p90 in rows:
            print(f"| {label} | {med:.0f} ms | {p90:.0f} ms |")
        return
    print(f"model {predictor.name} ({predictor.engine}), CPU: {where}")
    for label, med, p90 in rows:
        print(f"{label:>12}: median {med:7.1f} ms, p90 {p90:7.1f} ms")


if __name__ == "__main__":
    main()
