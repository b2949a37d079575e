from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from covidseg.config import build_config
from covidseg.data.synthetic import SynthSpec, write_synthetic

_PRISTINE_LOGGER = (list(logging.getLogger("covidseg").handlers), logging.getLogger("covidseg").propagate)


@pytest.fixture(autouse=True)
def _restore_covidseg_logger():
    """``main()`` gives the covidseg logger its own handlers and stops propagation; undo that after
    each test (fixtures of wider scope included), so that ``caplog`` sees the records whatever
    the test order."""
    yield
    log = logging.getLogger("covidseg")
    for h in list(log.handlers):
        log.removeHandler(h)
        if h not in _PRISTINE_LOGGER[0]:
            h.close()
    for h in _PRISTINE_LOGGER[0]:
        log.addHandler(h)
    log.propagate = _PRISTINE_LOGGER[1]
    log.setLevel(logging.NOTSET)


TINY = {
    "data.image_size": 64,
    "model.base_channels": 8,
    "train.epochs": 2,
    "train.batch_size": 4,
    "optim.lr": 1e-3,
    "train.device": "cpu",
}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set in the COVID-QU-Ex layout (the dataset root, above 'Infection Segmentation Data')."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, SynthSpec(train=16, val=8, test=8, min_side=96, max_side=160, seed=1))
    return root


@pytest.fixture
def tiny_cfg(synth_root: Path, tmp_path: Path):
    def make(**overrides):
        return build_config(
            "reference",
            overrides={"data.root": str(synth_root), "data.cache_dir": str(tmp_path / "cache"), **TINY, **overrides},
        )

    return make


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write into the user's cache (~/.cache/covidseg): they get a folder of their own."""
    before = os.environ.get("COVIDSEG_CACHE_DIR")
    os.environ["COVIDSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("covidseg-cache"))
    yield
    if before is None:
        os.environ.pop("COVIDSEG_CACHE_DIR", None)
    else:
        os.environ["COVIDSEG_CACHE_DIR"] = before


REAL_DATA_HINT = (
    "set COVIDSEG_DATA to a COVID-QU-Ex folder (the public data set: https://doi.org/10.34740/kaggle/dsv/3122958; "
    "its 'Infection Segmentation Data' with Train and Val is enough)"
)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real COVID-QU-Ex copy; tests that need it skip without it, except in CI, where it must exist."""
    value = os.environ.get("COVIDSEG_DATA")
    path = Path(value) if value else None
    if path is not None and path.is_dir():
        return path
    reason = f"COVIDSEG_DATA={value} is not a folder" if value else "COVIDSEG_DATA is not set"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"real-data test in CI: {reason}; .ci/run sets it to ../shared/data/covid-qu-ex when present")
    pytest.skip(f"real-data test: {reason}; {REAL_DATA_HINT}")


@pytest.fixture(scope="session")
def two_output_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained infection + lung run on the synthetic set (64x64 input; the synthetic
    X-rays are 96-160 pixels a side, so native scoring differs from the input grid). Tests that
    change it work on a copy (:func:`copy_run`)."""
    tmp = tmp_path_factory.mktemp("two-output")
    cfg = build_config(
        "reference",
        overrides={
            **TINY,
            # A small BatchNorm network finds the lungs in a few epochs; the reference U-Net does not.
            "model.name": "smp-unet",
            "model.encoder_name": "resnet18",
            "loss.name": "bce_dice",
            "optim.lr": 3e-3,
            "train.epochs": 4,
            "data.root": str(synth_root),
            "data.cache_dir": str(tmp / "cache"),
            "model.targets": "infection+lung",
        },
    )
    from covidseg.engine.fit import fit

    fit(cfg, tmp / "run")
    return tmp / "run"


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder to change (tune, evaluate) without touching the shared one."""
    import shutil

    shutil.copytree(run, dest)
    return dest


def interrupt_training(monkeypatch: pytest.MonkeyPatch, in_epoch: int = 2) -> None:
    """Make the next training raise KeyboardInterrupt (Ctrl-C) in epoch ``in_epoch``, once."""
    import covidseg.engine.fit as fit_module

    real, calls = fit_module.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == in_epoch:
            monkeypatch.setattr(fit_module, "train_one_epoch", real)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", interrupted)


NEEDS_PROC = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the files synced")


def record_disk_writes(monkeypatch) -> list[tuple[str, ...]]:
    """Every fsync (by the path it synced) and every rename, in order, while the test runs."""
    events: list[tuple[str, ...]] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(src, dst) -> None:
        replace(src, dst)
        events.append(("replace", str(Path(src).resolve()), str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    return events


def assert_synced_before_named(files: list[Path], events: list[tuple[str, ...]]) -> None:
    """Each file was last named by a rename of a file whose data were synced before it, and its
    folder was synced after it: a power cut leaves it old or new, never empty."""
    for f in files:
        named = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(f)]
        assert named, f"{f.name} was written in place"
        i = named[-1]
        assert ("fsync", events[i][1]) in events[:i], f"{f.name} was named before its data were synced"
        assert ("fsync", str(f.parent)) in events[i + 1 :], f"{f.name}'s folder was not synced after it was named"
