"""Which precision a CPU trains in: bf16 only where the CPU computes it natively."""

from __future__ import annotations

import logging
import platform
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


def _x86(monkeypatch, caps: object, cpuinfo: str = "", avx512_bf16: bool = False, onednn: bool = True) -> None:
    """An x86 machine whose torch capabilities, /proc/cpuinfo, torch AVX512-BF16 check and oneDNN
    answer are given; ``caps`` an exception class makes torch's capabilities raise it."""

    def capabilities() -> object:
        if isinstance(caps, type) and issubclass(caps, Exception):
            raise caps("no capabilities here")
        return caps

    monkeypatch.setattr(device.platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(device.torch.cpu, "get_capabilities", capabilities)
    monkeypatch.setattr(device, "_read_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(device.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(device, "onednn_bf16", lambda: onednn)


def test_an_x86_cpu_is_judged_by_its_flags_never_by_onednn(monkeypatch) -> None:
    # oneDNN says yes (as it does on any AVX-512 CPU) in every case below.
    _x86(monkeypatch, {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False})
    assert device.cpu_supports_bf16() is False
    _x86(monkeypatch, {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True})
    assert device.cpu_supports_bf16() is True
    # torch without get_capabilities, or an odd answer: /proc/cpuinfo's kernel names
    for caps in (AttributeError, TypeError, None, {}, {"architecture": "x86_64", "avx512_f": True}):
        _x86(monkeypatch, caps, cpuinfo="model name\t: X\nflags\t\t: avx2 avx512f avx512bw\n")
        assert device.cpu_supports_bf16() is False
        _x86(monkeypatch, caps, cpuinfo="flags\t\t: avx2 avx512f avx512_bf16\n")
        assert device.cpu_supports_bf16() is True
    # nothing tells the flags: torch's own AVX512-BF16 check
    _x86(monkeypatch, AttributeError, cpuinfo="", avx512_bf16=False)
    assert device.cpu_supports_bf16() is False
    _x86(monkeypatch, AttributeError, cpuinfo="", avx512_bf16=True)
    assert device.cpu_supports_bf16() is True


@pytest.mark.parametrize("onednn", [True, False])
def test_another_architecture_is_judged_by_onednn(monkeypatch, onednn: bool) -> None:
    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(device, "onednn_bf16", lambda: onednn)
    assert device.cpu_supports_bf16() is onednn


def test_a_cpu_that_would_emulate_bf16_trains_in_fp32(monkeypatch, caplog) -> None:
    cpu = torch.device("cpu")
    _x86(monkeypatch, {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False})
    with caplog.at_level(logging.WARNING, logger=device.log.name):
        assert device.amp_dtype("bf16", cpu) is None
    assert "no native bf16" in caplog.text
    _x86(monkeypatch, {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True})
    assert device.amp_dtype("bf16", cpu) is torch.bfloat16
    assert device.amp_dtype("off", cpu) is None


def test_this_cpus_record_agrees_with_its_own_flags() -> None:
    if platform.machine().lower() not in device.X86_MACHINES:
        pytest.skip(f"not an x86 CPU ({platform.machine()})")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with on this system")
    lines = [ln for ln in text.splitlines() if ln.startswith("flags")]
    assert lines, "an x86 Linux /proc/cpuinfo without a flags line"
    flags = set(lines[0].split(":", 1)[1].split())
    info = device.cpu_info()
    assert info["native_bf16"] is ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert info["flags"] == [f for f in device.SPEED_FLAGS if f in flags]
