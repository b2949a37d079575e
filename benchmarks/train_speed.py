"""Training throughput (images/s) of one model: plain fp32 against the optimised CPU/GPU path.

Runs both variants in the same process, on random inputs, with warm-up steps excluded:

    python benchmarks/train_speed.py --model unet --size 256 --batch 8 --steps 10
    python benchmarks/train_speed.py --model smp-unet --encoder resnet18 --size 128
    python benchmarks/train_speed.py --model smp-unet --encoder resnet18 --size 128 --levers

It first prints the CPU's model, cores and speed flags (avx2, avx512f, avx512_bf16, amx).
``--levers`` measures each CPU lever alone with bf16 off (channels_last, one thread, input size,
encoder, ``torch.compile`` with its compilation inside the warm-up), the case of a laptop without
AVX512-BF16.

The optimised path is channels_last plus bf16 autocast (CPU with native bf16, or CUDA), and
on CUDA also cudnn.benchmark. On a CPU with AVX-512 but no AVX512-BF16, where oneDNN emulates
bf16, the bf16 line is measured too and marked emulated (covidseg trains in fp32 there).
Target on a 2-core CPU with bf16: >= 3x the fp32 figure.
"""

from __future__ import annotations

import argparse
import time

import torch

from covidseg.config import Config, LossConfig, ModelConfig
from covidseg.engine.device import cpu_info, cpu_supports_bf16, onednn_bf16
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
    compiled: bool = False,
) -> float:
    torch.manual_seed(0)
    spec = model_spec(Config(model=ModelConfig(name=name, encoder_name=encoder)))
    model = create_model(spec).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compiled:  # the warm-up steps absorb the compilation
        model = torch.compile(model)
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


def levers(a: argparse.Namespace, device: torch.device) -> None:
    """Each CPU lever alone against the same fp32 baseline, bf16 off (an AVX2 laptop's case)."""
    base = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, False, False)
    print(f"{'fp32 baseline':<40} {base:7.2f} images/s")
    rows = [("channels_last", dict(channels_last=True))]
    rows += [(f"channels_last, {n} thread(s)", dict(channels_last=True, threads=n)) for n in (1,)]
    rows += [(f"channels_last, input {s}x{s}", dict(channels_last=True, size=s)) for s in (96, 160, 192)]
    rows += [(f"channels_last, encoder {e}", dict(channels_last=True, encoder=e)) for e in a.encoders.split(",")]
    rows += [("channels_last + torch.compile", dict(channels_last=True, compiled=True))]
    for label, opts in rows:
        threads = torch.get_num_threads()
        torch.set_num_threads(opts.get("threads", threads))
        try:
            ips = measure(
                a.model, opts.get("encoder", a.encoder), opts.get("size", a.size), a.batch, a.steps, a.warmup,
                device, opts["channels_last"], False, opts.get("compiled", False),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - torch.compile needs a C++ compiler; report and go on
            print(f"{label:<40} failed: {str(exc).splitlines()[0][:100]}")
            continue
        finally:
            torch.set_num_threads(threads)
        print(f"{label:<40} {ips:7.2f} images/s  ({ips / base:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--levers", action="store_true", help="bf16 off: each CPU lever alone against fp32")
    p.add_argument("--encoders", default="resnet18,mobilenet_v2,efficientnet-b0", help="for --levers")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['summary']}; native bf16 (avx512_bf16 or amx_bf16): {cpu['native_bf16']}")
    bf16 = device.type == "cuda" or cpu_supports_bf16()
    # oneDNN runs bf16 on plain AVX-512 too, emulated: measured so that the cost shows.
    emulated = not bf16 and device.type == "cpu" and onednn_bf16()
    label = f"{a.model}" + (f" ({a.encoder})" if a.model.startswith("smp-") else "")
    print(f"{label}, {a.size}x{a.size}, batch {a.batch}, {a.device}, {torch.get_num_threads()} threads")
    if a.levers:
        levers(a, device)
        return
    base = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, False, False)
    print(f"fp32                      {base:7.2f} images/s")
    cl = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, True, False)
    print(f"channels_last             {cl:7.2f} images/s  ({cl / base:.2f}x)")
    if bf16 or emulated:
        both = measure(a.model, a.encoder, a.size, a.batch, a.steps, a.warmup, device, True, True)
        note = "  emulated: covidseg trains in fp32 here" if emulated else ""
        print(f"channels_last + bf16      {both:7.2f} images/s  ({both / base:.2f}x){note}")


if __name__ == "__main__":
    main()
