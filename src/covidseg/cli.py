"""The ``covidseg`` command: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from covidseg import __version__
from covidseg.errors import CovidsegError

log = logging.getLogger("covidseg")

# The definitions 'covidseg tune' can optimise (covidseg.tune.METRICS; kept here so that building
# the parser does not import torch).
TUNE_METRICS = ("per_image", "per_image_covid", "balanced", "pooled")


def _progress(enabled: bool):
    """A tqdm progress bar on stderr when it is a terminal (or forced with --progress)."""
    from tqdm.auto import tqdm

    def bar(iterable, *, desc: str = "", total: int | None = None):
        return tqdm(
            iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=not enabled, file=sys.stderr
        )

    return bar


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    root = logging.getLogger("covidseg")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    root.propagate = False


def _parse_sets(items: list[str]) -> dict[str, Any]:
    from covidseg.config import parse_value

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CovidsegError(f"--set expects KEY=VALUE (for example train.epochs=5), got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def _whole_number(low: int, high: int, what: str):
    """An argparse type: a whole number in ``low``..``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}-{high:,}, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number above 0 (and below a million), got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0, ``"60m"`` -> 3600.0, ``"1.5h"`` -> 5400.0 (seconds)."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = str(text).strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise CovidsegError(f"--time-budget expects a duration such as 90s, 60m or 1.5h, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise CovidsegError(f"--time-budget must be a positive duration, got {text!r}")
    return value


def _train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "data.root": str(Path(a.data).expanduser().resolve()) if a.data else None,
        "data.image_size": a.image_size,
        "data.cache_dir": a.cache_dir,
        "data.train_limit": a.train_limit,
        "data.val_limit": a.val_limit,
        "data.num_workers": a.workers,
        "train.epochs": a.epochs,
        "train.time_budget": parse_duration(a.time_budget) if a.time_budget else None,
        "train.batch_size": a.batch_size,
        "train.seed": a.seed,
        "train.device": a.device,
        "optim.lr": a.lr,
        "model.name": a.model,
        "model.encoder_name": a.encoder,
        "model.encoder_weights": a.encoder_weights,
    }
    out = {k: v for k, v in flags.items() if v is not None}
    out.update(_parse_sets(a.set))
    return out


def cmd_data(a: argparse.Namespace) -> int:
    from covidseg.data.discovery import discover

    d = discover(a.root)
    kind = "SYNTHETIC set written by 'covidseg synth' (a test fixture, not X-rays)" if d.synthetic else "X-rays"
    print(f"COVID-QU-Ex layout in {d.root}: {kind}")
    print(d.table())
    for path, reason in d.skipped[: a.show_skipped]:
        print(f"  skipped {path}: {reason}")
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from covidseg.data.synthetic import SynthSpec, write_synthetic

    spec = SynthSpec(train=a.train, val=a.val, test=a.test, seed=a.seed)
    root = write_synthetic(a.out, spec, _progress(a.progress))
    print(
        f"wrote a SYNTHETIC set in the COVID-QU-Ex layout ({a.train}/{a.val}/{a.test} Train/Val/Test phantoms, "
        f"marked by {root / 'SYNTHETIC.json'}) to {root}"
    )
    return 0


def cmd_compact(a: argparse.Namespace) -> int:
    from covidseg.data.compact import write_compact

    r = write_compact(a.source, a.out, tuple(a.splits), a.size, a.quality, _progress(a.progress))
    print(f"wrote {r.images} X-rays ({', '.join(r.splits)}) to {r.root}: {r.mib:.1f} MiB")
    print(f"JPEG quality {r.quality}: mean absolute pixel error {r.mean_abs_error:.2f}, largest {r.max_abs_error}")
    if r.skipped:
        print(f"left out {len(r.skipped)} unreadable or mismatched image(s); see compact.json")
    if a.max_mib is not None and r.mib > a.max_mib:
        print(f"error: the copy is {r.mib:.1f} MiB, over --max-mib {a.max_mib}; try a lower --quality", file=sys.stderr)
        return 1
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from covidseg.config import build_config
    from covidseg.engine.fit import fit, load_run_config

    out = Path(a.out)
    _setup_logging(a.verbose, out / "train.log")
    if a.resume:
        from covidseg.config import apply_overrides

        cfg = apply_overrides(load_run_config(out), _train_overrides(a))
    else:
        cfg = build_config(a.preset, a.config, _train_overrides(a), cuda_available=torch.cuda.is_available())
        if a.preset is None:
            log.info("no --preset given: using %r for this machine", cfg.preset)
    result = fit(cfg, out, resume=a.resume, progress=_progress(a.progress), argv=sys.argv)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return 0
    print(f"best {result.select_metric} {result.best_value:.4f} at epoch {result.best_epoch}; run folder: {out}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from covidseg.evaluation import evaluate_run

    _setup_logging(a.verbose)
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
        _progress(a.progress),
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
            f"ROC AUC {auc}  (call: infection on more than {100 * det['cutoff']:.3g}% of the image)"
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
    print(f"written to {Path(a.run_dir) / 'eval' / (s['split'] + (f'-{Path(a.bundle).name}' if a.bundle else ''))}")
    return 0


def _model_and_inputs(a: argparse.Namespace) -> tuple[str | None, str]:
    """``predict INPUTS`` (the built-in or ``--model`` model) or ``predict MODEL INPUTS``."""
    from covidseg.inference.bundle import is_bundle

    if len(a.paths) > 2:
        raise CovidsegError("predict takes one input (a file or a folder), optionally after the model")
    if len(a.paths) == 2:
        if a.model is not None:
            raise CovidsegError("name the model once: either --model or as the first argument")
        return a.paths[0], a.paths[1]
    only = Path(a.paths[0])
    if is_bundle(only) or (only / "checkpoints").is_dir():
        raise CovidsegError(f"{only} is a model (a bundle or run folder); give the X-ray file or folder after it")
    return a.model, a.paths[0]


def cmd_predict(a: argparse.Namespace) -> int:
    from covidseg.predict import Predictor, predict_paths

    _setup_logging(a.verbose)
    model, inputs = _model_and_inputs(a)
    predictor = Predictor.load(model, a.checkpoint, a.device, a.threshold, a.postprocess, a.engine)
    if model is None or not Path(model).exists():
        log.info("model: built-in %s", predictor.name)
    done, skipped = predict_paths(predictor, inputs, a.out, _progress(a.progress), a.max_pixels)
    print(
        f"predicted {done} image(s) into {a.out}" + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else "")
    )
    records = [json.loads(line) for line in (Path(a.out) / "predictions.jsonl").read_text().splitlines()]
    flagged = [r for r in records if (r.get("input_check") or {}).get("verdict", "ok") != "ok"]
    if flagged:
        print(f"the input check flagged {len(flagged)} image(s) as unusual or not a frontal chest X-ray "
              "(masks written, overlays framed; see input_check in predictions.jsonl)")  # fmt: skip
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from covidseg.export import export_bundle

    _setup_logging(a.verbose)
    out = export_bundle(a.run_dir, a.out, a.checkpoint, a.precision, not a.onnx_only)
    meta = json.loads((out / "metadata.json").read_text())
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(
        f"bundle written to {out}: {files} ({meta['weights_precision']} weights; ONNX vs PyTorch max logit "
        f"difference {meta['onnx_vs_torch_max_abs_logit_diff']:.2e})"
    )
    return 0


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
    _setup_logging(a.verbose, out / "sweep.log")
    rows = run_sweep(a.spec, a.data, out, a.scale, a.sort_by, a.cache_dir, a.device, _progress(a.progress))
    done = [r for r in rows if r["status"] == "done"]
    print(f"{len(done)} of {len(rows)} trials done; leaderboard: {out / 'leaderboard.md'}, {out / 'leaderboard.csv'}")
    return 0 if len(done) == len(rows) else 1


def cmd_report(a: argparse.Namespace) -> int:
    from covidseg.report.build import build_report

    _setup_logging(a.verbose)
    md, page = build_report(a.inputs, a.out)
    print(f"report written: {md} and {page} (self-contained; open it in a browser)")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from covidseg.demo import run_demo

    out = Path(a.out)
    _setup_logging(a.verbose, out / "demo.log")
    overrides = _parse_sets(a.set)
    if a.epochs is not None:
        overrides["train.epochs"] = a.epochs
    t0 = time.perf_counter()
    r = run_demo(out, overrides, progress=_progress(a.progress), argv=sys.argv)
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
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from covidseg.inference.builtin import builtin_names, describe
    from covidseg.models import list_models

    print("built-in models (trained, ready for 'covidseg predict XRAY --out DIR' and 'covidseg serve'):")
    for name in builtin_names():
        d = describe(name)
        seg = (d["val_metrics"] or {}).get("per_image_covid", {}).get("dice")
        figure = f", Val Dice {seg:.3f} over COVID-19 images" if seg is not None else ""
        default = " (default)" if d["default"] else ""
        print(f"  {name}{default}: {d['title']}")
        print(
            f"    outputs {'+'.join(d['outputs'])}, input {d['image_size']}x{d['image_size']}, "
            f"{d['size_bytes'] / 1e6:.1f} MB ({d['weights_precision']} weights){figure}"
        )
        print(f"    model card: {Path(d['path']) / 'MODEL_CARD.md'}")
    if not builtin_names():
        print("  none installed")
    print("\narchitectures to train (model.name):")
    for name, desc in list_models().items():
        print(f"  {name:<22} {desc}")
    if a.encoders:
        from covidseg.models.smp_models import encoder_names

        print("\nencoders for smp-* models (model.encoder_name):")
        print("  " + ", ".join(encoder_names()))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from covidseg.inference.builtin import describe_bundle, resolve_model
    from covidseg.inference.bundle import is_bundle
    from covidseg.predict import Predictor
    from covidseg.serve.app import LOOPBACK_HOSTS, Limits, create_app

    _setup_logging(a.verbose)
    path = resolve_model(a.model)
    predictor = Predictor.load(path)
    card = describe_bundle(path) if is_bundle(path) else {"name": path.name, "kind": "run folder"}
    card.pop("path", None)  # the server's folders are not the client's business
    card["covidseg_version"] = __version__
    limits = Limits(int(a.max_upload_mb * 1e6), a.max_pixels, a.queue)
    loopback = a.host in LOOPBACK_HOSTS
    app = create_app(predictor, card, limits, LOOPBACK_HOSTS if loopback else None)
    _check_listen(a.host, a.port)
    print(f"covidseg viewer on http://{a.host}:{a.port}/ (model {predictor.name}); Ctrl-C stops it")
    uvicorn.run(app, host=a.host, port=a.port, log_level="info" if a.verbose else "warning")
    return 0


def _check_listen(host: str, port: int) -> None:
    """Fail with one line, before the server starts, when the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        raise CovidsegError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def cmd_tune(a: argparse.Namespace) -> int:
    from covidseg.tune import tune_postprocess

    _setup_logging(a.verbose)
    _, record = tune_postprocess(
        a.run_dir, a.data, a.metric, a.limit, a.device, a.checkpoint, _progress(a.progress), a.cross_fit
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

    _setup_logging(a.verbose)
    r = calibrate_run(a.run_dir, a.data, "Val", a.checkpoint, a.device, None, a.limit, None, _progress(a.progress))
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


def cmd_presets(a: argparse.Namespace) -> int:
    from covidseg.config import PRESET_HELP, PRESETS

    for name, over in PRESETS.items():
        print(f"{name}: {PRESET_HELP[name]}")
        if a.verbose:
            settings = ", ".join(f"{k}={v}" for k, v in over.items()) or "(the reference settings)"
            print(textwrap.fill(settings, 100, initial_indent="    ", subsequent_indent="    "))
    if not a.verbose:
        print("\n(--verbose lists every preset's settings)")
    return 0


def _checkpoint_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="the run's best or last checkpoint (default best)",
    )


def _device_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: CUDA when present)")


def _common(sp: argparse.ArgumentParser) -> None:
    """The options every long-running command takes."""
    sp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="show progress bars (default: when stderr is a terminal)",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _data_parsers(sub: Any) -> None:
    """The parsers of data, synth, compact."""
    sp = sub.add_parser("data", help="count the images of a COVID-QU-Ex folder per split and group")
    sp.add_argument("root", help="the dataset root, its 'Infection Segmentation Data' folder, or the nested form")
    sp.add_argument("--show-skipped", type=int, default=20, metavar="N", help="list up to N skipped files (default 20)")
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("synth", help="write a synthetic chest X-ray set in the COVID-QU-Ex layout")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--train", type=int, default=96, help="Train images (default 96)")
    sp.add_argument("--val", type=int, default=32, help="Val images (default 32)")
    sp.add_argument("--test", type=int, default=32, help="Test images (default 32)")
    sp.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    _common(sp)
    sp.set_defaults(func=cmd_synth)

    sp = sub.add_parser(
        "compact", help="a small copy of a COVID-QU-Ex folder (JPEG X-rays, 1-bit PNG masks) to carry elsewhere"
    )
    sp.add_argument("source", help="a COVID-QU-Ex folder (any accepted root)")
    sp.add_argument("out", help="new, empty output folder")
    sp.add_argument(
        "--splits", nargs="+", default=["Train", "Val"], choices=["Train", "Val", "Test"], help="(default Train Val)"
    )
    sp.add_argument("--size", type=int, default=256, help="side in pixels the X-rays are resized to (default 256)")
    sp.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default 90)")
    sp.add_argument("--max-mib", type=float, help="exit with status 1 when the copy is larger than this")
    _common(sp)
    sp.set_defaults(func=cmd_compact)


def _train_parser(sub: Any) -> None:
    """The parsers of train."""
    sp = sub.add_parser("train", help="train a model into a run folder")
    sp.add_argument("--data", help="data folder (COVID-QU-Ex layout)")
    sp.add_argument("-o", "--out", required=True, help="run folder to create (or continue with --resume)")
    sp.add_argument(
        "--preset",
        help="reference, reference-cpu, cpu (recommended without a GPU), gpu or demo; see 'covidseg presets' "
        "(default: reference on a GPU, reference-cpu on a CPU)",
    )
    sp.add_argument("-c", "--config", help="YAML file with config sections, applied over the preset")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    sp.add_argument("--epochs", type=int, help="epochs to train (with --time-budget: the most epochs)")
    sp.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="finish within this time, e.g. 60m or 90s: the run measures its speed and lays the learning-rate "
        "schedule over the steps that fit (train.time_budget, in seconds)",
    )
    sp.add_argument("--batch-size", type=int, help="images per step (train.batch_size)")
    sp.add_argument("--image-size", type=int, help="network input size in pixels, a multiple of 8 (data.image_size)")
    sp.add_argument("--lr", type=float, help="learning rate (optim.lr)")
    sp.add_argument("--model", help="a name from 'covidseg models' (default unet, the reference)")
    sp.add_argument("--encoder", help="encoder of an smp-* model (default resnet34)")
    sp.add_argument("--encoder-weights", help="pre-trained encoder weights of an smp-* model: imagenet (needs network)")
    sp.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    sp.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    sp.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    sp.add_argument("--train-limit", type=int, help="train on a group-stratified subset of N images")
    sp.add_argument("--val-limit", type=int, help="validate on a group-stratified subset of N images")
    sp.add_argument("--cache-dir", help="where decoded arrays are cached (default ~/.cache/covidseg)")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.weight_decay=1e-4 (repeatable)",
    )
    _common(sp)
    sp.set_defaults(func=cmd_train)


def _evaluate_parser(sub: Any) -> None:
    """The parsers of evaluate."""
    sp = sub.add_parser("evaluate", help="score a run on a split: summary.json, per_image.csv, prediction panel")
    sp.add_argument("run_dir")
    sp.add_argument("--data", help="data folder (default: the one the run was trained on)")
    sp.add_argument("--split", default="Val", choices=("Train", "Val", "Test"), help="default Val")
    _checkpoint_option(sp)
    sp.add_argument("--threshold", type=float, help="probability threshold (default: the run's, 0.5)")
    _device_option(sp)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--limit", type=int, help="evaluate a group-stratified subset of N images")
    sp.add_argument("--panel", type=int, default=6, help="examples in the prediction panel (default 6)")
    sp.add_argument(
        "--postprocess",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the run's tuned decisions (postprocess.json) when present (default yes)",
    )
    sp.add_argument(
        "--scored-at",
        default="native",
        choices=("native", "input"),
        help="native (default): masks as predict writes them, at each X-ray's own size, against the original "
        "mask files; input: at the network's input size against shrunk masks (for comparison only)",
    )
    sp.add_argument("--cache-dir")
    sp.add_argument("--bundle", help="score this bundle of the run (from 'covidseg export') in place of its checkpoint")
    _common(sp)
    sp.set_defaults(func=cmd_evaluate)


def _predict_parsers(sub: Any) -> None:
    """The parsers of predict, export."""
    sp = sub.add_parser(
        "predict",
        help="segment new X-rays (PNG, JPEG, TIFF, 16-bit, DICOM): masks, overlays, infected share, severity",
        usage="%(prog)s [MODEL] INPUTS -o OUT [options]",
    )
    sp.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="an image or DICOM file, or a folder of them; before it, optionally, the model (as --model)",
    )
    sp.add_argument("-o", "--out", required=True, help="output folder")
    sp.add_argument(
        "--model",
        help="a run folder, a bundle from 'covidseg export' or a built-in model's name "
        "(default: the built-in model; see 'covidseg models')",
    )
    sp.add_argument(
        "--max-pixels",
        type=_whole_number(1, 2**62, "--max-pixels"),
        help="refuse images above this many pixels, checked before decoding (default 50,000,000)",
    )
    _checkpoint_option(sp)
    sp.add_argument(
        "--threshold", type=float, help="probability threshold in (0, 1) (default: the model's tuned one, else 0.5)"
    )
    _device_option(sp)
    sp.add_argument(
        "--postprocess",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the run's tuned decisions (postprocess.json) when present (default yes)",
    )
    sp.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "torch", "onnx"),
        help="auto: onnxruntime for a bundle, PyTorch for a run folder",
    )
    _common(sp)
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("export", help="write a deployable bundle: safetensors weights, ONNX model, config, metadata")
    sp.add_argument("run_dir")
    sp.add_argument("-o", "--out", required=True, help="bundle folder (new or empty)")
    _checkpoint_option(sp)
    sp.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16"),
        help="how the weights are stored; fp16 halves the files, inference stays float32 (default fp32)",
    )
    sp.add_argument(
        "--onnx-only", action="store_true", help="leave out model.safetensors (the bundle then runs in onnxruntime)"
    )
    _common(sp)
    sp.set_defaults(func=cmd_export)


def _study_parsers(sub: Any) -> None:
    """The parsers of demo, tune, sweep, report."""
    sp = sub.add_parser("demo", help="the main job on synthetic data: synth, train, evaluate, figures")
    sp.add_argument("-o", "--out", default="covidseg-demo", help="output folder (default ./covidseg-demo)")
    sp.add_argument("--epochs", type=int, help="override the demo's epochs")
    sp.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key of the demo preset"
    )
    _common(sp)
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
    _checkpoint_option(sp)
    _device_option(sp)
    sp.add_argument(
        "--cross-fit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also estimate what tuning is worth on unseen images: choose on one half of Val, score on the "
        "other, both ways (default yes)",
    )
    _common(sp)
    sp.set_defaults(func=cmd_tune)

    sp = sub.add_parser(
        "calibrate",
        help="fit the input check on Train and calibrated probabilities on Val (after tune; masks unchanged)",
    )
    sp.add_argument("run_dir")
    sp.add_argument("--data", help="data folder (default: the one the run was trained on)")
    sp.add_argument(
        "--limit", type=_whole_number(1, 10**7, "--limit"), help="use a group-stratified subset of N images per split"
    )
    _checkpoint_option(sp)
    _device_option(sp)
    _common(sp)
    sp.set_defaults(func=cmd_calibrate)

    sp = sub.add_parser("sweep", help="run a grid or list of trials; leaderboard, comparison plots; resumable")
    sp.add_argument("spec", nargs="?", help="a sweep YAML file or a shipped spec name (see --list)")
    sp.add_argument("--data", help="data folder (a COVID-QU-Ex copy or a synthetic set)")
    sp.add_argument("-o", "--out", help="sweep folder; run again to continue an interrupted sweep")
    sp.add_argument("--scale", help="scale every trial down by a named rule of the spec (e.g. cpu)")
    sp.add_argument("--sort-by", help="leaderboard metric (default: the spec's sort_by)")
    sp.add_argument("--cache-dir")
    sp.add_argument("--device", help="train.device for every trial")
    sp.add_argument("--list", action="store_true", help="list the shipped specs")
    _common(sp)
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("report", help="Markdown and self-contained HTML report of runs and sweeps")
    sp.add_argument("inputs", nargs="+", help="run folders and/or sweep folders")
    sp.add_argument("-o", "--out", required=True, help="report folder")
    _common(sp)
    sp.set_defaults(func=cmd_report)


def _serve_parsers(sub: Any) -> None:
    """The parsers of serve, models, presets."""
    sp = sub.add_parser("serve", help="a local web viewer and JSON API: drop an X-ray, see the masks and numbers")
    sp.add_argument("model", nargs="?", help="a run folder, bundle or built-in model's name (default: built-in)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_whole_number(1, 65535, "a port"), default=8000)
    sp.add_argument("--max-upload-mb", type=_positive_float, default=32.0, help="largest upload (default 32 MB)")
    sp.add_argument(
        "--max-pixels",
        type=_whole_number(1, 2**62, "--max-pixels"),
        help="largest image, checked before decoding (default 50 MP)",
    )
    sp.add_argument(
        "--queue",
        type=_whole_number(1, 32, "the queue"),
        default=4,
        help="requests admitted at once, the running one included (1-32, default 4)",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="log every request")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("models", help="list the built-in trained models and the architectures to train")
    sp.add_argument("--encoders", action="store_true", help="also list the encoders of the smp-* models")
    sp.set_defaults(func=cmd_models)
    sp = sub.add_parser("presets", help="list the presets: what each is for")
    sp.add_argument("-v", "--verbose", action="store_true", help="also every preset's settings")
    sp.set_defaults(func=cmd_presets)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="covidseg", description="COVID-19 infection segmentation on chest X-rays.")
    p.add_argument("--version", action="version", version=f"covidseg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_parsers(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _predict_parsers(sub)
    _study_parsers(sub)
    _serve_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not logging.getLogger("covidseg").handlers:
        _setup_logging(getattr(a, "verbose", False))
    code = _run(a)
    if a.command == "train":
        from covidseg.engine.distributed import exit_worker, started_by_torchrun

        if started_by_torchrun():
            exit_worker(code)
    return code


def _check_out(a: argparse.Namespace) -> None:
    """A writing command's --out must be a folder (new or existing), never a file."""
    out = getattr(a, "out", None)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise CovidsegError(f"--out {out} is a file; give a folder")


def _run(a: argparse.Namespace) -> int:
    try:
        _check_out(a)
        return a.func(a)
    except CovidsegError as exc:
        if a.debug:
            raise
        print(f"covidseg: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away ('covidseg models | head'): nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return 0
    except OSError as exc:  # permission denied, a full or read-only disk, a path that is a file
        if a.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"covidseg: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "covidseg: interrupted; a training run continues with 'covidseg train --out RUN --resume'", file=sys.stderr
        )
        return 130
