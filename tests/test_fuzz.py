"""``benchmarks/fuzz.py`` as a test: a few hundred generated bad inputs and faults through the
command line end in a result or one clear line, never a traceback, never a silently accepted
invalid value, never a lost file; no untrusted pickle runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parents[1] / "benchmarks" / "fuzz.py"


@pytest.mark.slow
def test_fuzz_cases_all_end_as_they_should(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("covidseg_fuzz", FUZZ)
    fuzz = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fuzz)  # dataclasses look their module up there
    spec.loader.exec_module(fuzz)
    monkeypatch.setenv("COVIDSEG_CACHE_DIR", str(tmp_path / "cache"))
    data, run = fuzz.tiny_run(tmp_path)
    cases = (
        fuzz.image_cases(tmp_path) + fuzz.set_cases(tmp_path, data) + fuzz.flag_cases(tmp_path, data, run)
        + fuzz.bundle_cases(tmp_path) + fuzz.run_folder_cases(tmp_path, run) + fuzz.sweep_cases(tmp_path, data)
        + fuzz.data_loss_cases(tmp_path, data, run)
    )  # fmt: skip
    assert len(cases) >= 300
    bad = [o for o in map(fuzz.run_case, cases) if o.verdict != "ok"]
    assert not bad, [(o.verdict, o.case.family, o.case.name, o.message) for o in bad]
    assert not (tmp_path / "pickle-ran").exists()
