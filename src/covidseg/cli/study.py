"""``covidseg demo``, ``tune``, ``calibrate``, ``sweep`` and ``report``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from covidseg.cli.common import (
    TUNE_METRICS,
    checkpoint_option,
    common_options,
    device_option,
    parse_sets,
    progress_bar,
    setup_logging,
    whole_number,
)
from covidseg.errors import CovidsegError


def cmd_sweep(a: argparse.Namespace) -> int:
    from covidseg.sweep import expand, load_spec, run_sweep, shipped_specs

    if a.list:
        for name in shipped_specs():
            spec = load_spec(name)
            print(f"{name:<20} {len(expand(spec))} trials; scales: {', '.join(spec.scales) or 'none'}")
        return 0
    if not a.spec or not a.out:
        raise CovidsegError("give a sweep spec and --out (or --list for the shipped specs)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(a.verbose, out / "sweep.log")
    rows = run_sweep(a.spec, a.data, out, a.scale, a.sort_by, a.cache_dir, a.device, progress_bar(a.progress))
    done = [r for r in rows if r["status"] == "done"]
    print(f"{len(done)} of {len(rows)} trials done; leaderboard: {out / 'leaderboard.md'}, {out / 'leaderboard.csv'}")
    return 0 if len(done) == len(rows) else 1


def cmd_report(a: argparse.Namespace) -> int:
    from covidseg.report.build import build_report

    setup_logging(a.verbose)
    md, page = build_report(a.inputs, a.out)
    print(f"report written: {md} and {page} (self-contained; open it in a browser)")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from covidseg.demo import run_demo

    out = Path(a.out)
    setup_logging(a.verbose, out / "demo.log")
    overrides = parse_sets(a.set)
    if a.epochs is not None:
        overrides["train.epochs"] = a.epochs
    t0 = time.perf_counter()
    r = run_demo(out, overrides, progress=progress_bar(a.progress), argv=sys.argv)
    p = r.summary["pooled"]
    run = r.run.run_dir
    print(
        f"\ndemo finished in {time.perf_counter() - t0:.0f} s: synthetic Val pooled Dice {p['dice']:.4f}, "
        f"IoU {p['iou']:.4f}, pixel accuracy {p['pixel_accuracy']:.4f}"
    )
    print(f"  data:        {r.data_dir}")
    print(f"  run folder:  {run}")
    print(f"  metrics:     {run / 'eval' / 'Val' / 'summary.json'}, {run / 'eval' / 'Val' / 'per_image.csv'}")
    print(f"  history:     {run / 'history.csv'}")
    for name in ("samples.png", "curves.png", "predictions_Val.png"):
        print(f"  figure:      {run / 'plots' / name}")
    _warn_if_short(run)
    return 0


def _warn_if_short(run: Path) -> None:
    """Say so when the demo's time budget bought under half its steps (a busy or slow CPU)."""
    try:
        budget = json.loads((run / "budget.json").read_text())
        planned, most = int(budget["planned"]), int(budget["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if planned < most / 2:
        print(
            f"note: the {budget['seconds']:.0f} s budget bought only {planned} of the demo's {most} training steps "
            f"({budget['step_time']:.2f} s a step: the cores were busy or slow), so its model learnt little. "
            "On idle cores it takes them all; or give it more time in a new folder: "
            "covidseg demo --set train.time_budget=600 --out covidseg-demo-long"
        )


def cmd_tune(a: argparse.Namespace) -> int:
    from covidseg.tune import tune_postprocess

    setup_logging(a.verbose)
    _, record = tune_postprocess(
        a.run_dir, a.data, a.metric, a.limit, a.device, a.checkpoint, progress_bar(a.progress), a.cross_fit
    )
    rows = [("step", "setting", "kept", "per_image", "covid", "balanced", "pooled")]
    for st in record["steps"]:
        if st.get("trial"):
            continue
        if "per_image" not in st:
            rows.append((st["step"], st["setting"], f"({st['rule']})", "", "", "", ""))
            continue
        values = (st["per_image"], st["per_image_covid"], st["balanced"], st["pooled"])
        rows.append((st["step"], st["setting"], "yes" if st["kept"] else "no", *(f"{v:.4f}" for v in values)))
    cf = record.get("cross_fit")
    if cf:
        for name in ("in_sample", "cross_fitted"):
            c = cf[name]
            values = (c["per_image"], c["per_image_covid"], c["balanced"], c["pooled"])
            rows.append((name.replace("_", "-"), "", "", *(f"{v:.4f}" for v in values)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) if i < 3 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(f"settings written to {Path(a.run_dir) / 'postprocess.json'}; evaluate and predict now apply them")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from covidseg.calibrate import calibrate_run

    setup_logging(a.verbose)
    r = calibrate_run(a.run_dir, a.data, "Val", a.checkpoint, a.device, None, a.limit, None, progress_bar(a.progress))
    fit, cf = r["fit"], r["cross_fit"]
    print(f"calibrated on {r['fitted_on']['images']} {r['fitted_on']['split']} images ({r['fitted_on']['data']})")
    print(f"  infection pixels in the lungs: ECE {fit['pixel_ece_before']:.4f} -> {fit['pixel_ece_after']:.4f} "
          f"(cross-fitted {cf['pixel_ece_after']:.4f}); threshold {r['threshold']:.4g} is "
          f"{r['threshold_calibrated']:.4g} calibrated")  # fmt: skip
    print(f"  COVID-19 probability: ECE {fit['image']['ece']:.4f}, Brier {fit['image']['brier']:.4f} "
          f"(cross-fitted {cf['image']['ece']:.4f}, {cf['image']['brier']:.4f})")  # fmt: skip
    if "input_check" in r:
        print(f"  input check: {100 * fit['input_check_flagged_share']:.1f}% of the images flagged "
              f"(cross-fitted {100 * cf['input_check_flagged_share']:.1f}%)")  # fmt: skip
    print(f"written to {Path(a.run_dir) / 'calibration.json'}; predict, serve and export now apply it")
    return 0


def _study_parsers(sub: Any) -> None:
    """The parsers of demo, tune, sweep, report."""
    sp = sub.add_parser("demo", help="the main job on synthetic data: synth, train, evaluate, figures")
    sp.add_argument("-o", "--out", default="covidseg-demo", help="output folder (default ./covidseg-demo)")
    sp.add_argument("--epochs", type=int, help="override the demo's epochs")
    sp.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key of the demo preset"
    )
    common_options(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("tune", help="tune flip TTA, threshold and post-processing on Val; keep what helps")
    sp.add_argument("run_dir")
    sp.add_argument("--data", help="data folder (default: the one the run was trained on)")
    sp.add_argument(
        "--metric",
        default="per_image",
        choices=TUNE_METRICS,
        help="the Val Dice definition to improve (default per_image: all images, empty/empty = 1; "
        "balanced: the mean of per_image and per_image_covid)",
    )
    sp.add_argument("--limit", type=int, help="tune on a group-stratified subset of N Val images")
    checkpoint_option(sp)
    device_option(sp)
    sp.add_argument(
        "--cross-fit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also estimate what tuning is worth on unseen images: choose on one half of Val, score on the "
        "other, both ways (default yes)",
    )
    common_options(sp)
    sp.set_defaults(func=cmd_tune)

    sp = sub.add_parser(
        "calibrate",
        help="fit the input check on Train and calibrated probabilities on Val (after tune; masks unchanged)",
    )
    sp.add_argument("run_dir")
    sp.add_argument("--data", help="data folder (default: the one the run was trained on)")
    sp.add_argument(
        "--limit", type=whole_number(1, 10**7, "--limit"), help="use a group-stratified subset of N images per split"
    )
    checkpoint_option(sp)
    device_option(sp)
    common_options(sp)
    sp.set_defaults(func=cmd_calibrate)

    sp = sub.add_parser("sweep", help="run a grid or list of trials; leaderboard, comparison plots; resumable")
    sp.add_argument("spec", nargs="?", help="a sweep YAML file or a shipped spec name (see --list)")
    sp.add_argument("--data", help="data folder (a COVID-QU-Ex copy or a synthetic set)")
    sp.add_argument("-o", "--out", help="sweep folder; run again to continue an interrupted sweep")
    sp.add_argument("--scale", help="scale every trial down by a named rule of the spec (e.g. cpu)")
    sp.add_argument("--sort-by", help="leaderboard metric (default: the spec's sort_by)")
    sp.add_argument(
        "--cache-dir",
        help="where decoded arrays are cached for every trial (default $COVIDSEG_CACHE_DIR, else ~/.cache/covidseg)",
    )
    sp.add_argument("--device", help="train.device for every trial")
    sp.add_argument("--list", action="store_true", help="list the shipped specs")
    common_options(sp)
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("report", help="Markdown and self-contained HTML report of runs and sweeps")
    sp.add_argument("inputs", nargs="+", help="run folders and/or sweep folders")
    sp.add_argument("-o", "--out", required=True, help="report folder")
    common_options(sp)
    sp.set_defaults(func=cmd_report)
