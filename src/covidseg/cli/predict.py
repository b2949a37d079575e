"""``covidseg predict`` and ``export``."""

from __future__ import annotations

import argparse
import json
import logging
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
    whole_number,
)
from covidseg.errors import CovidsegError

log = logging.getLogger("covidseg")


def _model_and_inputs(a: argparse.Namespace) -> tuple[str | None, str]:
    """``predict INPUTS`` (the built-in or ``--model`` model) or ``predict MODEL INPUTS``."""
    from covidseg.inference.builtin import builtin_names, holds_a_model

    if len(a.paths) > 2:
        raise CovidsegError("predict takes one input (a file or a folder), optionally after the model")
    if len(a.paths) == 2:
        first = Path(a.paths[0])
        if first.exists() and not (holds_a_model(first) or a.paths[0] in builtin_names()):
            raise CovidsegError(
                f"predict takes one input (a file or a folder), optionally after the model; {first} is no model: "
                "put the X-rays in one folder and give that"
            )
        if a.model is not None:
            raise CovidsegError("name the model once: either --model or as the first argument")
        return a.paths[0], a.paths[1]
    only = Path(a.paths[0])
    if holds_a_model(only):
        raise CovidsegError(f"{only} is a model (a bundle or run folder); give the X-ray file or folder after it")
    return a.model, a.paths[0]


def cmd_predict(a: argparse.Namespace) -> int:
    from covidseg.inference.builtin import pretrained_root, resolve_model
    from covidseg.predict import Predictor, predict_paths

    setup_logging(a.verbose)
    model, inputs = _model_and_inputs(a)
    path = resolve_model(model)
    predictor = Predictor.load(path, a.checkpoint, a.device, a.threshold, a.postprocess, a.engine)
    if path.parent == pretrained_root():
        log.info("model: built-in %s", predictor.name)
    done, skipped, flagged = predict_paths(predictor, inputs, a.out, progress_bar(a.progress), a.max_pixels)
    print(
        f"predicted {done} image(s) into {a.out}" + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else "")
    )
    if flagged:
        print(f"the input check flagged {flagged} image(s) as unusual or not a frontal chest X-ray "
              "(masks written, overlays framed; see input_check in predictions.jsonl)")  # fmt: skip
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from covidseg.export import export_bundle

    setup_logging(a.verbose)
    out = export_bundle(a.run_dir, a.out, a.checkpoint, a.precision, not a.onnx_only)
    meta = json.loads((out / "metadata.json").read_text())
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(
        f"bundle written to {out}: {files} ({meta['weights_precision']} weights; ONNX vs PyTorch max logit "
        f"difference {meta['onnx_vs_torch_max_abs_logit_diff']:.2e})"
    )
    return 0


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
        type=whole_number(1, 2**62, "--max-pixels"),
        help="refuse images above this many pixels, checked before decoding (default 50,000,000)",
    )
    checkpoint_option(sp)
    threshold_option(sp)
    device_option(sp)
    postprocess_option(sp)
    sp.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "torch", "onnx"),
        help="auto: onnxruntime for a bundle (PyTorch for one without model.onnx), PyTorch for a run folder",
    )
    common_options(sp)
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("export", help="write a deployable bundle: safetensors weights, ONNX model, config, metadata")
    sp.add_argument("run_dir")
    sp.add_argument("-o", "--out", required=True, help="bundle folder (new or empty)")
    checkpoint_option(sp)
    sp.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16"),
        help="how the weights are stored; fp16 halves the files, inference stays float32 (default fp32)",
    )
    sp.add_argument(
        "--onnx-only", action="store_true", help="leave out model.safetensors (the bundle then runs in onnxruntime)"
    )
    common_options(sp)
    sp.set_defaults(func=cmd_export)
