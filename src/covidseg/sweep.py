"""Settings sweeps: ``covidseg sweep SPEC.yaml --data ROOT --out SWEEP_DIR``.

A spec (YAML) names a preset, optional overrides for every trial (``base``), a ``grid`` (every
combination of the listed values, in the order given) and/or a list of ``trials`` (each a set
of overrides), the metric to sort by, and optional named ``scales``::

    name: reference-study
    preset: reference
    base: {}
    grid:
      data.image_size: [192, 256]
      optim.lr: [1.0e-3, 1.0e-4]
    trials: []
    sort_by: per_image_dice
    scales:
      cpu: {epochs_factor: 0.1, image_factor: 0.5, train_limit: 400, val_limit: 200, set: {train.amp: bf16}}

A scale (``--scale cpu``) shrinks every trial the same way: epochs times ``epochs_factor``
(at least 1), image size times ``image_factor`` (a multiple of 8), at most ``train_limit`` /
``val_limit`` images (group-stratified), plus the overrides in ``set``. Every trial folder keeps
its nominal settings, the scale and the settings it really ran with (``trial.json``), and the
leaderboard has a ``scale`` column and the actual epochs and size, so no scaled number passes
for a full one.

Each trial is an ordinary run folder under ``SWEEP_DIR/trials/``, evaluated on Val after
training. Running the same command again skips finished trials and resumes an interrupted one
from its ``last.pt``. Outputs: ``SWEEP_DIR/sweep.json`` (the plan), ``leaderboard.csv`` and
``leaderboard.md`` (one row per trial, sorted by ``sort_by``), and ``plots/`` (metric against
each varied setting, training curves of all trials overlaid).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from covidseg.atomic import write_atomic
from covidseg.config import Config, build_config, flatten, load_yaml, valid_keys
from covidseg.errors import ConfigError, CovidsegError
from covidseg.leaderboard import METRICS, leaderboard_rows, write_leaderboard
from covidseg.presets import PRESETS
from covidseg.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scale:
    name: str
    epochs_factor: float = 1.0
    image_factor: float = 1.0
    train_limit: int | None = None
    val_limit: int | None = None
    set: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def apply(self, overrides: dict[str, Any], cfg: Config) -> dict[str, Any]:
        """The overrides a trial really runs with, given its nominal ones and resolved config."""
        out = dict(overrides)
        out["train.epochs"] = max(1, round(cfg.train.epochs * self.epochs_factor))
        out["data.image_size"] = max(16, int(round(cfg.data.image_size * self.image_factor / 8)) * 8)
        for key, limit in (("data.train_limit", self.train_limit), ("data.val_limit", self.val_limit)):
            current = getattr(cfg.data, key.split(".")[1])
            if limit is not None:
                out[key] = limit if current is None else min(current, limit)
        out.update(self.set)
        return out

    def check(self, where: str) -> None:
        """Factors are numbers in (0, 1]; limits whole numbers of at least 1."""
        for key in ("epochs_factor", "image_factor"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigError(f"{where}: {key} must be a number in (0, 1], got {v!r}")
        for key in ("train_limit", "val_limit"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{where}: {key} must be a whole number of at least 1, got {v!r}")

    def describe(self) -> str:
        parts = [f"epochs x{self.epochs_factor:g}", f"image size x{self.image_factor:g}"]
        if self.train_limit:
            parts.append(f"<= {self.train_limit} train images")
        if self.val_limit:
            parts.append(f"<= {self.val_limit} val images")
        parts += [f"{k}={v}" for k, v in self.set.items()]
        return f"{self.name}: " + ", ".join(parts)


@dataclass
class SweepSpec:
    name: str
    preset: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    trials: list[dict[str, Any]]
    sort_by: str
    scales: dict[str, Scale]
    description: str = ""

    @property
    def varied(self) -> list[str]:
        keys = list(self.grid)
        for t in self.trials:
            keys += [k for k in t if k not in keys]
        return keys


def shipped_specs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("covidseg.sweeps").iterdir() if p.name.endswith(".yaml"))


def resolve_spec_path(spec: str | Path) -> Path:
    """A spec file, or the name of one shipped with covidseg (``covidseg sweep --list``)."""
    p = Path(spec)
    if p.is_file():
        return p
    shipped = resources.files("covidseg.sweeps") / f"{spec}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"sweep spec {spec} not found; give a YAML file or one of: {', '.join(shipped_specs())}")


def _check_keys(keys: list[str], where: str) -> None:
    known = set(valid_keys())
    for k in keys:
        if k not in known:
            raise ConfigError(f"{where}: unknown config key {k!r}")


def load_spec(spec: str | Path) -> SweepSpec:
    path = resolve_spec_path(spec)
    d = load_yaml(path)
    unknown = set(d) - {"name", "description", "preset", "base", "grid", "trials", "sort_by", "scales"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep field(s) {sorted(unknown)}")
    preset = d.get("preset", "reference")
    if preset not in PRESETS:
        raise ConfigError(f"{path}: unknown preset {preset!r}")
    base = flatten(_mapping(d.get("base") or {}, f"{path}: base"))
    grid = d.get("grid") or {}
    raw_trials = d.get("trials") or []
    if not isinstance(raw_trials, list):
        raise ConfigError(f"{path}: trials must be a list of mappings (config key: value)")
    trials = [flatten(_mapping(t, f"{path}: trial {i}")) for i, t in enumerate(raw_trials, 1)]
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: grid must map config keys to non-empty lists of values")
    if not grid and not trials:
        raise ConfigError(f"{path}: a sweep needs a grid or a list of trials")
    _check_keys(list(base) + list(grid) + [k for t in trials for k in t], str(path))
    sort_by = d.get("sort_by", "per_image_dice")
    if sort_by not in METRICS:
        raise ConfigError(f"{path}: sort_by must be one of {list(METRICS)}, got {sort_by!r}")
    scales = {}
    for name, s in _mapping(d.get("scales") or {}, f"{path}: scales").items():
        s = dict(_mapping(s or {}, f"{path}: scale {name}"))
        s["set"] = flatten(_mapping(s.get("set") or {}, f"{path}: scale {name}: set"))
        _check_keys(list(s["set"]), f"{path}: scale {name}")
        try:
            scales[name] = Scale(name=str(name), **s)
        except TypeError as exc:
            raise ConfigError(f"{path}: scale {name}: {exc}") from None
        scales[name].check(f"{path}: scale {name}")
    return SweepSpec(d.get("name", path.stem), preset, base, grid, trials, sort_by, scales, d.get("description", ""))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping (key: value), got {type(value).__name__}")
    return value


def _short(key: str, value: Any) -> str:
    name = key.split(".")[-1]
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", f"{name}{text}")


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trials of a spec: ``[{"name": ..., "settings": {varied key: value}}]`` in run order."""
    combos: list[dict[str, Any]] = []
    if spec.grid:
        keys = list(spec.grid)
        combos += [dict(zip(keys, values)) for values in itertools.product(*spec.grid.values())]
    combos += [dict(t) for t in spec.trials]
    width = len(str(len(combos)))
    return [
        {"name": f"{i:0{width}d}-" + "-".join(_short(k, v) for k, v in c.items()), "settings": c}
        for i, c in enumerate(combos, 1)
    ]


def trial_config(
    spec: SweepSpec, settings: dict[str, Any], data_root: str, scale: Scale | None, **extra: Any
) -> Config:
    overrides = {**spec.base, **settings, "data.root": data_root, **extra}
    cfg = build_config(spec.preset, overrides=overrides)
    if scale is not None:
        cfg = build_config(spec.preset, overrides=scale.apply(overrides, cfg))
    return cfg


def _check_models(configs: list[Config]) -> None:
    from covidseg.models import list_models

    for cfg in configs:
        if cfg.model.name not in list_models():
            raise ConfigError(f"unknown model {cfg.model.name!r}; available: {', '.join(list_models())}")


def _finished(run_dir: Path, epochs: int) -> bool:
    from covidseg.engine.run_folder import read_history

    hist = run_dir / "history.csv"
    if not hist.is_file() or not (run_dir / "checkpoints" / "best.pt").is_file():
        return False
    rows = read_history(hist)
    return bool(rows) and (int(rows[-1]["epoch"]) >= epochs or _early_stopped(run_dir))


def _early_stopped(run_dir: Path) -> bool:
    info = run_dir / "trial.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "done"


def run_sweep(
    spec_path: str | Path,
    data_root: str,
    out_dir: str | Path,
    scale: str | None = None,
    sort_by: str | None = None,
    cache_dir: str | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) every trial, then write the leaderboard and plots; returns its rows."""
    from covidseg.data.loading import discover_root

    spec = load_spec(spec_path)
    synthetic = discover_root(data_root).synthetic  # a missing or wrong data folder fails here, not in every trial
    if scale is not None and scale not in spec.scales:
        raise ConfigError(f"scale {scale!r} is not in the spec; it has: {', '.join(spec.scales) or 'none'}")
    sc = spec.scales.get(scale) if scale else None
    out = Path(out_dir)
    trials = expand(spec)
    sort_by = sort_by or spec.sort_by
    _write_plan(out, spec, spec_path, sc, trials, sort_by)
    if sort_by not in METRICS:
        raise ConfigError(f"sort_by must be one of {list(METRICS)}, got {sort_by!r}")
    extra: dict[str, Any] = {}
    if cache_dir:
        extra["data.cache_dir"] = cache_dir
    if device:
        extra["train.device"] = device
    # Resolve every trial first, so a bad value fails before hours of training.
    configs = [trial_config(spec, t["settings"], data_root, sc, **extra) for t in trials]
    _check_models(configs)
    for k, (t, cfg) in enumerate(zip(trials, configs), 1):
        _run_trial(out / "trials" / t["name"], t, cfg, sc, f"{k}/{len(trials)}", progress)
    rows = leaderboard_rows(out)
    write_leaderboard(rows, out, sort_by, spec, sc)
    _plot_sweep(out, rows, spec, sc, sort_by, synthetic)
    return rows


def _write_plan(out: Path, spec: SweepSpec, spec_path: str | Path, sc: Scale | None, trials: list[dict], sort_by: str):
    """``sweep.json``; a folder that holds another sweep (other trials or scale) is refused."""
    plan = {
        "spec": spec.name,
        "spec_file": str(resolve_spec_path(spec_path)),
        "preset": spec.preset,
        "base": spec.base,
        "varied": spec.varied,
        "scale": None if sc is None else {"name": sc.name, "rule": sc.describe()},
        "trials": [t["name"] for t in trials],
        "sort_by": sort_by,
    }
    sweep_file = out / "sweep.json"
    if sweep_file.is_file():
        old = json.loads(sweep_file.read_text())
        if old.get("trials") != plan["trials"] or old.get("scale") != plan["scale"]:
            raise CovidsegError(
                f"{out} holds a different sweep ({old.get('spec')}, scale {old.get('scale')}); choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep_file, json.dumps(plan, indent=2))


def _run_trial(run_dir: Path, t: dict, cfg: Config, sc: Scale | None, which: str, progress: Progress | None) -> None:
    """Train (or resume) and evaluate one trial; a finished one is skipped, a failed one recorded."""
    from covidseg.engine.fit import fit
    from covidseg.evaluation import evaluate_run

    info_path = run_dir / "trial.json"
    info = {
        "trial": t["name"],
        "settings": t["settings"],
        "scale": None if sc is None else sc.describe(),
        "actual": {
            "train.epochs": cfg.train.epochs,
            "data.image_size": cfg.data.image_size,
            "data.train_limit": cfg.data.train_limit,
            "data.val_limit": cfg.data.val_limit,
        },
    }
    trained = _finished(run_dir, cfg.train.epochs)
    if trained and (run_dir / "eval" / "Val" / "summary.json").is_file():
        log.info("trial %s %s: finished, skipped", which, t["name"])
        return
    log.info("trial %s %s: %s", which, t["name"], t["settings"])
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        if not trained:
            fit(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.pt").is_file(), progress=progress)
        info["status"] = "done"
        write_atomic(info_path, json.dumps(info, indent=2))
        evaluate_run(run_dir, split="Val", panel=4, progress=progress)
    except (CovidsegError, FloatingPointError, RuntimeError) as exc:
        info["status"] = f"failed: {str(exc)[:300]}"
        write_atomic(info_path, json.dumps(info, indent=2))
        log.warning("trial %s failed: %s", t["name"], exc)
        return
    log.info("trial %s done in %.0f s", t["name"], time.perf_counter() - t0)


def _plot_sweep(out: Path, rows: list[dict], spec: SweepSpec, sc: Scale | None, sort_by: str, synthetic: bool) -> None:
    """The metric against each varied setting, and every trial's curves."""
    from covidseg.engine.run_folder import read_history
    from covidseg.figures import plot_sweep_curves, plot_sweep_metric

    for key in spec.varied:
        note = f"nominal settings, scaled down ({sc.describe()})" if sc is not None else ""
        note = f"SYNTHETIC data (covidseg synth), not X-rays. {note}" if synthetic else note
        plot_sweep_metric(rows, key, sort_by, out / "plots" / f"{sort_by}_vs_{key.replace('.', '_')}.png", note)
    trials = sorted(p for p in (out / "trials").glob("*") if (p / "history.csv").is_file())
    histories = {p.name: read_history(p / "history.csv") for p in trials}
    plot_sweep_curves(histories, out / "plots" / "curves_all_trials.png")
