"""Which precision a CPU trains in: bf16 only where the CPU computes it natively."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from covidseg.engine import device

# Feature flags as /proc/cpuinfo names them, trimmed to what decides bf16.
ICE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # AVX-512, bf16 only emulated by oneDNN
ZEN4 = ICE_LAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16"}
AVX2_LAPTOP = {"avx2", "fma"}


@pytest.mark.parametrize(
    ("flags", "native"), [(ICE_LAKE, False), (AVX2_LAPTOP, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True)]
)
def test_bf16_is_native_only_with_avx512_bf16_or_amx(flags: set[str], native: bool) -> None:
    assert device.native_bf16(flags) is native


def test_a_cpu_that_would_emulate_bf16_trains_in_fp32(monkeypatch, caplog) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "_x86_flags", lambda: ICE_LAKE)
    with caplog.at_level(logging.WARNING, logger=device.log.name):
        assert device.amp_dtype("bf16", cpu) is None
    assert "no native bf16" in caplog.text
    monkeypatch.setattr(device, "_x86_flags", lambda: ZEN4)
    assert device.amp_dtype("bf16", cpu) is torch.bfloat16
    assert device.amp_dtype("off", cpu) is None


def test_this_cpus_record_agrees_with_its_own_flags() -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with on this system")
    lines = [ln for ln in text.splitlines() if ln.startswith("flags")]
    if not lines or device._x86_flags() is None:
        pytest.skip("not an x86 CPU with flags in /proc/cpuinfo")
    flags = set(lines[0].split(":", 1)[1].split())
    info = device.cpu_info()
    assert info["native_bf16"] is ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert info["flags"] == [f for f in device.SPEED_FLAGS if f in flags]
