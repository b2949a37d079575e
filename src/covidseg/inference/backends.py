"""Inference backends: a batch of preprocessed images -> logits, from PyTorch or onnxruntime.

Both take ``(N, 1, S, S)`` float32 images in [0, 1] and return ``(N, C, S, S)`` float32 logits,
always in fp32 (no autocast), so that evaluation, tuning and prediction compute the same
probabilities for the same image. With ``features=True`` they return ``(logits, features)``:
the pooled deepest encoder features of the same pass (:mod:`covidseg.inference.features`;
None for a network without an encoder module).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from covidseg.errors import CovidsegError
from covidseg.inference.features import onnx_with_features, pool, torch_hook

# (N, 1, S, S) float32 images -> (N, C, S, S) float32 logits
Backend = Callable[[np.ndarray], np.ndarray]
# the same -> (logits, (N, D) pooled features or None)
FeatureBackend = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def torch_backend(model: torch.nn.Module, device: torch.device, features: bool = False) -> Backend | FeatureBackend:
    model = model.to(device).float().eval()
    hook = torch_hook(model) if features else None

    @torch.no_grad()
    def run(x: np.ndarray):
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)).float().cpu().numpy()
        if not features:
            return logits
        return logits, (pool(hook[0][0].float().cpu().numpy()) if hook is not None else None)

    return run


def onnx_backend(path: str | Path, threads: int | None = None, features: bool = False) -> Backend | FeatureBackend:
    """An onnxruntime session on the CPU with every graph optimisation on."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        raise CovidsegError("running an exported bundle needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    try:
        model, found = onnx_with_features(path) if features else (str(path), False)
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx and onnxruntime raise their own exception types
        raise CovidsegError(f"{path}: not a loadable ONNX model ({str(exc)[:200]})") from None
    name = session.get_inputs()[0].name
    wanted = [o.name for o in session.get_outputs()][: 2 if found else 1]  # logits (and features)

    def run(x: np.ndarray):
        out = session.run(wanted, {name: np.ascontiguousarray(x, dtype=np.float32)})
        if not features:
            return out[0]
        return out[0], (pool(out[1]) if found else None)

    return run


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Probabilities from logits, float32, without overflow warnings."""
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)
