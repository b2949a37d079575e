"""Training throughput (images/s) of one model: plain fp32 against the optimised CPU/GPU path.

Runs both variants in the same process, on random inputs, with warm-up steps excluded:

    python benchmarks/train_speed.py --model unet --size 256 --batch 8 --steps 10
    python benchmarks/train_speed.py --model smp-unet --encoder resnet18 --size 128

The optimised path is channels_last plus bf16 autocast (CPU with native bf16, or CUDA), and
on CUDA also cudnn.benchmark. Target on a 2-core CPU with bf16: >= 3x the fp32 figure.
"""

from __future__ import annotations

import argparse
import time

import torch

from covidseg.config import Config, LossConfig, ModelConfig
from covidseg.engine.device import cpu_supports_bf16
from covidseg.losses import build_loss
from covidseg.models import create_model, model_spec


def measure(
    name: str,
    encoder: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    channels_last: bool,
    bf16: bool,
) -> float:
    torch.manual_seed(0)
    spec = model_spec(Config(model=ModelConfig(name=name, encoder_name=encoder)))
    model = create_model(spec).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = build_loss(LossConfig(name="bce"))
    x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.8).float()
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else torch.enable_grad
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx():
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bf16 = device.type == "cuda" or cpu_supports_bf16()
    label = f"{a.model}" + (f" ({a.encoder})" if a.model.startswith("smp-") else "")
    print(f"{label}, {a.size}x{a.size}, batch {a.batch}, {a.device}, {torch.get_num_threads()} threads")
    print(f"native bf16: {bf16}")
    base = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, False, False)
    print(f"fp32                      {base:7.2f} images/s")
    cl = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, True, False)
    print(f"channels_last             {cl:7.2f} images/s  ({cl / base:.2f}x)")
    if bf16:
        both = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, True, True)
        print(f"channels_last + bf16      {both:7.2f} images/s  ({both / base:.2f}x)")


if __name__ == "__main__":
    main()
