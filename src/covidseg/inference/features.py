"""The encoder's deepest feature map, taken from the same forward pass that segments.

The input check (:mod:`covidseg.inference.input_check`) measures how far an image's features lie
from the X-rays the model was trained on. The features are the output of the network's
deepest encoder stage (the ``encoder`` module of segmentation-models-pytorch networks, the
``bottleneck`` of covidseg's own U-Net), averaged over a 2 x 2 grid of the image so that
coarse layout (top/bottom, left/right) counts as well as content:

- PyTorch: a forward hook on that module;
- onnxruntime: the graph output ``features``, which ``covidseg export`` writes beside ``logits``
  from the same hook. Bundles exported before that output existed (the built-in covidseg-v1
  among them) get the module's last tensor in the graph instead (its nodes are named after the
  module, ``/encoder/...``), added as a second output in memory when the session is built; export
  checked for them that this tensor gives PyTorch's features (a U-Net on a four-stage timm
  encoder ends its encoder with another tensor, so such a network needs the ``features`` output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FEATURE_MODULES = ("encoder", "bottleneck")
FEATURES_OUTPUT = "features"  # the ONNX graph output that holds the feature map
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


def onnx_with_features(path: str | Path) -> tuple[str | bytes, bool]:
    """The ONNX model at ``path``, for ``onnxruntime.InferenceSession``, with the deepest encoder
    feature map as its second graph output, and whether it has one: the path itself when the graph
    has the ``features`` output; else the model serialised with the encoder module's last tensor
    appended as an output (under its own name)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if [o.name for o in graph.output][1:2] == [FEATURES_OUTPUT]:
        return str(path), True
    for module in FEATURE_MODULES:
        nodes = [n for n in graph.node if n.name.startswith(f"/{module}/")]
        if nodes:
            tensor = nodes[-1].output[0]
            graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
            return model.SerializeToString(), True
    return model.SerializeToString(), False
