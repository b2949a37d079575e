"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from covidseg.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA GPU is available; use --device cpu or auto")
    return device


# The x86 instructions that compute bf16 natively. oneDNN also runs bf16 on plain AVX-512
# (Skylake-SP to Ice Lake and Tiger Lake) and reports it as supported, but emulates it there:
# on a 2-core Ice Lake Xeon, FPN-MobileNetV2 trained at 13.3 images/s with bf16 autocast against
# 29.1 in fp32 with channels_last (benchmarks/train_speed.py). Other x86 CPUs that oneDNN may
# serve bf16 without these (AVX-NE-CONVERT alone, not measured) train in fp32 too.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU, natively or emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # a torch without oneDNN, or one whose private check changed
        return False


def _bf16_flags() -> set[str] | None:
    """Which of :data:`NATIVE_BF16_FLAGS` this x86 CPU has: from torch's cpuinfo (any OS), else
    Linux's ``/proc/cpuinfo``; None where neither tells."""
    try:
        caps = dict(torch.cpu.get_capabilities())
    except Exception:  # torch older than get_capabilities, or an unexpected answer
        caps = {}
    if any(f in caps for f in NATIVE_BF16_FLAGS):  # an older torch may not know them
        return {f for f in NATIVE_BF16_FLAGS if caps.get(f) is True}
    flags = _cpuinfo_flags(_read_cpuinfo())
    return flags & set(NATIVE_BF16_FLAGS) if flags else None


def _read_cpuinfo() -> str:
    """Linux's ``/proc/cpuinfo``; empty elsewhere."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpuinfo_field(text: str, name: str) -> str | None:
    """The first value of a ``/proc/cpuinfo`` field (the first CPU's)."""
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(name)), None)


def _cpuinfo_flags(text: str) -> set[str]:
    """The first CPU's feature flags in ``/proc/cpuinfo`` text (kernel names: avx512f, avx512_bf16)."""
    return set((_cpuinfo_field(text, "flags") or "").split())


def native_bf16(x86_flags: set[str]) -> bool:
    """Whether an x86 CPU with these feature flags computes bf16 natively: AVX512-BF16 or AMX-BF16."""
    return any(f in x86_flags for f in NATIVE_BF16_FLAGS)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively: on x86, :func:`native_bf16` of its flags (where
    nothing tells them, torch's AVX512-BF16 check; never oneDNN's answer, which counts the
    emulation on plain AVX-512); on another architecture (Arm), as oneDNN sees it."""
    if platform.machine().lower() not in X86_MACHINES:
        return onednn_bf16()
    flags = _bf16_flags()
    if flags is not None:
        return native_bf16(flags)
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())
    except Exception:
        return False


SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_info() -> dict[str, Any]:
    """The CPU's model, core count and the instruction sets that decide training speed (Linux
    ``/proc/cpuinfo``; elsewhere the model is ``platform.processor()`` and the flags are unknown)."""
    import os

    text = _read_cpuinfo()
    model = _cpuinfo_field(text, "model name")
    flags = _cpuinfo_flags(text)
    have = [f for f in SPEED_FLAGS if f in flags] if text else None
    info = {"model": model or platform.processor() or "unknown", "cores": os.cpu_count(), "flags": have}
    info["native_bf16"] = cpu_supports_bf16()
    info["summary"] = f"{info['cores']} cores, " + (
        " ".join(have) if have else "no AVX2" if have == [] else "flags unknown"
    )
    return info


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None means plain fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
    if amp == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        log.warning(
            "this CPU has no native bf16 instructions (AVX512-BF16 or AMX); "
            "training in fp32 instead (train.amp=bf16 ignored)"
        )
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
