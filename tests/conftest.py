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


@pytest.fixture(scope="session")
def real_root() -> Path:
    value = os.environ.get("COVIDSEG_DATA")
    if not value:
        pytest.skip("real-data test: set COVIDSEG_DATA to the COVID-QU-Ex folder (e.g. ../shared/data/covid-qu-ex)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"real-data test: COVIDSEG_DATA={value} is not a folder")
    return path
