"""The encoder's deepest feature map, taken from the same forward pass that segments.

The input check (:mod:`covidseg.inference.input_check`) measures how far an image's features lie
from the X-rays the model was trained on. The features are the output of the network's
deepest encoder stage (the ``encoder`` module of segmentation-models-pytorch networks, the
``bottleneck`` of covidseg's own U-Net), averaged over a 2 x 2 grid of the image so that
coarse layout (top/bottom, left/right) counts as well as content:

- PyTorch: a forward hook on that module;
- onnxruntime: the module's last tensor in the ONNX graph (its nodes are named after the module,
  ``/encoder/...``) is added as a second graph output when the session is built, in memory; the
  model file on disk is left as it is. ``covidseg export`` checks that this tensor gives
  PyTorch's features before a bundle carries the input check (a U-Net on a four-stage timm
  encoder does not: its export with an input check is refused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FEATURE_MODULES = ("encoder", "bottleneck")
GRID = 2


def feature_module(model: torch.nn.Module) -> str | None:
    """The name of the module whose output gives the features, or None when there is none."""
    names = dict(model.named_children())
    return next((n for n in FEATURE_MODULES if n in names), None)


def pool(maps: np.ndarray) -> np.ndarray:
    """(N, C, h, w) feature maps -> (N, C * GRID * GRID) float32: the mean over each cell of a
    GRID x GRID grid (cells of unequal size where h or w does not divide)."""
    maps = np.asarray(maps, dtype=np.float32)
    cells = [
        part.mean(axis=(2, 3))
        for rows in np.array_split(maps, GRID, axis=2)
        for part in np.array_split(rows, GRID, axis=3)
    ]
    return np.concatenate(cells, axis=1)


def torch_hook(model: torch.nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle] | None:
    """A list that receives the deepest feature map at every forward pass, and the hook's handle."""
    name = feature_module(model)
    if name is None:
        return None
    seen: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        out = output[-1] if isinstance(output, (list, tuple)) else output
        seen[:] = [out.detach()]

    return seen, getattr(model, name).register_forward_hook(keep)


def onnx_with_features(path: str | Path) -> tuple[bytes, bool]:
    """The ONNX model at ``path`` with the deepest encoder tensor as a second graph output (under
    its own name; serialised, for ``onnxruntime.InferenceSession``), and whether one was found."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    for module in FEATURE_MODULES:
        nodes = [n for n in graph.node if n.name.startswith(f"/{module}/")]
        if nodes:
            tensor = nodes[-1].output[0]
            graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
            return model.SerializeToString(), True
    return model.SerializeToString(), False
