"""``evaluate_run``: score a run folder's model on a split, as ``predict`` delivers it.

The masks scored are those :class:`~covidseg.inference.predictor.Predictor` gives (the run's
post-processing applied at each X-ray's own size), against the original mask files at their
own size (``scored_at: native``; :mod:`covidseg.scoring`). Writes
``RUN_DIR/eval/<name>/summary.json`` (every definition of :mod:`covidseg.metrics`),
``per_image.csv`` and the prediction panel ``RUN_DIR/plots/predictions_<name>.png``, where
``<name>`` is the split, followed by what differs from the run's own settings (:func:`eval_name`),
so that no evaluation overwrites another kind.
(The per-epoch check during training, :mod:`covidseg.engine.epoch_check`, scores at the network's
input size instead: it only chooses the best epoch.)
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidseg import detection
from covidseg.atomic import write_atomic
from covidseg.config import Config
from covidseg.data.dataset import SegmentationDataset
from covidseg.data.discovery import GROUPS, Discovery
from covidseg.data.loading import discover_root, load_dataset
from covidseg.engine.checkpoint import FILE_SHA256
from covidseg.errors import ConfigError, CovidsegError
from covidseg.inference.builtin import sha256
from covidseg.inference.bundle import is_bundle
from covidseg.inference.postprocess import FILENAME as POSTPROCESS_FILE
from covidseg.inference.postprocess import Postprocess, read_postprocess
from covidseg.inference.predictor import Predictor, open_run
from covidseg.metrics import confusion_counts, dice_iou, json_safe, summarize
from covidseg.progress import Progress
from covidseg.scoring import SCORED_AT, Truth, load_truth, network_input, split_probabilities
from covidseg.severity import GRADES, SeverityRule, quantify

log = logging.getLogger(__name__)

SYNTHETIC_NOTE = "synthetic data written by 'covidseg synth' (a test fixture, not X-rays)"


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6f}"


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """``per_image.csv``: one row per image, empty cells for undefined values (written whole or
    not at all)."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
    write_atomic(path, f.getvalue())


def severity_summary(
    predicted: list[dict[str, Any]] | None,
    truth: list[dict[str, Any]],
    groups: list[str],
    rule: SeverityRule,
) -> dict[str, Any]:
    """Severity grades per group (from the true masks, and predicted where the model has a lung
    output), with the agreement between the two over every X-ray (``agreement``: negatives count,
    most of them graded ``none`` by both) and over the COVID-19 X-rays (``agreement_covid``)."""
    groups_a = np.asarray(groups)

    def counts(records: list[dict[str, Any]], sel: np.ndarray) -> dict[str, int]:
        grades = [records[k]["severity"] for k in np.flatnonzero(sel)]
        return {g: grades.count(g) for g in GRADES}

    out: dict[str, Any] = {"rule": rule.as_dict(), "groups": {}}
    for g in GROUPS:
        sel = groups_a == g
        if not sel.any():
            continue
        entry: dict[str, Any] = {"true": counts(truth, sel)}
        if predicted is not None:
            entry["predicted"] = counts(predicted, sel)
        out["groups"][g] = entry
    if predicted is not None:
        out["agreement"] = _agreement(predicted, truth)  # over every X-ray with both grades
        covid = [k for k in range(len(groups)) if groups[k] == "COVID-19"]
        out["agreement_covid"] = _agreement([predicted[k] for k in covid], [truth[k] for k in covid])
    return out


def _agreement(predicted: list[dict[str, Any]], truth: list[dict[str, Any]]) -> dict[str, Any] | None:
    pairs = [
        (p["infected_share_pct"], t["infected_share_pct"], p["severity"], t["severity"])
        for p, t in zip(predicted, truth)
        if None not in (p["infected_share_pct"], t["infected_share_pct"], p["severity"], t["severity"])
    ]
    if not pairs:
        return None
    pp, tp, pg, tg = zip(*pairs)
    return {
        "images": len(pairs),
        "infected_share_mae_points": float(np.mean(np.abs(np.subtract(pp, tp)))),
        "grade_accuracy": float(np.mean([a == b for a, b in zip(pg, tg)])),
        "grade_within_one": float(np.mean([abs(GRADES.index(a) - GRADES.index(b)) <= 1 for a, b in zip(pg, tg)])),
    }


def panel_indices(groups: np.ndarray, dice: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` examples spread over each group's scores: per group the worst, then the median,
    then the best image (by Dice), taken round-robin so that every group is shown."""
    per: list[list[int]] = []
    for g in range(len(GROUPS)):
        idx = np.flatnonzero(groups == g)
        if len(idx) == 0:
            continue
        order = idx[np.argsort(np.nan_to_num(dice[idx], nan=2.0), kind="stable")]
        picks = [order[0], order[len(order) // 2], order[-1]]
        per.append(list(dict.fromkeys(int(i) for i in picks)))
    out: list[int] = []
    while len(out) < n and any(per):
        for lst in per:
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


@dataclass
class Scored:
    """Per image of a split, in dataset order: confusion counts of the final infection (or lung)
    mask against the truth, of the lung mask, the infected share of the image, and the severity
    record of the prediction (models with an infection and a lung output)."""

    stats: np.ndarray
    shares: np.ndarray
    lung_stats: np.ndarray | None = None
    records: list[dict[str, Any]] | None = None


def score_split(
    predictor: Predictor, ds: SegmentationDataset, truth: Truth, batch_size: int, progress: Progress | None = None
) -> Scored:
    """Score every image of ``ds`` as ``predict`` would segment it."""
    targets = predictor.targets
    both = targets[0] == "infection" and "lung" in targets
    stats, lung_stats, shares, records = [], [], [], []
    for k, probs in split_probabilities(predictor, ds, batch_size, progress=progress, desc="evaluate"):
        pred = predictor.from_probabilities(probs, truth.shape(k))
        ref = truth.lung[k] if targets[0] == "lung" else truth.infection[k]
        if ref is None:
            raise ConfigError(f"{ds.split.samples[k].image}: no lung mask to score the lung output against")
        stats.append(confusion_counts(pred.mask[None], ref[None])[0])
        shares.append(pred.infected_fraction)
        if both:
            lung_ref = truth.lung[k]
            lung_stats.append(confusion_counts(pred.lung[None], lung_ref[None])[0] if lung_ref is not None else None)
            records.append(pred.severity)
    lung = np.stack(lung_stats) if both and all(s is not None for s in lung_stats) else None
    return Scored(np.stack(stats), np.asarray(shares), lung, records if both else None)


def _summary(scored: Scored, groups: list[str], post_threshold: float, cfg: Config, split: str) -> dict[str, Any]:
    s = summarize(scored.stats, groups, post_threshold, cfg.eval.empty_empty, split)
    if scored.lung_stats is not None:
        s["lung"] = summarize(scored.lung_stats, groups, 0.5, cfg.eval.empty_empty, split)
    return s


@dataclass
class Evaluated:
    """One split scored: the summary (every definition), the per-image rows, and what they came
    from (for the panel)."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    dataset: SegmentationDataset
    truth: Truth
    scored: Scored


def score_and_summarize(
    predictor: Predictor,
    cfg: Config,
    r: OpenSplit,
    split: str,
    scored_at: str = "native",
    batch_size: int = 8,
    progress: Progress | None = None,
) -> Evaluated:
    """Score ``r``'s X-rays as ``predict`` segments them with ``predictor``: the summary
    (:func:`covidseg.metrics.summarize`, lungs, detection, severity) and the per-image rows."""
    truth = load_truth(r.dataset, scored_at, progress)
    scored = score_split(predictor, r.dataset, truth, batch_size, progress)
    groups = [s.group for s in r.dataset.split.samples]
    post = predictor.post
    summary = _summary(scored, groups, post.threshold, cfg, split)
    summary.update(
        {
            "target": predictor.targets[0],
            "scored_at": scored_at,
            "sizes": truth.sizes(),
            "data": SYNTHETIC_NOTE if r.synthetic else "X-rays",
            "synthetic": r.synthetic,
            "postprocess": post.as_dict(),
            "data_root": str(r.data_root.resolve()),
            "image_size": cfg.data.image_size,
        }
    )
    rows = _per_image_rows(scored, r.dataset, truth, cfg, post)
    _add_clinical(summary, rows, scored, truth, groups, cfg, predictor)
    return Evaluated(summary, rows, r.dataset, truth, scored)


def _tuning_record(
    run_dir: Path, split: str, postprocess: bool, applied: Postprocess, weights: str, bundle: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Where the applied settings were tuned, and their cross-fitted estimate (from ``tune``);
    None when the settings applied are not the tuned ones (a ``--threshold``, another bundle's)
    or the weights scored are not the ones tuned (another run's bundle, a checkpoint trained on).

    The weights scored are the run's checkpoint (``weights``: the SHA-256 of its bytes as
    loaded), or those of the bundle whose ``metadata.json`` is ``bundle`` (bundles exported before
    it recorded their checkpoint's hash are taken to match); the weights tuned are named by the
    record's hash, or for records from before ``tune`` kept it, by the run's checkpoint as it is now."""
    path = run_dir / POSTPROCESS_FILE
    if not postprocess or not path.is_file():
        return None
    tuned, record = read_postprocess(path)
    if tuned != applied:
        return None
    tuned_on = record.get("tuned_on") if isinstance(record.get("tuned_on"), dict) else {}
    reference = tuned_on.get("checkpoint_sha256")
    if bundle is None:  # the run's checkpoint, compared only when there is a hash to compare it with
        scored = weights if reference else None
    else:
        scored = bundle.get("source_checkpoint_sha256")
        reference = reference or _checkpoint_sha256(run_dir, bundle.get("checkpoint"))
    if scored is not None and scored != reference:
        return None
    out = {k: record.get(k) for k in ("tuned_for", "tuned_on", "cross_fit")}
    out["same_split"] = tuned_on.get("split") == split
    return out


def _checkpoint_sha256(run_dir: Path, name: Any) -> str | None:
    """The SHA-256 of the run's checkpoint ``name`` (None unless ``best`` or ``last`` is there)."""
    path = run_dir / "checkpoints" / f"{name}.pt"
    return sha256(path) if name in ("best", "last") and path.is_file() else None


def _bundle_metadata(bundle: Path) -> dict[str, Any]:
    """A bundle's ``metadata.json`` (untrusted: an object, its hash a string or absent)."""
    try:
        meta = json.loads((bundle / "metadata.json").read_text())
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("source_checkpoint_sha256", ""), str):
        raise ConfigError(f"{bundle}/metadata.json is damaged: export the bundle again")
    return meta


def _per_image_rows(scored: Scored, ds: SegmentationDataset, truth: Truth, cfg: Config, post: Any) -> list[dict]:
    samples = ds.split.samples
    ee = cfg.eval.empty_empty
    dice, iou = dice_iou(scored.stats, ee)
    rows = []
    for k, st in enumerate(scored.stats):
        row: dict[str, Any] = {"id": samples[k].id, "group": samples[k].group}
        row.update(zip(("tp", "fp", "fn", "tn"), map(int, st)))
        row.update({"dice": _fmt(dice[k]), "iou": _fmt(iou[k])})
        rows.append(row)
    if cfg.model.target_list[0] == "infection":
        for row, share in zip(rows, scored.shares):
            row["image_infected_share_pct"] = round(100.0 * float(share), 4)
            row["covid_call"] = int(share > post.detect_fraction)
    if scored.lung_stats is not None:
        for row, d, j in zip(rows, *dice_iou(scored.lung_stats, ee)):
            row["lung_dice"], row["lung_iou"] = _fmt(d), _fmt(j)
    return rows


def _add_clinical(
    summary: dict, rows: list[dict], scored: Scored, truth: Truth, groups: list[str], cfg: Config, predictor: Predictor
) -> None:
    """Detection and severity, for infection models (the true grades by the predictor's rule)."""
    if cfg.model.target_list[0] != "infection":
        return
    post, rule = predictor.post, predictor.severity
    summary["detection"] = detection.detection_summary(scored.shares, groups, post.detect_fraction)
    summary["detection"]["rule"] = post.call_rule(cfg.model.target_list)
    truth_sev = [quantify(inf, lung, rule) for inf, lung in zip(truth.infection, truth.lung)]
    summary["severity"] = severity_summary(scored.records, truth_sev, groups, rule)
    for k, row in enumerate(rows):
        row["true_infected_share_pct"] = truth_sev[k]["infected_share_pct"]
        row["true_severity"] = truth_sev[k]["severity"]
        if scored.records is not None:
            rec = scored.records[k]
            for key in (
                "infected_share_pct",
                "right_lung_infected_share_pct",
                "left_lung_infected_share_pct",
                "severity_score",
                "severity",
            ):
                row[key] = rec[key]


def draw_panel(path: Path, predictor: Predictor, e: Evaluated, n: int, name: str, synthetic: bool) -> None:
    """The prediction panel: X-ray, true mask and prediction of the worst, median and best
    X-ray of each group (``n`` in all)."""
    from covidseg.data.image_io import read_xray
    from covidseg.figures import plot_predictions

    ds, truth = e.dataset, e.truth
    dice, _ = dice_iou(e.scored.stats)
    panels = []
    for k in panel_indices(ds.groups, dice, n):
        s = ds.split.samples[k]
        image = read_xray(s.image) if truth.scored_at == "native" else np.asarray(ds.split.images[k])
        mask = predictor.from_probabilities(
            predictor.probabilities(network_input(ds.split.images[k : k + 1]))[0],
            truth.shape(k),
        ).mask
        ref = truth.lung[k] if predictor.targets[0] == "lung" else truth.infection[k]
        d = "n/a" if np.isnan(dice[k]) else f"{dice[k]:.3f}"
        panels.append((image, ref.astype(np.uint8), mask, f"{s.group}: {s.image.name}\nDice {d}"))
    kind = "synthetic " if synthetic else ""
    plot_predictions(panels, path, title=f"{kind}{name}: X-ray, true mask, prediction (worst, median, best per group)")


def eval_name(
    split: str,
    bundle: str | Path | None = None,
    checkpoint: str = "best",
    threshold: float | None = None,
    postprocess: bool = True,
    limit: int | None = None,
    scored_at: str = "native",
    other_data: str | Path | None = None,
) -> str:
    """The folder name of one kind of evaluation (under ``RUN_DIR/eval/``, or
    ``covidseg-eval/<model>/`` for ``evaluate --model``): the split, then each
    setting that differs from the run's own (``Val``; ``Val-untuned``; ``Val-covidseg-v3``;
    ``Val-last-t0.4-limit50-at-input``; ``Val-data-<folder>`` for a data folder other than the
    one the run was trained on). The run's own is what ``export`` and the leaderboard read; a
    quick ``--limit`` check or an untuned score never replaces it."""
    parts = [split]
    if bundle is not None:
        parts.append(Path(bundle).resolve().name)
    elif checkpoint != "best":  # a bundle holds its own weights
        parts.append(checkpoint)
    if other_data is not None:
        parts.append(f"data-{Path(other_data).resolve().name}")
    if not postprocess:
        parts.append("untuned")
    if threshold is not None:
        parts.append(f"t{float(threshold)!r}")  # the shortest text that reads back as the same number
    if limit is not None:
        parts.append(f"limit{limit}")
    if scored_at != "native":
        parts.append(f"at-{scored_at}")
    return "-".join(parts)


def check_arguments(split: str, batch_size: int | None, panel: int, scored_at: str) -> None:
    """Refuse the settings of an evaluation that cannot be scored, before any work."""
    if split not in ("Train", "Val", "Test"):
        raise ConfigError(f"split must be Train, Val or Test, got {split!r}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if panel < 0:
        raise ConfigError(f"panel must be 0 (none) or more examples, got {panel}")
    if scored_at not in SCORED_AT:
        raise ConfigError(f"scored_at must be one of {list(SCORED_AT)}, got {scored_at!r}")


def evaluate_run(
    run_dir: str | Path,
    data_root: str | None = None,
    split: str = "Val",
    checkpoint: str = "best",
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    limit: int | None = None,
    panel: int = 6,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    postprocess: bool = True,
    scored_at: str = "native",
    bundle: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``RUN_DIR/checkpoints/<checkpoint>.pt`` on ``split`` and write the results.

    Args:
        data_root: the data folder; default: the one the run was trained on.
        threshold: the probability threshold; overrides ``postprocess.json`` and the config.
        limit: evaluate a seeded, group-stratified subset of this many images.
        panel: how many examples to draw in the prediction panel (0: none).
        postprocess: apply the decisions in ``RUN_DIR/postprocess.json`` (from ``covidseg tune``)
            when present; False: the plain threshold.
        scored_at: ``native`` (each X-ray's own size, the original masks) or ``input`` (the
            network's input size, the cached masks; for comparison only).
        bundle: score this exported bundle of the run (onnxruntime, its stored weights and
            settings) in place of the checkpoint.
            The run's tuning record is reported only when the settings applied are the tuned ones
            and the bundle holds the run's weights (``metadata.json``: ``source_checkpoint_sha256``).

    Returns:
        The summary dict, as written to ``RUN_DIR/eval/<name>/summary.json`` (:func:`eval_name`).
    """
    check_arguments(split, batch_size, panel, scored_at)
    run_dir = Path(run_dir)
    predictor, cfg, state = open_run(run_dir, checkpoint, device, threshold, postprocess)
    meta = None
    if bundle is not None:
        predictor = _bundle_predictor(bundle, cfg, threshold, postprocess)
        meta = _bundle_metadata(Path(bundle))
        state = {**state, "epoch": meta["epoch"] if isinstance(meta.get("epoch"), int) else -1}
    found = discover_root(data_root or cfg.data.root)
    other = _other_data(data_root, cfg.data.root, found.root)
    name = eval_name(split, bundle, checkpoint, threshold, postprocess, limit, scored_at, other)
    out = run_dir / "eval" / name
    if other is not None:
        _refuse_other_data(out, found.root)
    r = open_split(cfg, split, data_root, limit, cache_dir, progress, found)
    e = score_and_summarize(predictor, cfg, r, split, scored_at, batch_size or cfg.train.batch_size, progress)
    summary = e.summary
    summary.update(
        {
            "tuning": _tuning_record(run_dir, split, postprocess, predictor.post, state[FILE_SHA256], meta),
            "checkpoint": checkpoint if meta is None else meta.get("checkpoint"),  # a bundle's: exported from
            "epoch": int(state["epoch"]),
        }
    )
    summary = json_safe(summary)
    if bundle is not None:
        summary["bundle"] = {"path": str(bundle), "engine": predictor.engine}
    summary["eval_name"] = name
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_rows(e.rows, out / "per_image.csv")
    if panel and bundle is None:
        draw_panel(run_dir / "plots" / f"predictions_{name}.png", predictor, e, panel, name, r.synthetic)
    log.info("wrote %s and %s (scored at %s size)", out / "summary.json", out / "per_image.csv", scored_at)
    return summary


def _other_data(asked: str | None, trained_on: str | None, found: Path) -> Path | None:
    """The data folder asked for when it is not the one the run was trained on (None when it is,
    however it was named; a trained-on folder that is gone counts as another)."""
    if asked is None:
        return None
    try:
        same = bool(trained_on) and discover_root(trained_on).root.resolve() == found.resolve()
    except (CovidsegError, OSError):
        same = False
    return None if same else Path(asked).expanduser()


def _refuse_other_data(out: Path, root: Path) -> None:
    """Refuse to replace the evaluation in ``out`` of another data folder that had the same name
    (evaluations from before data folders were stored resolved cannot tell, and are replaced)."""
    try:
        before = Path(json.loads((out / "summary.json").read_text())["data_root"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return
    if before.is_absolute() and before.resolve() != root.resolve():
        raise ConfigError(
            f"{out} holds the evaluation of another data folder of the same name ({before}); rename one of the two"
        )


def _bundle_predictor(bundle: str | Path, cfg: Config, threshold: float | None, postprocess: bool) -> Predictor:
    """A bundle's predictor, refused unless it takes the run's input size and gives its outputs."""
    if not is_bundle(bundle):
        raise ConfigError(f"--bundle {bundle} is not a bundle from 'covidseg export'")
    predictor = Predictor.load(bundle, threshold=threshold, postprocess=postprocess)
    if predictor.image_size != cfg.data.image_size or predictor.targets != tuple(cfg.model.target_list):
        raise ConfigError(
            f"--bundle {bundle} ({predictor.image_size} px, {'+'.join(predictor.targets)}) does not fit the run "
            f"({cfg.data.image_size} px, {cfg.model.targets}); export it from this run"
        )
    return predictor


@dataclass
class OpenSplit:
    dataset: SegmentationDataset
    data_root: Path
    synthetic: bool


def open_split(
    cfg: Config,
    split: str,
    data_root: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    discovery: Discovery | None = None,
) -> OpenSplit:
    """The preprocessed ``split`` a run is scored on (data root and cache default to the run's;
    ``discovery``: the data folder already discovered, in place of ``data_root``)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    d = cfg.data
    discovery = discover_root(data_root or d.root) if discovery is None else discovery
    ds = load_dataset(discovery, split, d.image_size, cache_dir or d.cache_dir, limit, cfg.train.seed, progress)
    return OpenSplit(ds, discovery.root, discovery.synthetic)
