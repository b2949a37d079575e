"""Configuration: frozen dataclasses, presets and dotted overrides.

Sources are layered: defaults <- preset <- optional YAML file <- explicit CLI flags <- ``--set``
overrides (``train.epochs=2``). The resolved config is written to the run folder as
``config.yaml`` before training and stored in checkpoints as a plain dict.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from covidseg.atomic import write_atomic
from covidseg.errors import ConfigError
from covidseg.presets import PRESETS, auto_preset


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is preprocessed.

    ``image_size`` is the side S of the square network input: images are converted to gray,
    resized to SxS (bilinear) and scaled to [0, 1]; masks are resized with nearest neighbour and
    binarised at > 127. ``train_limit``/``val_limit`` cap the number of images per split, drawn
    stratified by group with the training seed, for quick runs (``None``: all).
    """

    root: str | None = None
    image_size: int = 256
    cache_dir: str | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 8:
            raise ConfigError(f"data.image_size must be a multiple of 8 and >= 16, got {self.image_size}")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1 or None, got {value}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


TARGETS = ("infection", "lung", "infection+lung", "infection+lung+covid")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build (see ``covidseg models``).

    ``base_channels`` is the first encoder width of the reference U-Net (32 in the reference;
    the widths double per level: 32/64/128, bottleneck 256). ``encoder_name`` and
    ``encoder_weights`` (``None`` or ``imagenet``) apply to the ``smp-*`` models.
    ``targets``: what the network segments, one output channel each: ``infection`` (the
    reference), ``lung``, or ``infection+lung`` (one network, two outputs; the lung output gives
    the infected share of the lung and can gate the infection mask); ``infection+lung+covid``
    adds an image-level COVID-19 head on the encoder (smp networks; its logit is the last output
    channel, trained on "the infection mask is not empty"), whose probability then decides the
    image gate instead of the peak pixel probability.
    """

    name: str = "unet"
    base_channels: int = 32
    encoder_name: str = "resnet34"
    encoder_weights: str | None = None
    targets: str = "infection"

    def __post_init__(self) -> None:
        if self.base_channels < 1:
            raise ConfigError(f"model.base_channels must be >= 1, got {self.base_channels}")
        if self.targets not in TARGETS:
            raise ConfigError(f"model.targets must be one of {list(TARGETS)}, got {self.targets!r}")

    @property
    def target_list(self) -> tuple[str, ...]:
        return tuple(self.targets.split("+"))


@dataclass(frozen=True)
class LossConfig:
    """Training loss (definitions and the empty-mask rule: :mod:`covidseg.losses`).

    ``name``: bce, dice, bce_dice, focal or tversky. ``dice_per_image``: Dice/Tversky per image
    and averaged (True) or over the whole batch (False). ``smooth``: the Dice smoothing term in
    pixels. ``bce_weight``: the BCE share of ``bce_dice``. ``dice_empty``: what the per-image
    Dice/Tversky term does with an image whose truth is empty: ``smooth`` (pushed to predict
    nothing through the smoothing term) or ``skip`` (left to BCE). ``image_weight``: the weight of
    the image-level COVID-19 head's BCE beside the segmentation loss (``model.targets`` ...+covid).
    """

    name: str = "bce"
    dice_per_image: bool = True
    smooth: float = 1.0
    bce_weight: float = 0.5
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    dice_empty: str = "smooth"
    image_weight: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.image_weight <= 10.0:
            raise ConfigError(f"loss.image_weight must lie in [0, 10], got {self.image_weight}")
        if self.dice_empty not in ("smooth", "skip"):
            raise ConfigError(f"loss.dice_empty must be 'smooth' or 'skip', got {self.dice_empty!r}")
        if self.name not in LOSSES:
            raise ConfigError(f"loss.name must be one of {list(LOSSES)}, got {self.name!r}")
        if not 0.0 <= self.bce_weight <= 1.0:
            raise ConfigError(f"loss.bce_weight must lie in [0, 1], got {self.bce_weight}")
        if self.smooth < 0:
            raise ConfigError(f"loss.smooth must be >= 0, got {self.smooth}")


LOSSES = ("bce", "dice", "bce_dice", "focal", "tversky")
OPTIMIZERS = ("adam", "adamw", "sgd")


AUGMENTS = ("none", "light", "xray")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (see :mod:`covidseg.transforms`): ``name`` none, light or xray;
    ``strength`` scales every magnitude; ``hflip`` allows horizontal flips."""

    name: str = "none"
    strength: float = 1.0
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.name not in AUGMENTS:
            raise ConfigError(f"augment.name must be one of {list(AUGMENTS)}, got {self.name!r}")
        if not 0.0 < self.strength <= 2.0:
            raise ConfigError(f"augment.strength must lie in (0, 2], got {self.strength}")


SCHEDULES = ("constant", "cosine", "onecycle")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule, stepped per batch.

    ``schedule``: ``constant`` (the reference), ``cosine`` (linear warm-up over
    ``warmup_epochs``, then cosine decay to ``lr * final_lr_ratio``) or ``onecycle``
    (PyTorch's OneCycleLR with ``max_lr = lr``; its warm-up share is ``warmup_epochs / epochs``,
    0.3 when ``warmup_epochs`` is 0). ``grad_clip``: clip the gradient norm to this value
    (0: off).
    """

    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    final_lr_ratio: float = 0.01
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_epochs < 0 or self.grad_clip < 0 or not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError("optim.warmup_epochs and optim.grad_clip must be >= 0, optim.final_lr_ratio in [0, 1]")
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


SELECT_METRICS = ("val_dice", "val_dice_per_image", "val_dice_per_image_covid", "val_iou", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``amp``: ``auto`` (mixed precision on CUDA, fp32 on CPU), ``off``, ``bf16`` or ``fp16``
    (CUDA only); ``bf16`` on a CPU without bf16 instructions falls back to fp32 with a warning.
    ``select_metric``: the validation number that picks ``checkpoints/best.pt`` (``val_loss``
    is minimised, the others maximised; ``val_dice_per_image_covid`` is the mean per-image Dice
    over the Val images of the COVID-19 group); ``select_smoothing`` in [0, 1) smooths it over epochs
    with an exponential moving average first (nnU-Net uses 0.9), so one lucky epoch does not
    win. ``early_stop_patience``: stop after this many epochs without a better smoothed value
    (0: never). ``channels_last``: NHWC memory format, faster for convolutions on recent CPUs
    and GPUs. ``time_budget``: seconds the run may take (``None``: no budget); the learning-rate
    schedule is laid over the steps that fit (:mod:`covidseg.engine.budget`) and ``epochs``
    becomes a cap. ``steps``: the schedule is laid over exactly this many optimiser steps
    instead (the last epoch may be partial), whatever the machine's speed or load: a recipe
    that must rebuild the same network (the built-in model's) names its steps, not a time.
    """

    epochs: int = 30
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    select_metric: str = "val_dice"
    select_smoothing: float = 0.0
    early_stop_patience: int = 0
    channels_last: bool = False
    deterministic: bool = False
    time_budget: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and not 1 <= self.steps <= 10**8:
            raise ConfigError(f"train.steps must be a number of steps in 1 to 10**8 or None, got {self.steps}")
        if self.steps is not None and self.time_budget is not None:
            raise ConfigError("train.steps and train.time_budget exclude each other; set one of them to None")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"train.time_budget must be a number of seconds > 0 or None, got {self.time_budget}")
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"train.seed must lie in 0 to 2**31 - 1, got {self.seed}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"train.amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(f"train.select_metric must be one of {list(SELECT_METRICS)}, got {self.select_metric!r}")
        if not 0.0 <= self.select_smoothing < 1.0:
            raise ConfigError(f"train.select_smoothing must lie in [0, 1), got {self.select_smoothing}")
        if self.early_stop_patience < 0:
            raise ConfigError(f"train.early_stop_patience must be >= 0, got {self.early_stop_patience}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation rules.

    ``threshold``: probability above which a pixel is infection. ``empty_empty``: the per-image
    Dice and IoU given to an image whose truth and prediction are both empty (1.0 counts it as
    perfect; ``nan`` leaves it out of per-image means). ``severity_extent`` and
    ``severity_grades``: the severity thresholds (see :mod:`covidseg.severity`), comma separated.
    """

    threshold: float = 0.5
    empty_empty: float = 1.0
    severity_extent: str = "25,50,75"
    severity_grades: str = "1,3,6"

    def __post_init__(self) -> None:
        from covidseg.severity import SeverityRule

        SeverityRule.from_text(self.severity_extent, self.severity_grades)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"eval.threshold must lie in (0, 1), got {self.threshold}")
        if not (math.isnan(self.empty_empty) or self.empty_empty in (0.0, 1.0)):
            raise ConfigError(f"eval.empty_empty must be 1.0, 0.0 or nan, got {self.empty_empty}")


@dataclass(frozen=True)
class Config:
    preset: str = "reference"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in _SECTIONS if name != "preset"}


def valid_keys() -> list[str]:
    keys = []
    for section, cls in _section_classes().items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


# The one key where nan means something (an image with empty truth and prediction is left out).
NON_FINITE_OK = ("eval.empty_empty",)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint, converting ints to floats where wanted."""
    args = typing.get_args(hint)
    allowed = set(args) if args else {hint}
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} cannot be None")
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)) and key not in NON_FINITE_OK:
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 2**31 - 1:
            raise ConfigError(f"{key} must be a whole number below 2**31, got {value!r}")
        return value
    if bool in allowed and isinstance(value, bool):
        return value
    if str in allowed and isinstance(value, str):
        return value
    names = " or ".join(sorted(getattr(t, "__name__", str(t)) for t in allowed))
    raise ConfigError(f"{key} must be {names}, got {value!r}")


def parse_value(text: str) -> Any:
    """Parse an override value: Python literals (``1e-4``, ``None``, ``True``), else a string."""
    if text.lower() in ("nan", "inf", "-inf"):
        return float(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return ``cfg`` with dotted keys (``train.epochs``) replaced; unknown keys raise ConfigError."""
    classes = _section_classes()
    sections = {name: dataclasses.asdict(getattr(cfg, name)) for name in classes}
    preset = cfg.preset
    for key, value in overrides.items():
        if key == "preset":
            preset = str(value)
            continue
        section, _, name = key.partition(".")
        if section not in classes or name not in sections[section]:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
        hint = typing.get_type_hints(classes[section])[name]
        sections[section][name] = _coerce(key, value, hint)
    return Config(preset=preset, **{name: classes[name](**vals) for name, vals in sections.items()})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def from_dict(d: dict[str, Any]) -> Config:
    """Build a Config from a (possibly partial) nested dict such as a saved ``config.yaml``."""
    if not isinstance(d, dict):
        raise ConfigError("a config must be a mapping of sections (data, model, train, ...)")
    return apply_overrides(Config(), flatten(d))


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    cuda_available: bool = False,
) -> Config:
    """Resolve a config: defaults <- preset <- YAML file <- overrides."""
    name = preset or auto_preset(cuda_available)
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = apply_overrides(Config(preset=name), PRESETS[name])
    if config_file is not None:
        cfg = apply_overrides(cfg, flatten(load_yaml(config_file)))
    return apply_overrides(cfg, overrides or {})


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, model, train, ...)")
    return data


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Write the config through a temporary file and a rename: never half a file."""
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
