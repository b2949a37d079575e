from __future__ import annotations

import math
from pathlib import Path

import pytest

from covidseg.config import Config, apply_overrides, build_config, from_dict, load_yaml, save_yaml
from covidseg.errors import ConfigError


def test_reference_preset_is_the_reference_system() -> None:
    cfg = build_config("reference")
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs) == (256, 8, 30)
    assert (cfg.optim.name, cfg.optim.lr, cfg.loss.name) == ("adam", 1e-4, "bce")
    assert (cfg.model.name, cfg.model.base_channels) == ("unet", 32)


def test_default_preset_depends_on_device() -> None:
    assert build_config(None, cuda_available=True).preset == "reference"
    assert build_config(None, cuda_available=False).data.image_size == 128


def test_overrides_are_typed_and_checked() -> None:
    cfg = apply_overrides(Config(), {"train.epochs": 3, "optim.lr": 1, "data.train_limit": None})
    assert cfg.train.epochs == 3 and isinstance(cfg.optim.lr, float)
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        apply_overrides(Config(), {"train.epoch": 3})
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        apply_overrides(Config(), {"train.epochs": "many"})
    with pytest.raises(ConfigError, match="must be >= 1"):
        apply_overrides(Config(), {"train.batch_size": 0})
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        build_config("fastest")


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = build_config("demo", overrides={"eval.empty_empty": math.nan, "data.root": "/x"})
    save_yaml(cfg, tmp_path / "c.yaml")
    back = from_dict(load_yaml(tmp_path / "c.yaml"))
    assert back.preset == "demo" and back.data == cfg.data and math.isnan(back.eval.empty_empty)
    (tmp_path / "part.yaml").write_text("train:\n  epochs: 4\n")
    assert build_config("reference", tmp_path / "part.yaml").train.epochs == 4
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config("reference", tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optim.lr", math.inf),
        ("optim.lr", math.nan),
        ("optim.weight_decay", math.nan),
        ("optim.warmup_epochs", math.nan),
        ("loss.tversky_alpha", math.nan),
        ("augment.strength", -math.inf),
        ("train.seed", 99999999999999),
        ("train.seed", -1),
    ],
)
def test_non_finite_and_out_of_range_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        build_config("reference", overrides={key: value})


def test_nan_stays_allowed_where_it_means_something() -> None:
    assert math.isnan(build_config("reference", overrides={"eval.empty_empty": math.nan}).eval.empty_empty)


def test_every_preset_says_what_it_is_for(capsys) -> None:
    from covidseg.cli import main
    from covidseg.presets import PRESET_HELP, PRESETS

    assert set(PRESET_HELP) == set(PRESETS)
    assert main(["presets", "--verbose"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"{name}: {PRESET_HELP[name]}" in out
    assert "train.time_budget=3600" in out  # the cpu preset keeps an hour on any CPU
