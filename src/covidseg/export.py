"""``covidseg export RUN_DIR --out BUNDLE_DIR``: a self-describing bundle for deployment.

A bundle holds::

    BUNDLE_DIR/model.safetensors  the weights (safetensors: loading runs no code)
    BUNDLE_DIR/model.onnx         the same network for onnxruntime (input ``image``
                                  (N, 1, S, S) float32 in [0, 1]; output ``logits`` (N, C, S, S))
    BUNDLE_DIR/config.json        everything needed to use it: model spec and outputs,
                                  preprocessing, threshold and post-processing, severity rule
    BUNDLE_DIR/metadata.json      versions, shapes, source run and epoch, its Val metrics,
                                  and the largest ONNX vs PyTorch difference measured at export

``predict`` accepts a bundle in place of a run folder and runs ``model.onnx`` with
onnxruntime; :func:`load_bundle` with ``engine="torch"`` rebuilds the PyTorch model from the
safetensors weights instead.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg import __version__
from covidseg.engine.checkpoint import load_run
from covidseg.errors import CovidsegError
from covidseg.models import create_model
from covidseg.postprocess import Postprocess, load_postprocess
from covidseg.severity import SeverityRule

log = logging.getLogger(__name__)

FORMAT = "covidseg-bundle"
FORMAT_VERSION = 1
OPSET = 17


def is_bundle(path: str | Path) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


def export_onnx(model: torch.nn.Module, image_size: int, path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis."""
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, 1, image_size, image_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript;
        # it still exports these convolutional networks exactly (checked in metadata.json).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)


def _val_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "eval" / "Val" / "summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    keep = ("images", "threshold", "pooled", "per_image", "per_image_covid", "negatives_with_false_positives")
    out = {k: s[k] for k in keep if k in s}
    for k in ("lung", "detection"):
        if k in s:
            out[k] = {
                kk: s[k][kk] for kk in ("pooled", "per_image", "sensitivity", "specificity", "roc_auc") if kk in s[k]
            }
    out["checkpoint_epoch"] = s.get("epoch")
    return out


def export_bundle(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Write the bundle of ``RUN_DIR/checkpoints/<checkpoint>.pt`` into ``out_dir``; returns it."""
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out_dir)
    model, cfg, state = load_run(run_dir, checkpoint)
    model = model.float().eval()
    post = load_postprocess(run_dir, cfg.eval.threshold)
    if out.exists() and any(out.iterdir()):
        raise CovidsegError(f"{out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    size = cfg.data.image_size
    targets = list(cfg.model.target_list)

    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": FORMAT})
    export_onnx(model, size, out / "model.onnx")

    # Check the ONNX graph against PyTorch on a deterministic, image-like input.
    from covidseg.predict import onnx_backend

    x = np.random.default_rng(0).random((2, 1, size, size), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = onnx_backend(out / "model.onnx")(x)
    max_diff = float(np.abs(ref - got).max())

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": state["model_spec"],
        "outputs": targets,
        "preprocessing": {
            "image_size": size,
            "steps": [
                "decode to 8-bit gray (DICOM: rescale, window, MONOCHROME1 inverted; 16-bit: stretched)",
                f"resize to {size}x{size}, bilinear",
                "scale to [0, 1] (divide by 255)",
            ],
            "input": {"name": "image", "shape": ["batch", 1, size, size], "dtype": "float32"},
        },
        "postprocess": {k: v for k, v in asdict(post).items() if k != "steps"},
        "severity": {
            "extent": cfg.eval.severity_extent,
            "grades": cfg.eval.severity_grades,
            **SeverityRule.from_text(cfg.eval.severity_extent, cfg.eval.severity_grades).as_dict(),
        },
        "output": "logits per output channel; sigmoid gives probabilities",
    }
    import onnx
    import onnxruntime
    import safetensors

    metadata = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run_dir.resolve()),
        "checkpoint": checkpoint,
        "epoch": int(state["epoch"]),
        "versions": {
            "covidseg": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "safetensors": safetensors.__version__,
        },
        "onnx_opset": OPSET,
        "input_shape": ["batch", 1, size, size],
        "output_shape": ["batch", len(targets), size, size],
        "parameters": int(sum(v.numel() for v in weights.values())),
        "onnx_vs_torch_max_abs_logit_diff": max_diff,
        "val_metrics": _val_metrics(run_dir),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    log.info("wrote bundle %s (ONNX vs PyTorch max logit difference %.2e)", out, max_diff)
    return out


@dataclass
class Bundle:
    backend: Any
    image_size: int
    post: Postprocess
    targets: tuple[str, ...]
    severity: SeverityRule
    config: dict[str, Any]


def load_bundle(bundle_dir: str | Path, engine: str = "onnx") -> Bundle:
    """Open a bundle with onnxruntime (``engine="onnx"``) or PyTorch from its safetensors weights."""
    from covidseg.predict import onnx_backend, torch_backend

    d = Path(bundle_dir)
    if not is_bundle(d):
        raise CovidsegError(f"{d} is not a covidseg bundle (no config.json with format {FORMAT!r})")
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise CovidsegError(f"{d} was written by a newer covidseg (bundle format {cfg['format_version']})")
    if engine == "onnx":
        backend = onnx_backend(d / "model.onnx")
    elif engine == "torch":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        model = create_model(cfg["model_spec"])
        try:
            model.load_state_dict(load_file(str(d / "model.safetensors")))
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise CovidsegError(
                f"{d / 'model.safetensors'} does not fit the bundle's model: {str(exc)[:200]}"
            ) from None
        backend = torch_backend(model, torch.device("cpu"))
    else:
        raise CovidsegError(f"engine must be onnx or torch, got {engine!r}")
    post = Postprocess(**cfg["postprocess"])
    sev = cfg["severity"]
    return Bundle(
        backend,
        int(cfg["preprocessing"]["image_size"]),
        post,
        tuple(cfg["outputs"]),
        SeverityRule.from_text(sev["extent"], sev["grades"]),
        cfg,
    )
