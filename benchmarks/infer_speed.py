"""CPU inference speed: PyTorch eager against onnxruntime, same model, same process.

    python benchmarks/infer_speed.py                      # the cpu preset's network, 256x256
    python benchmarks/infer_speed.py --run runs/cpu-lung  # a trained run (exported on the fly)
    python benchmarks/infer_speed.py --bundle bundle/     # an exported bundle

Prints batch-1 latency (median and 90th percentile, ms) and batch throughput (images/s) for
PyTorch eager fp32 (``torch.no_grad``) and for onnxruntime (all graph optimisations) on the
same weights and inputs, the largest difference of their outputs, and the speed-up.
Target: onnxruntime >= 1.5x eager.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from covidseg.config import build_config
from covidseg.export import export_onnx
from covidseg.inference.backends import onnx_backend
from covidseg.models import create_model, model_spec


def timings(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(x)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", help="a trained run folder (its best checkpoint)")
    src.add_argument("--bundle", help="an exported bundle")
    p.add_argument("--preset", default="cpu", help="without --run/--bundle: this preset's network, random weights")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    if a.bundle:
        cfg_json = json.loads((Path(a.bundle) / "config.json").read_text())
        from safetensors.torch import load_file

        model = create_model(cfg_json["model_spec"])
        model.load_state_dict(load_file(str(Path(a.bundle) / "model.safetensors")))
        label = f"bundle {a.bundle}"
    elif a.run:
        from covidseg.engine.checkpoint import load_run

        model, _, _ = load_run(a.run)
        label = f"run {a.run}"
    else:
        torch.manual_seed(0)
        model = create_model(model_spec(build_config(a.preset)))
        label = f"preset {a.preset} network (random weights)"
    model = model.float().eval()

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, a.size, onnx_path)
        ort_run = onnx_backend(onnx_path, threads=a.threads)

        @torch.no_grad()
        def eager(x: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(x)).numpy()

        rng = np.random.default_rng(0)
        one = rng.random((1, 1, a.size, a.size), dtype=np.float32)
        batch = rng.random((a.batch, 1, a.size, a.size), dtype=np.float32)
        diff = float(np.abs(eager(batch) - ort_run(batch)).max())
        import onnxruntime

        print(f"{label}: {a.size}x{a.size}, {a.threads} threads, torch {torch.__version__}, "
              f"onnxruntime {onnxruntime.__version__}")  # fmt: skip
        print(f"max |eager - onnxruntime| logit difference: {diff:.2e}")
        print(f"{'engine':<14} {'latency b=1 median':>19} {'p90':>8} {f'throughput b={a.batch}':>18}")
        results = {}
        for name, fn in (("torch eager", eager), ("onnxruntime", ort_run)):
            lat = timings(fn, one, a.repeats, a.warmup)
            thr = timings(fn, batch, max(3, a.repeats // 4), 1)
            med = statistics.median(lat) * 1000
            p90 = sorted(lat)[int(0.9 * (len(lat) - 1))] * 1000
            ips = a.batch / statistics.median(thr)
            results[name] = (med, ips)
            print(f"{name:<14} {med:16.1f} ms {p90:6.1f} ms {ips:13.1f} img/s")
        (e_med, e_ips), (o_med, o_ips) = results["torch eager"], results["onnxruntime"]
        print(f"onnxruntime speed-up: latency {e_med / o_med:.2f}x, throughput {o_ips / e_ips:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
