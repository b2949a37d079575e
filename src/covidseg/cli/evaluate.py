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
from covidseg.errors import CovidsegError


def cmd_evaluate(a: argparse.Namespace) -> int:
    setup_logging(a.verbose)
    if a.model is not None or a.run_dir is None:
        return _evaluate_model(a)
    if a.out is not None:
        raise CovidsegError(f"--out is for --model; a run's evaluations go to {Path(a.run_dir) / 'eval'}")
    from covidseg.evaluation import evaluate_run

    s = evaluate_run(
        a.run_dir, a.data, a.split, a.checkpoint, device=a.device, batch_size=a.batch_size, bundle=a.bundle, **_kind(a)
    )
    _print_summary(s)
    print(f"written to {Path(a.run_dir) / 'eval' / s['eval_name']}")
    return 0


def _evaluate_model(a: argparse.Namespace) -> int:
    """``evaluate --model NAME --data D``: a built-in model or a bundle, no run folder."""
    if a.run_dir is not None:
        raise CovidsegError("name either a run folder or --model, not both")
    if a.data is None and a.model is None:
        raise CovidsegError("evaluate needs a run folder, or --data D to score the built-in model (or --model M) on D")
    if a.data is None:
        raise CovidsegError("evaluate --model needs --data: the labelled data folder to score it on")
    for flag, given in (
        ("--bundle", a.bundle is not None),
        ("--checkpoint", a.checkpoint != "best"),
        ("--device", a.device != "auto"),  # a bundle runs in onnxruntime on the CPU
    ):
        if given:
            raise CovidsegError(f"{flag} is for a run folder; --model names the model scored")
    from covidseg.model_evaluation import evaluate_model

    batch = 8 if a.batch_size is None else a.batch_size
    s = evaluate_model(a.model, a.data, a.split, a.out, batch_size=batch, **_kind(a))
    print(f"model {s['model']['name']}:")
    _print_summary(s)
    covid_qu_ex_val = Path(s["data_root"]).name == "Infection Segmentation Data" and s["split"] == "Val"
    if s["model"]["builtin"] and covid_qu_ex_val and not s["synthetic"] and a.postprocess:
        print(
            f"  note: {s['model']['name']}'s post-processing was tuned on COVID-QU-Ex Val; if this is that split, "
            "these figures are in-sample (the cross-fitted ones are in its model card, MODEL_CARD.md, whose path "
            "'covidseg models' prints)"
        )
    print(f"written to {s['out']}")
    return 0


def _kind(a: argparse.Namespace) -> dict[str, Any]:
    """The options both kinds of evaluation take alike."""
    return {
        "threshold": a.threshold,
        "limit": a.limit,
        "panel": a.panel,
        "cache_dir": a.cache_dir,
        "progress": progress_bar(a.progress),
        "postprocess": a.postprocess,
        "scored_at": a.scored_at,
    }


def _print_summary(s: dict[str, Any]) -> None:
    """The figures of an evaluation's summary, a line per definition."""
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
    for key, over in (("agreement_covid", "COVID-19"), ("agreement", "all")):
        sev = s.get("severity", {}).get(key)
        if sev:
            print(
                f"  severity    {over} ({sev['images']} X-rays): grade agreement {sev['grade_accuracy']:.1%} "
                f"(within one grade {sev['grade_within_one']:.1%}), "
                f"infected-lung % mean abs. error {sev['infected_share_mae_points']:.2f} points"
            )


def _evaluate_parser(sub: Any) -> None:
    """The parsers of evaluate."""
    sp = sub.add_parser(
        "evaluate",
        help="score a run, a bundle or the built-in model on a labelled split: summary.json, per_image.csv, panel",
        description="Score a run folder's model (evaluate RUN_DIR; results in RUN_DIR/eval/), or a built-in "
        "model or bundle on any labelled data folder (evaluate --model covidseg-v3 --data D; results in --out), "
        "as predict segments the X-rays: at each X-ray's own size, with the model's post-processing.",
    )
    sp.add_argument("run_dir", nargs="?", help="a run folder from 'covidseg train' (or name --model instead)")
    sp.add_argument(
        "--model",
        help="score a built-in model (see 'covidseg models') or a bundle from 'covidseg export' instead of a run; "
        "needs --data (with no run folder, the default built-in model is scored)",
    )
    sp.add_argument(
        "--out", help="with --model: the results folder (default covidseg-eval/<model>/<split>-data-<folder>)"
    )
    sp.add_argument("--data", help="data folder (default: the one the run was trained on; needed with --model)")
    sp.add_argument("--split", default="Val", choices=("Train", "Val", "Test"), help="default Val")
    checkpoint_option(sp)
    threshold_option(sp)
    device_option(sp)
    sp.add_argument(
        "--batch-size", type=int, help="images per forward pass (default: the run's training batch; 8 with --model)"
    )
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
