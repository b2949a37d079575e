"""The exported bundle format: read and validate (written by :mod:`covidseg.export`).

A bundle holds::

    BUNDLE_DIR/model.safetensors  the weights (safetensors: loading runs no code); optional
                                  (``covidseg export --onnx-only``)
    BUNDLE_DIR/model.onnx         the same network for onnxruntime (input ``image``
                                  (N, 1, S, S) float32 in [0, 1]; output ``logits`` (N, C, S, S)
                                  and ``features``, the deepest encoder feature map that the
                                  input check pools; bundles without it, such as the built-in
                                  covidseg-v1, get the encoder's last graph tensor instead)
    BUNDLE_DIR/config.json        everything needed to use it: model spec and outputs,
                                  preprocessing, post-processing settings, severity rule,
                                  ``weights_precision`` (fp32, or fp16: weights stored as float16
                                  behind casts, inference in float32)
    BUNDLE_DIR/metadata.json      versions, shapes, source run, checkpoint (and its SHA-256) and
                                  epoch, its Val metrics, and the largest ONNX vs PyTorch
                                  difference measured at export

A bundle is untrusted input: every key of ``config.json`` is checked before use, and the ONNX
model's input and output shapes must match what the config says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from covidseg.errors import CovidsegError
from covidseg.inference.backends import FeatureBackend, onnx_backend, torch_backend
from covidseg.inference.postprocess import Postprocess
from covidseg.severity import SeverityRule

FORMAT = "covidseg-bundle"
FORMAT_VERSION = 2
TARGET_LISTS = (("infection",), ("lung",), ("infection", "lung"), ("infection", "lung", "covid"))


def is_bundle(path: str | Path) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def weights_file(path: str | Path) -> Path | None:
    """The file that names a bundle's network: ``model.onnx``, else ``model.safetensors``."""
    return next((Path(path) / f for f in ("model.onnx", "model.safetensors") if (Path(path) / f).is_file()), None)


@dataclass
class Bundle:
    backend: FeatureBackend
    image_size: int
    post: Postprocess
    targets: tuple[str, ...]
    severity: SeverityRule
    config: dict[str, Any]


def _image_size(cfg: dict[str, Any], where: str) -> int:
    size = cfg.get("preprocessing", {}).get("image_size") if isinstance(cfg.get("preprocessing"), dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096 or size % 8:
        raise CovidsegError(f"{where}: preprocessing.image_size must be a multiple of 8 in 16-4096, got {size!r}")
    return size


def _targets(cfg: dict[str, Any], where: str) -> tuple[str, ...]:
    outputs = cfg.get("outputs")
    if not isinstance(outputs, list) or tuple(outputs) not in TARGET_LISTS:
        raise CovidsegError(f"{where}: outputs must be one of {[list(t) for t in TARGET_LISTS]}, got {outputs!r}")
    return tuple(outputs)


def _severity(cfg: dict[str, Any], where: str) -> SeverityRule:
    sev = cfg.get("severity")
    if not isinstance(sev, dict) or not isinstance(sev.get("extent"), str) or not isinstance(sev.get("grades"), str):
        raise CovidsegError(f"{where}: severity must hold 'extent' and 'grades' as comma-separated numbers")
    try:
        return SeverityRule.from_text(sev["extent"], sev["grades"])
    except CovidsegError as exc:
        raise CovidsegError(f"{where}: {exc}") from None


def read_config(bundle_dir: str | Path) -> tuple[dict[str, Any], int, tuple[str, ...], Postprocess, SeverityRule]:
    """A bundle's ``config.json``, checked: the raw dict, image size, outputs, settings, severity rule."""
    d = Path(bundle_dir)
    where = str(d / "config.json")
    if not is_bundle(d):
        raise CovidsegError(f"{d} is not a covidseg bundle (no config.json with format {FORMAT!r})")
    cfg = json.loads((d / "config.json").read_text())
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CovidsegError(f"{d} was written by a newer covidseg (bundle format {version!r})")
    if version < FORMAT_VERSION:
        raise CovidsegError(f"{d} is an older bundle (format {version}); export it again with 'covidseg export'")
    if cfg.get("weights_precision", "fp32") not in ("fp32", "fp16"):
        raise CovidsegError(f"{where}: weights_precision must be fp32 or fp16, got {cfg.get('weights_precision')!r}")
    post = Postprocess.from_dict(cfg.get("postprocess"), f"{where}: postprocess")
    return cfg, _image_size(cfg, where), _targets(cfg, where), post, _severity(cfg, where)


def _check_onnx(path: Path, size: int, channels: int) -> None:
    """The ONNX graph takes (N, 1, S, S) and gives (N, C, S, S), as the config says."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        shapes = [
            [d.dim_value or None for d in v.type.tensor_type.shape.dim] for v in (graph.input[0], graph.output[0])
        ]
    except Exception as exc:  # onnx raises its own types for damaged files
        raise CovidsegError(f"{path}: not a loadable ONNX model ({str(exc)[:200]})") from None
    if shapes != [[None, 1, size, size], [None, channels, size, size]]:
        raise CovidsegError(
            f"{path}: the model takes {shapes[0]} and gives {shapes[1]}, but config.json says "
            f"[batch, 1, {size}, {size}] -> [batch, {channels}, {size}, {size}]"
        )


def load_bundle(bundle_dir: str | Path, engine: str = "onnx") -> Bundle:
    """Open a bundle with onnxruntime (``engine="onnx"``) or PyTorch from its safetensors weights."""
    d = Path(bundle_dir)
    cfg, size, targets, post, rule = read_config(d)
    if engine == "onnx":
        _check_onnx(d / "model.onnx", size, len(targets))
        backend = onnx_backend(d / "model.onnx", features=True)
    elif engine == "torch":
        backend = torch_backend(_torch_model(d, cfg), torch.device("cpu"), features=True)
    else:
        raise CovidsegError(f"engine must be onnx or torch, got {engine!r}")
    return Bundle(backend, size, post, targets, rule, cfg)


def _torch_model(d: Path, cfg: dict[str, Any]) -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from covidseg.models import create_model

    if not (d / "model.safetensors").is_file():
        raise CovidsegError(f"{d} holds no PyTorch weights (model.safetensors); run it with onnxruntime (engine onnx)")
    try:
        model = create_model(cfg["model_spec"])
        model.load_state_dict(load_file(str(d / "model.safetensors")))
    except (SafetensorError, RuntimeError, OSError, KeyError, TypeError, ValueError) as exc:
        raise CovidsegError(f"{d / 'model.safetensors'} does not fit the bundle's model: {str(exc)[:200]}") from None
    return model
