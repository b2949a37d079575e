"""``covidseg evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from covidseg.cli.common import (
    checkpoint_option,
    common_options,
    device_option,
    postprocess_option,
    progress_bar,
    setup_logging,
    threshold_option,
)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from covidseg.evaluation import evaluate_run

    setup_logging(a.verbose)
    s = evaluate_run(
        a.run_dir,
        a.data,
        a.split,
        a.checkpoint,
        a.threshold,
        a.device,
        a.batch_size,
        a.limit,
        a.panel,
        a.cache_dir,
        progress_bar(a.progress),
        postprocess=a.postprocess,
        scored_at=a.scored_at,
        bundle=a.bundle,
    )
    p, pi, pc = s["pooled"], s["per_image"], s["per_image_covid"]
    data = "SYNTHETIC " if s.get("synthetic") else ""
    where = "each X-ray's own size" if s["scored_at"] == "native" else f"the network's input size {s['image_size']}"
    print(f"{data}{s['split']} ({s['images']} images, threshold {s['threshold']}, scored at {where}):")
    print(f"  pooled      dice {p['dice']:.4f}  iou {p['iou']:.4f}  pixel accuracy {p['pixel_accuracy']:.4f}")
    print(
        f"  per image   dice {pi['dice']:.4f}  iou {pi['iou']:.4f}  (empty truth and prediction = {s['empty_empty']})"
    )
    if pc["images"]:
        print(f"  COVID-19    dice {pc['dice']:.4f}  iou {pc['iou']:.4f}  (per image, {pc['images']} images)")
    fp = s["negatives_with_false_positives"]
    if fp is not None:
        print(f"  negatives with false-positive pixels: {fp:.1%}")
    if "lung" in s:
        lp, li = s["lung"]["pooled"], s["lung"]["per_image"]
        print(
            f"  lung        dice {lp['dice']:.4f}  iou {lp['iou']:.4f} pooled; "
            f"{li['dice']:.4f} / {li['iou']:.4f} per image"
        )
    det = s.get("detection")
    if det and det["sensitivity"] is not None and det["specificity"] is not None:
        auc = "n/a" if det["roc_auc"] is None else f"{det['roc_auc']:.4f}"
        print(
            f"  detection   sensitivity {det['sensitivity']:.4f}  specificity {det['specificity']:.4f}  "
            f"ROC AUC {auc}  (call: {det['rule']})"
        )
    tuning = s.get("tuning") or {}
    cf = (tuning.get("cross_fit") or {}).get("cross_fitted")
    if cf and tuning.get("same_split"):
        print(
            f"  tuned on this split for {tuning['tuned_for']}: cross-fitted estimate "
            f"per-image Dice {cf['per_image']:.4f}, COVID-19 {cf['per_image_covid']:.4f}, "
            f"pooled {cf['pooled']:.4f} (choose on one half, score the other)"
        )
    sev = s.get("severity", {}).get("agreement")
    if sev:
        print(
            f"  severity    grade agreement {sev['grade_accuracy']:.1%} "
            f"(within one grade {sev['grade_within_one']:.1%}), "
            f"infected-lung % mean abs. error {sev['infected_share_mae_points']:.2f} points"
        )
    print(f"written to {Path(a.run_dir) / 'eval' / s['eval_name']}")
    return 0


def _evaluate_parser(sub: Any) -> None:
    """The parsers of evaluate."""
    sp = sub.add_parser("evaluate", help="score a run on a split: summary.json, per_image.csv, prediction panel")
    sp.add_argument("run_dir")
    sp.add_argument("--data", help="data folder (default: the one the run was trained on)")
    sp.add_argument("--split", default="Val", choices=("Train", "Val", "Test"), help="default Val")
    checkpoint_option(sp)
    threshold_option(sp)
    device_option(sp)
    sp.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's training batch)")
    sp.add_argument("--limit", type=int, help="evaluate a group-stratified subset of N images")
    sp.add_argument("--panel", type=int, default=6, help="examples in the prediction panel (default 6)")
    postprocess_option(sp)
    sp.add_argument(
        "--scored-at",
        default="native",
        choices=("native", "input"),
        help="native (default): masks as predict writes them, at each X-ray's own size, against the original "
        "mask files; input: at the network's input size against shrunk masks (for comparison only)",
    )
    sp.add_argument(
        "--cache-dir",
        help="where decoded arrays are cached (default: the run's, else ~/.cache/covidseg or $COVIDSEG_CACHE_DIR)",
    )
    sp.add_argument("--bundle", help="score this bundle of the run (from 'covidseg export') in place of its checkpoint")
    common_options(sp)
    sp.set_defaults(func=cmd_evaluate)
