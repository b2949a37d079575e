"""Tune the inference-side steps on Val, keeping each only if it improves a stated Dice.

Greedy, in order: horizontal-flip test-time augmentation; for models with a lung output,
keeping only infection inside the predicted lung; the probability threshold (0.10 to 0.90 by
0.05); the image gate together with the threshold (every gate from 0.50 to 0.99 above every
threshold: a mask is kept only when the image's peak probability passes the gate); removal of
components under N pixels (N scaled to the image size); hole filling.
A step stays only if it raises the chosen definition of Val Dice (``per_image``: the mean over
all images with empty/empty = 1; ``per_image_covid``: the mean over COVID-19 images;
``balanced``: the mean of those two, so that neither the negatives nor the COVID-19 images
decide alone; ``pooled``: one confusion matrix). Every trial is recorded under every
definition in ``RUN_DIR/postprocess.json``, so what a choice costs the others is on file.
Last, with the kept steps, the COVID-19 detection cut-off is set by the Youden index
(:mod:`covidseg.detection`).

Tuning and reporting on the same Val split flatters the numbers; report Test (or a held-out
part of Train) as the unbiased figure.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.data.discovery import GROUPS
from covidseg.detection import best_cutoff, infected_share
from covidseg.engine.evaluate import evaluate
from covidseg.errors import ConfigError
from covidseg.evaluation import open_run_split
from covidseg.metrics import confusion_counts, dice_iou, nan_mean, pooled
from covidseg.postprocess import Postprocess
from covidseg.progress import Progress

log = logging.getLogger(__name__)

METRICS = ("per_image", "per_image_covid", "balanced", "pooled")
THRESHOLDS = [round(x, 2) for x in np.arange(0.10, 0.91, 0.05)]
GATES = [round(x, 2) for x in np.arange(0.50, 0.96, 0.05)] + [0.97, 0.99]
MIN_COMPONENTS_256 = [16, 32, 64, 128, 256, 512]  # pixels at 256x256; scaled to the run's size


def _scores(stats: np.ndarray, covid: np.ndarray, empty_empty: float) -> dict[str, float]:
    dice, _ = dice_iou(stats, empty_empty)
    per_image, per_image_covid = nan_mean(dice), nan_mean(dice[covid])
    return {
        "per_image": per_image,
        "per_image_covid": per_image_covid,
        "balanced": (per_image + per_image_covid) / 2,
        "pooled": pooled(stats, empty_empty)["dice"],
    }


def tune_postprocess(
    run_dir: str | Path,
    data_root: str | None = None,
    metric: str = "per_image",
    limit: int | None = None,
    device: str = "auto",
    checkpoint: str = "best",
    progress: Progress | None = None,
) -> Postprocess:
    """Tune on the run's Val split and write ``RUN_DIR/postprocess.json``; returns the decisions."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    r = open_run_split(run_dir, "Val", data_root, checkpoint, device, limit, progress=progress)
    model, cfg, ds, dev, loader, autocast = r.model, r.cfg, r.dataset, r.device, r.loader, r.autocast
    targets = cfg.model.target_list
    if targets[0] != "infection":
        raise ConfigError(f"tune sets the infection post-processing; this run segments {cfg.model.targets} only")
    plain = evaluate(
        model, loader, dev, autocast=autocast, keep_probs=True, progress=progress, desc="tune: plain", targets=targets
    )
    flip = evaluate(
        model,
        loader,
        dev,
        autocast=autocast,
        keep_probs=True,
        post=Postprocess(tta_hflip=True),
        progress=progress,
        desc="tune: flip TTA",
        targets=targets,
    )
    truth = np.asarray(ds.split.infection)[plain.indices].astype(bool)
    covid = ds.groups[plain.indices] == GROUPS.index("COVID-19")
    ee = cfg.eval.empty_empty

    def final_masks(post: Postprocess) -> np.ndarray:
        res = flip if post.tta_hflip else plain
        return post.apply(res.probs.astype(np.float32), lung=res.lung_masks)

    def score(post: Postprocess) -> dict[str, float]:
        return _scores(confusion_counts(final_masks(post), truth), covid, ee)

    current = Postprocess(tuned_for=metric)
    best = score(current)
    steps: list[dict[str, Any]] = [{"step": "baseline", "setting": "threshold 0.5", "kept": True, **best}]

    def consider(name: str, setting: str, candidate: Postprocess) -> None:
        nonlocal current, best
        s = score(candidate)
        kept = s[metric] > best[metric] + 1e-6
        steps.append({"step": name, "setting": setting, "kept": kept, **s})
        if kept:
            current, best = candidate, s

    consider("tta_hflip", "on", _replace(current, tta_hflip=True))
    if plain.lung_masks is not None:
        consider("lung_gate", "on", _replace(current, lung_gate=True))
    base = current
    trials = [(t, score(_replace(base, threshold=t))) for t in THRESHOLDS]
    t_best = max(trials, key=lambda x: x[1][metric])[0]
    for t, s in trials:
        steps.append({"step": "threshold", "setting": str(t), "kept": False, "trial": True, **s})
    consider("threshold", str(t_best), _replace(base, threshold=t_best))
    pairs = [(t, g) for t in THRESHOLDS for g in GATES if g > t]
    trials = [(pair, score(_replace(base, threshold=pair[0], image_gate=pair[1]))) for pair in pairs]
    for (t, g), s in trials:
        steps.append({"step": "image_gate", "setting": f"{g} (threshold {t})", "kept": False, "trial": True, **s})
    (t_best, g_best), _ = max(trials, key=lambda x: x[1][metric])
    consider("image_gate", f"{g_best} (threshold {t_best})", _replace(base, threshold=t_best, image_gate=g_best))
    scale = (cfg.data.image_size / 256) ** 2
    base = current
    sizes = sorted({max(1, int(round(n * scale))) for n in MIN_COMPONENTS_256})
    trials = [(n, score(_replace(base, min_component=n))) for n in sizes]
    for n, s in trials:
        steps.append({"step": "min_component", "setting": str(n), "kept": False, "trial": True, **s})
    n_best = max(trials, key=lambda x: x[1][metric])[0]
    consider("min_component", str(n_best), _replace(base, min_component=n_best))
    consider("fill_holes", "on", _replace(current, fill_holes=True))

    shares = infected_share(confusion_counts(final_masks(current), truth))
    cutoff = best_cutoff(shares, covid)
    steps.append({"step": "detect_fraction", "setting": f"{cutoff:.6g}", "kept": True, "rule": "Youden index"})
    result = _replace(current, detect_fraction=cutoff, steps=steps)
    path = result.save(run_dir)
    log.info(
        "tuned for %s Dice: %.4f -> %.4f (flip TTA %s, lung gate %s, threshold %.2f, image gate %s, "
        "min component %d px, fill holes %s; COVID-19 call above %.4f%% of the image); wrote %s",
        metric,
        steps[0][metric],
        best[metric],
        "on" if result.tta_hflip else "off",
        "on" if result.lung_gate else "off",
        result.threshold,
        f"{result.image_gate:.2f}" if result.image_gate else "off",
        result.min_component,
        "on" if result.fill_holes else "off",
        100 * cutoff,
        path,
    )
    return result


def _replace(p: Postprocess, **changes: Any) -> Postprocess:
    return replace(p, **changes)
