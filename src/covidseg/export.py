"""``covidseg export RUN_DIR --out BUNDLE_DIR``: a self-describing bundle for deployment.

The format is described (and read) in :mod:`covidseg.inference.bundle`. ``predict`` accepts a
bundle in place of a run folder and runs ``model.onnx`` with onnxruntime. The bundle is written
into a temporary folder beside ``BUNDLE_DIR`` and renamed into place, so a failed export (a full
disk, say) leaves no half-written bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg import __version__
from covidseg.atomic import folder_in_place, sync_file, sync_folder, umask
from covidseg.engine.checkpoint import FILE_SHA256, load_run
from covidseg.errors import CovidsegError
from covidseg.inference.backends import onnx_backend, torch_backend
from covidseg.inference.bundle import FORMAT, FORMAT_VERSION
from covidseg.inference.calibration import FILENAME as CALIBRATION_FILE
from covidseg.inference.features import FEATURES_OUTPUT, feature_module, torch_hook
from covidseg.inference.input_check import FILENAME as CHECK_FILE
from covidseg.inference.postprocess import load_postprocess, resolve_postprocess
from covidseg.severity import SeverityRule

log = logging.getLogger(__name__)

OPSET = 17


class _WithFeatures(torch.nn.Module):
    """The network with its deepest encoder feature map (the input check's) as a second output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen, self.handle = torch_hook(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), self.seen[0]


def export_onnx(
    model: torch.nn.Module, image_size: int, path: str | Path, opset: int = OPSET, features: bool = True
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis: output ``logits`` and, for a network with
    an encoder module unless ``features=False``, ``features``
    (:data:`~covidseg.inference.features.FEATURES_OUTPUT`): the feature map the input check pools,
    so that onnxruntime gives the same tensor as PyTorch's hook."""
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, 1, image_size, image_size)
    net = _WithFeatures(model).eval() if features and feature_module(model) is not None else model
    names = ["logits", FEATURES_OUTPUT] if net is not model else ["logits"]
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript;
            # it still exports these convolutional networks exactly (checked in metadata.json).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (x,),
                str(path),
                input_names=["image"],
                output_names=names,
                dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        if net is not model:
            net.handle.remove()
    with torch.no_grad():
        shape = tuple(int(n) for n in model(x).shape[1:])
    _fix_output_shape(path, shape)
    return Path(path)


def _fix_output_shape(path: str | Path, shape: tuple[int, ...]) -> None:
    """Write the output's measured shape (batch, C, H, W) into the graph: the exporter leaves
    symbolic names for some networks (FPN, U-Net on smp encoders), which a reader cannot check."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    for d, value in zip(list(dims)[1:], shape):
        d.Clear()
        d.dim_value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def store_fp16(path: str | Path) -> int:
    """Store the float weights of an ONNX model as float16, each behind a Cast back to float32.

    The graph stays valid ONNX with float32 inputs and outputs; onnxruntime folds the casts when
    it opens the model, so inference runs in float32 from weights rounded to float16 (half the
    file). Returns the number of weights converted.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    converted, casts = 0, []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < 16:  # scalars and tiny constants (an epsilon) keep their exact value
            continue
        half = arr.astype(np.float16)
        if not np.isfinite(half).all():
            raise CovidsegError(f"weight {init.name} holds values beyond float16's range; export with fp32")
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__cast"))
        converted += arr.size
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return converted


def _val_metrics(run_dir: Path, checkpoint: str) -> dict[str, Any] | None:
    """The run's own Val evaluation of the checkpoint exported (``covidseg evaluate``), if any."""
    from covidseg.evaluation import eval_name

    path = run_dir / "eval" / eval_name("Val", checkpoint=checkpoint) / "summary.json"
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


def _bundle_config(state: dict[str, Any], cfg: Any, post: Any) -> dict[str, Any]:
    size = cfg.data.image_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": state["model_spec"],
        "outputs": list(cfg.model.target_list),
        "preprocessing": {
            "image_size": size,
            "steps": [
                "decode to 8-bit gray (DICOM: rescale, window, MONOCHROME1 inverted; 16-bit: stretched)",
                f"resize to {size}x{size}, bilinear",
                "scale to [0, 1] (divide by 255)",
            ],
            "input": {"name": "image", "shape": ["batch", 1, size, size], "dtype": "float32"},
        },
        "postprocess": post.as_dict(),
        "postprocess_steps": [
            "probabilities enlarged to the X-ray's own size (bilinear), then thresholded and cleaned there",
        ],
        "severity": {
            "extent": cfg.eval.severity_extent,
            "grades": cfg.eval.severity_grades,
            **SeverityRule.from_text(cfg.eval.severity_extent, cfg.eval.severity_grades).as_dict(),
        },
        "output": "logits per output channel; sigmoid gives probabilities",
    }


def _metadata(run_dir: Path, checkpoint: str, state: dict[str, Any], n_out: int, size: int, params: int) -> dict:
    import onnx
    import onnxruntime
    import safetensors

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_run": run_dir.resolve().name,  # the folder name only: no path of the machine that exported it
        "checkpoint": checkpoint,
        # which weights: evaluate tells a bundle of this run from another run's with the same settings
        "source_checkpoint_sha256": state[FILE_SHA256],  # of the bytes the weights were loaded from
        "epoch": int(state["epoch"]),
        "versions": {
            "covidseg": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "safetensors": safetensors.__version__,
            "segmentation_models_pytorch": _version("segmentation-models-pytorch"),
            "timm": _version("timm"),
        },
        "onnx_opset": OPSET,
        "input_shape": ["batch", 1, size, size],
        "output_shape": ["batch", n_out, size, size],
        "parameters": params,
        "val_metrics": _val_metrics(run_dir, checkpoint),
    }


def _onnx_difference(model: torch.nn.Module, path: Path, size: int) -> tuple[float, float, float | None]:
    """ONNX against PyTorch on a deterministic, image-like input, one pass of each: the largest
    logit difference; the largest logit magnitude (the scale that difference is judged against);
    and, for the input check, the largest difference between the pooled encoder features that
    onnxruntime finds in the graph and PyTorch's, relative to their largest magnitude (None for a
    network without an encoder module; infinite when the graph's tensor is not the same feature
    map: another shape)."""
    x = np.random.default_rng(0).random((2, 1, size, size), dtype=np.float32)
    ref, ref_feat = torch_backend(model, torch.device("cpu"), features=True)(x)
    got, got_feat = onnx_backend(path, features=True)(x)
    diff, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max())
    if ref_feat is None:
        return diff, scale, None
    if got_feat is None or got_feat.shape != ref_feat.shape:
        return diff, scale, float("inf")
    return diff, scale, float(np.abs(ref_feat - got_feat).max() / max(float(np.abs(ref_feat).max()), 1e-6))


def _version(package: str) -> str | None:
    """An installed package's version, or None (the network was built without it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


PRECISIONS = ("fp32", "fp16")
TRUST_FILES = (CALIBRATION_FILE, CHECK_FILE)


def export_bundle(
    run_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str = "best",
    precision: str = "fp32",
    safetensors: bool = True,
) -> Path:
    """Write the bundle of ``RUN_DIR/checkpoints/<checkpoint>.pt`` into ``out_dir``; returns it.

    ``precision="fp16"`` stores the weights as float16 (half the size; inference still runs in
    float32); ``safetensors=False`` leaves out the PyTorch weights (the bundle then runs with
    onnxruntime only).
    """
    if precision not in PRECISIONS:
        raise CovidsegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CovidsegError(f"{out} exists and is not an empty folder; choose another --out")
    model, cfg, state = load_run(run_dir, checkpoint)
    model = model.float().eval()
    post = resolve_postprocess(load_postprocess(run_dir), cfg.eval.threshold, None)
    size = cfg.data.image_size
    with folder_in_place(out) as tmp:
        mask = umask()
        dtype = torch.float16 if precision == "fp16" else None
        weights = {k: _stored(v, dtype) for k, v in model.state_dict().items()}
        if safetensors:
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        export_onnx(model, size, tmp / "model.onnx")
        if precision == "fp16":
            store_fp16(tmp / "model.onnx")
        meta = _metadata(run_dir, checkpoint, state, len(cfg.model.target_list), size, _count(weights))
        diff, scale, feat = _onnx_difference(model, tmp / "model.onnx", size)
        meta["onnx_vs_torch_max_abs_logit_diff"] = diff
        # fp32: kernels differ in rounding only (1e-3, or 1e-4 of the largest logit when larger);
        # fp16 weights keep about three digits (0.1, or 2e-3 of the largest logit when larger)
        if not diff < (max(0.1, 2e-3 * scale) if precision == "fp16" else max(1e-3, 1e-4 * scale)):
            raise CovidsegError(
                f"the exported ONNX model differs from PyTorch by {diff:.3g} in the logits (largest logit {scale:.3g})"
            )
        if (run_dir / CHECK_FILE).is_file():  # the bundle carries the input check: onnxruntime must see its features
            if feat is not None and not feat < (0.05 if precision == "fp16" else 1e-3):
                raise CovidsegError(
                    f"the encoder features of the input check differ between ONNX and PyTorch (relative {feat:.3g}); "
                    "this network's bundle cannot carry the input check of 'covidseg calibrate' (export a copy of "
                    "the run without input_check.npz to ship the network without it)"
                )
            meta["onnx_vs_torch_max_rel_feature_diff"] = feat
        meta["weights_precision"] = precision
        bundle_cfg = {**_bundle_config(state, cfg, post), "weights_precision": precision}
        for name in TRUST_FILES:  # the input check and calibration of 'covidseg calibrate'
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        bundle_cfg["files"] = sorted(f.name for f in tmp.iterdir())
        (tmp / "config.json").write_text(json.dumps(bundle_cfg, indent=2))
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():  # safetensors writes 0600; every file on the disk before the bundle is named
            f.chmod(0o666 & ~mask)
            sync_file(f)
        sync_folder(tmp)
    log.debug(
        "wrote bundle %s (ONNX vs PyTorch max logit difference %.2e)", out, meta["onnx_vs_torch_max_abs_logit_diff"]
    )
    return out


def _stored(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    v = v.detach().contiguous().cpu()
    return v.to(dtype) if dtype is not None and v.is_floating_point() else v


def _count(weights: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() for v in weights.values()))
