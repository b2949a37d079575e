"""The words of a report: what a summary measured, how a run was trained and post-processed, and
how numbers are shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from covidseg.config import Config

# Column -> (summary.json path): each column holds one definition.
INFECTION_COLUMNS = [
    ("Dice, per image, COVID-19 images", ("per_image_covid", "dice")),
    ("IoU, per image, COVID-19 images", ("per_image_covid", "iou")),
    ("Dice, per image, all images (empty/empty = 1)", ("per_image", "dice")),
    ("IoU, per image, all images (empty/empty = 1)", ("per_image", "iou")),
    ("Dice, pooled pixels", ("pooled", "dice")),
    ("IoU, pooled pixels", ("pooled", "iou")),
    ("pixel accuracy, pooled", ("pooled", "pixel_accuracy")),
]


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def data_label(s: dict[str, Any], split: str) -> str:
    """What a summary was measured on, naming synthetic data as such."""
    kind = "SYNTHETIC (covidseg synth, not X-rays)" if s.get("synthetic") else "COVID-QU-Ex"
    return f"{kind} {split} ({s['images']} images)"


def describe_scoring(s: dict[str, Any]) -> str:
    """Where a summary was scored, in words."""
    if s.get("scored_at") == "native":
        sizes = ", ".join(f"{k}: {v}" for k, v in (s.get("sizes") or {}).items())
        return f"masks as `predict` writes them, at each X-ray's own size ({sizes}), against the original mask files"
    if s.get("scored_at") == "input":
        return f"at the network's input size ({s.get('image_size')}x{s.get('image_size')}), against shrunk masks"
    return "at the network's input size (an older summary; evaluate again to score at native size)"


def trained_precision(run: Path, cfg: Config) -> str:
    """The precision the run trained in (``env.json``; for runs before it was recorded, derived
    from the CPU flags it recorded), not the one its config asked for."""
    try:
        env = json.loads((run / "env.json").read_text())
    except (OSError, ValueError):
        return f"{cfg.train.amp} (asked; env.json unreadable)"
    if env.get("precision"):
        return env["precision"]
    amp, device = cfg.train.amp, env.get("device", "cpu")
    if amp == "off" or (device == "cpu" and (amp == "auto" or not (env.get("cpu") or {}).get("native_bf16"))):
        return "fp32"
    return amp


def describe_method(cfg: Config, precision: str | None = None) -> str:
    """The resolved config in words."""
    d, m, lo, a, o, t = cfg.data, cfg.model, cfg.loss, cfg.augment, cfg.optim, cfg.train
    if m.name == "unet":
        c = m.base_channels
        net = f"the reference U-Net (encoder {c}/{2 * c}/{4 * c} filters, bottleneck {8 * c}, skip concatenation)"
    else:
        weights = "ImageNet-pretrained" if m.encoder_weights else "randomly initialised"
        net = f"segmentation-models-pytorch {m.name.removeprefix('smp-')} with a {weights} {m.encoder_name} encoder"
    outputs = " and ".join(m.target_list)
    loss = {
        "bce": "binary cross-entropy",
        "dice": "soft Dice" + (" per image" if lo.dice_per_image else " over the batch"),
        "bce_dice": f"{lo.bce_weight:g} x BCE + {1 - lo.bce_weight:g} x soft Dice"
        + (" per image" if lo.dice_per_image else ""),
        "focal": f"focal loss (gamma {lo.focal_gamma:g})",
        "tversky": f"Tversky loss (alpha {lo.tversky_alpha:g}, beta {lo.tversky_beta:g})",
    }[lo.name]
    aug = "no augmentation" if a.name == "none" else f"'{a.name}' augmentation (strength {a.strength:g})"
    sched = {"constant": "a constant learning rate", "cosine": "cosine decay with warm-up", "onecycle": "one-cycle"}
    limits = ""
    if d.train_limit or d.val_limit:
        limits = f" Subsets: at most {d.train_limit or 'all'} Train and {d.val_limit or 'all'} Val images."
    return (
        f"Images are converted to gray, resized to {d.image_size}x{d.image_size} (bilinear) and scaled to [0, 1]; "
        f"masks are resized with nearest neighbour and binarised at > 127. The network is {net}, with one output "
        f"channel per target ({outputs}). Loss: {loss}. Optimiser: {o.name} with learning rate {o.lr:g} and "
        f"{sched[o.schedule]}, weight decay {o.weight_decay:g}; batch {t.batch_size}, {t.epochs} epochs, {aug}; "
        f"precision {precision or t.amp}. The best epoch is chosen by {t.select_metric}"
        + (f" smoothed by an EMA of {t.select_smoothing:g}" if t.select_smoothing else "")
        + f"; a pixel is infection when its probability exceeds {cfg.eval.threshold:g} unless tuned."
        + limits
    )


def run_name(run: Path) -> str:
    """The run folder's name, with its parent's where the folder is just called ``run``."""
    return f"{run.resolve().parent.name}/{run.name}" if run.name == "run" else run.name


def cross_fitted_row(s: dict[str, Any], split: str, cf: dict[str, Any]) -> list[Any]:
    """The tuned settings' cross-fitted estimate, in the columns it has (per-image and pooled Dice)."""
    have = {
        ("per_image_covid", "dice"): "per_image_covid",
        ("per_image", "dice"): "per_image",
        ("pooled", "dice"): "pooled",
    }
    cells = [cf.get(have[p]) if p in have else "" for _, p in INFECTION_COLUMNS]
    label = f"{data_label(s, split)}, tuned settings cross-fitted (chosen on one half, scored on the other)"
    return [label, ""] + cells + [pct(cf.get("negatives_with_false_positives"))]


def describe_postprocess(s: dict[str, Any]) -> str:
    """The post-processing a summary applied, in words."""
    post = s.get("postprocess") or {}
    share = post.get("min_component_share") or 0.0
    tuning = s.get("tuning") or {}
    where = (tuning.get("tuned_on") or {}).get("split")
    return (
        f"Post-processing applied: threshold {post.get('threshold')}, "
        f"flip TTA {'on' if post.get('tta_hflip') else 'off'}, lung gate {'on' if post.get('lung_gate') else 'off'}, "
        f"image gate {post.get('image_gate') or 'off'}, "
        f"components under {100 * share:.3g}% of the image removed ({round(share * 65536)} px of 256x256), "
        f"holes {'filled' if post.get('fill_holes') else 'kept'}"
        + (f" (tuned on {where} for {tuning.get('tuned_for')} Dice)." if where else " (not tuned).")
    )


def agreement_text(covid: dict[str, Any] | None, every: dict[str, Any]) -> str:
    """The severity agreement in words, over the COVID-19 X-rays (when scored) and over all."""

    def one(a: dict[str, Any]) -> str:
        return (
            f"{100 * a['grade_accuracy']:.1f}% ({100 * a['grade_within_one']:.1f}% within one grade), infected "
            f"share of the lungs off by {a['infected_share_mae_points']:.1f} percentage points on average"
        )

    overall = f"{one(every)} over all {every['images']} X-rays (most negatives are graded none by both)"
    if covid is None:
        return f"agrees with the grade of the true masks on {overall}"
    return (
        f"agrees with the grade of the true masks on {one(covid)} over the {covid['images']} COVID-19 X-rays; {overall}"
    )
