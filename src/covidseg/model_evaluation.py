"""``evaluate_model``: score a built-in model or a bundle on labelled X-rays, no run folder needed.

What ``covidseg evaluate --model NAME --data D`` runs: the masks ``predict`` gives with that model
(its own post-processing, at each X-ray's own size) scored against the data folder's mask files
under every definition of :mod:`covidseg.metrics`, as :func:`covidseg.evaluation.evaluate_run`
scores a run. The figures a user can expect from the model on their own labelled X-rays, or on
COVID-QU-Ex's held-out Test split. Writes ``OUT/summary.json``, ``OUT/per_image.csv`` and the
panel ``OUT/predictions.png``; an ``OUT`` that holds anything else is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from covidseg.atomic import remove_leftovers, write_atomic
from covidseg.config import Config, apply_overrides
from covidseg.data.loading import discover_root
from covidseg.errors import ConfigError
from covidseg.evaluation import (
    OpenSplit,
    check_arguments,
    draw_panel,
    eval_name,
    open_split,
    score_and_summarize,
    write_rows,
)
from covidseg.inference.builtin import is_run_folder, pretrained_root, resolve_model
from covidseg.inference.bundle import is_bundle, weights_file
from covidseg.inference.predictor import Predictor
from covidseg.locking import folder_lock, new_folders, remove_if_only_lock
from covidseg.metrics import json_safe
from covidseg.progress import Progress

log = logging.getLogger(__name__)

FILES = ("summary.json", "per_image.csv", "predictions.png")


def model_record(path: Path, weights_sha256: str | None) -> dict[str, Any]:
    """Which model was scored: its name, folder, whether it is built in, and its network's hash
    (``weights_sha256``, as :meth:`Predictor.load` found it)."""
    builtin = path.parent.resolve() == pretrained_root().resolve()
    record: dict[str, Any] = {"name": path.name, "path": str(path), "builtin": builtin}
    weights = weights_file(path)
    if weights is not None:
        record["file"], record["sha256"] = weights.name, weights_sha256
    if builtin:
        record["tuned_on"] = "COVID-QU-Ex Val (post-processing and calibration; its model card)"
    return record


def identity(summary: dict[str, Any]) -> dict[str, Any]:
    """What makes two evaluations the same kind: the model file, the data folder (resolved), the
    split and subset, where it is scored, the post-processing applied and the severity rule."""
    model = summary.get("model") if isinstance(summary.get("model"), dict) else {}
    keys = ("data_root", "split", "limit", "scored_at", "postprocess", "severity_rule")
    return {"model_sha256": model.get("sha256"), **{k: summary.get(k) for k in keys}}


def check_out(out: Path, mine: dict[str, Any]) -> None:
    """Refuse an ``out`` folder that holds anything but an earlier evaluation of the same kind
    (:func:`identity` equal to ``mine``), the one thing replaced; hidden files (its lock, the
    leftovers of a killed write) do not count."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder")
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # lock, leftovers, .DS_Store
    if not held:
        return
    others = [name for name in held if name not in FILES or not (out / name).is_file()]
    if others:
        raise ConfigError(f"--out {out} holds other files ({', '.join(others[:3])}); choose another folder")
    try:
        old = json.loads((out / "summary.json").read_text())
    except (ValueError, OSError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict) or identity(old) != json.loads(json.dumps(mine)):
        raise ConfigError(
            f"--out {out} holds another evaluation (of another model, data folder or settings), or files of "
            "none; choose another folder"
        )


def _not_a_bundle(path: Path) -> str:
    if is_run_folder(path):
        return f"{path} is a run folder: score it with 'covidseg evaluate {path}'"
    return f"{path} is not a bundle from 'covidseg export' (no readable config.json of one)"


def bundle_config(predictor: Predictor) -> Config:
    """The settings scoring needs, from the model itself: its input size and outputs."""
    return apply_overrides(
        Config(), {"data.image_size": predictor.image_size, "model.targets": "+".join(predictor.targets)}
    )


def evaluate_model(
    model: str | Path | None,
    data_root: str | Path,
    split: str = "Val",
    out: str | Path | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    panel: int = 6,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    postprocess: bool = True,
    scored_at: str = "native",
) -> dict[str, Any]:
    """Score ``model`` (a built-in model's name, ``None`` for the default one, or a bundle folder
    from ``covidseg export``) on ``split`` of ``data_root`` and write the results to ``out``
    (default ``covidseg-eval/<model>/<split>-data-<folder>[-...]``, one folder per kind of
    evaluation: :func:`covidseg.evaluation.eval_name`). Arguments as
    :func:`covidseg.evaluation.evaluate_run`; scored with the definitions' defaults (an X-ray
    with empty truth and empty mask scores 1), as a bundle does not record a run's settings.

    Returns:
        The summary dict, as written to ``OUT/summary.json``; ``summary["out"]`` is ``OUT``.
    """
    check_arguments(split, batch_size, panel, scored_at)
    path = resolve_model(model).resolve()
    if not is_bundle(path):
        raise ConfigError(_not_a_bundle(path))
    predictor = Predictor.load(path, threshold=threshold, postprocess=postprocess)
    found = discover_root(str(data_root))
    kind = {"threshold": threshold, "postprocess": postprocess, "limit": limit, "scored_at": scored_at}
    name = eval_name(split, other_data=data_root, **kind)
    out = Path(out) if out is not None else Path("covidseg-eval") / path.name / name
    head = {"eval_name": name, "data_root": str(found.root.resolve()), "split": split, "limit": limit}
    post = json_safe(predictor.post.as_dict())
    head.update(scored_at=scored_at, postprocess=post, model=model_record(path, predictor.sha256))
    head["severity_rule"] = predictor.severity.as_dict()
    check_out(out, identity(head))
    new = new_folders(out)
    try:
        with folder_lock(out, "evaluate"):  # made here: an --out that cannot be written fails before the scoring
            check_out(out, identity(head))
            remove_leftovers(out)
            cfg = bundle_config(predictor)
            r = open_split(cfg, split, None, limit, cache_dir, progress, found)
            summary = _score_into(out, predictor, cfg, r, head, batch_size, panel, progress)
    except BaseException:
        remove_if_only_lock(new, "evaluate")  # a command that wrote nothing leaves no folders behind
        raise
    log.info("wrote %s and %s", out / "summary.json", out / "per_image.csv")
    return summary


def _score_into(
    out: Path,
    predictor: Predictor,
    cfg: Config,
    r: OpenSplit,
    head: dict[str, Any],
    batch_size: int,
    panel: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Score the split and write ``summary.json``, ``per_image.csv`` and the panel into ``out``."""
    e = score_and_summarize(predictor, cfg, r, head["split"], head["scored_at"], batch_size, progress)
    summary = json_safe({**e.summary, **head, "engine": predictor.engine, "out": str(out)})
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_rows(e.rows, out / "per_image.csv")
    if panel:
        title = f"{head['model']['name']} {head['eval_name']}"
        draw_panel(out / "predictions.png", predictor, e, panel, title, r.synthetic)
    return summary
