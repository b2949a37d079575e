"""Inference backends: a batch of preprocessed images -> logits, from PyTorch or onnxruntime.

Both take ``(N, 1, S, S)`` float32 images in [0, 1] and return ``(N, C, S, S)`` float32 logits,
always in fp32 (no autocast), so that evaluation, tuning and prediction compute the same
probabilities for the same image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from covidseg.errors import CovidsegError

# (N, 1, S, S) float32 images -> (N, C, S, S) float32 logits
Backend = Callable[[np.ndarray], np.ndarray]


def torch_backend(model: torch.nn.Module, device: torch.device) -> Backend:
    model = model.to(device).float().eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)).float().cpu().numpy()

    return run


def onnx_backend(path: str | Path, threads: int | None = None) -> Backend:
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
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CovidsegError(f"{path}: not a loadable ONNX model ({str(exc)[:200]})") from None
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Probabilities from logits, float32, without overflow warnings."""
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)
