"""``Predictor.load(run_or_bundle).predict(image) -> Prediction``: one X-ray in, final masks out.

The image goes through the training preprocessing (gray, S x S bilinear, [0, 1]); the
probability maps come back at the input's own size and are post-processed there
(:func:`covidseg.inference.postprocess.finalize`), so the masks line up with the file the user
gave. ``evaluate`` and ``tune`` score through the same :meth:`Predictor.probabilities` and
``finalize``. A run folder runs in PyTorch; an exported bundle runs in onnxruntime (or PyTorch
from its safetensors weights with ``engine="torch"``).

With a lung output the prediction also holds the lung mask, the infected share of each lung
and the severity grade (:mod:`covidseg.severity`); every infection model gives the image-level
COVID-19 call (:mod:`covidseg.detection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg.config import Config
from covidseg.data.image_io import preprocess_image, read_xray
from covidseg.engine.checkpoint import load_run
from covidseg.engine.device import resolve_device
from covidseg.errors import CovidsegError
from covidseg.inference.backends import Backend, sigmoid, torch_backend
from covidseg.inference.builtin import resolve_model
from covidseg.inference.bundle import is_bundle, load_bundle
from covidseg.inference.postprocess import Postprocess, finalize, load_postprocess, resolve_postprocess
from covidseg.severity import SeverityRule, quantify


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 {0, 1} at the input's size: the first target (infection, or lung)
    probability: np.ndarray  # (H, W) float32 in [0, 1] at the input's size
    lung: np.ndarray | None = None  # (H, W) uint8 lung mask, for models with a lung output
    severity: dict[str, Any] | None = None  # :func:`covidseg.severity.quantify` of mask and lung
    covid_call: bool | None = None  # image-level COVID-19 call (infection models)

    @property
    def infected_fraction(self) -> float:
        """Infected pixels over all pixels of the image, 0-1 (the image-level COVID-19 call's measure)."""
        return float(self.mask.mean())

    @property
    def image_infected_share_pct(self) -> float:
        """The same in percent, as ``predict`` and ``evaluate`` report it."""
        return round(100.0 * self.infected_fraction, 4)


class Predictor:
    """A trained model with its preprocessing, post-processing and severity rule."""

    def __init__(
        self,
        backend: Backend | torch.nn.Module,
        image_size: int,
        post: Postprocess | float,
        device: torch.device | None = None,
        targets: tuple[str, ...] = ("infection",),
        severity: SeverityRule | None = None,
        engine: str = "torch",
    ) -> None:
        if isinstance(backend, torch.nn.Module):
            backend = torch_backend(backend, device or torch.device("cpu"))
        self.backend = backend
        self.image_size = image_size
        self.post = post if isinstance(post, Postprocess) else Postprocess(threshold=float(post))
        self.targets = tuple(targets)
        self.severity = severity or SeverityRule()
        self.engine = engine
        self.name = ""  # the model's folder name, set by :meth:`load`

    @property
    def threshold(self) -> float:
        return self.post.threshold

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        checkpoint: str = "best",
        device: str = "auto",
        threshold: float | None = None,
        postprocess: bool = True,
        engine: str = "auto",
    ) -> Predictor:
        """A run folder (PyTorch), an exported bundle (onnxruntime; ``engine="torch"`` for PyTorch),
        or a built-in model by name (``None``: the default built-in model)."""
        path = resolve_model(path)
        if is_bundle(path):
            predictor = cls.from_bundle(path, "onnx" if engine == "auto" else engine, threshold, postprocess)
        elif engine == "onnx":
            raise CovidsegError(f"{path} is a run folder; onnxruntime needs a bundle from 'covidseg export'")
        else:
            predictor = cls.from_run(path, checkpoint, device, threshold, postprocess)
        predictor.name = path.name
        return predictor

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        checkpoint: str = "best",
        device: str = "auto",
        threshold: float | None = None,
        postprocess: bool = True,
    ) -> Predictor:
        """Load a run's model with its preprocessing and its tuned post-processing (if any)."""
        return open_run(run_dir, checkpoint, device, threshold, postprocess)[0]

    @classmethod
    def from_bundle(
        cls, bundle_dir: str | Path, engine: str = "onnx", threshold: float | None = None, postprocess: bool = True
    ) -> Predictor:
        b = load_bundle(bundle_dir, engine)
        post = resolve_postprocess(b.post if postprocess else None, 0.5, threshold)
        return cls(b.backend, b.image_size, post, None, b.targets, b.severity, engine)

    def probabilities(self, images: np.ndarray, tta_hflip: bool | None = None) -> np.ndarray:
        """(N, 1, S, S) float32 images in [0, 1] -> (N, C, S, S) float32 probabilities,
        flip-averaged when the settings keep flip TTA (or ``tta_hflip`` says so)."""
        flip = self.post.tta_hflip if tta_hflip is None else tta_hflip
        prob = sigmoid(self.backend(images))
        if flip:
            mirrored = sigmoid(self.backend(np.ascontiguousarray(images[..., ::-1])))[..., ::-1]
            prob = 0.5 * (prob + mirrored)
        return prob.astype(np.float32)

    def predict(self, image: np.ndarray | str | Path) -> Prediction:
        """Segment one X-ray: a file path (PNG, JPEG, TIFF, BMP, DICOM) or an 8-bit gray array of
        any size (see :func:`covidseg.data.image_io.read_xray`)."""
        if isinstance(image, (str, Path)):
            return self.predict_file(image)
        gray8 = np.asarray(image)
        if gray8.ndim != 2 or gray8.dtype != np.uint8 or min(gray8.shape) < 1:
            raise CovidsegError(f"expected a 2-D uint8 gray image, got shape {gray8.shape} of {gray8.dtype}")
        probs = self.probabilities(preprocess_image(gray8, self.image_size)[None, None])[0]
        return self.from_probabilities(probs, gray8.shape)

    def predict_file(self, path: str | Path, max_pixels: int | None = None) -> Prediction:
        """Segment an X-ray file (PNG, JPEG, TIFF, BMP, DICOM) of at most ``max_pixels``."""
        return self.predict(read_xray(path, max_pixels))

    def from_probabilities(self, probs: np.ndarray, shape: tuple[int, int]) -> Prediction:
        """The prediction for an image of ``shape`` (H, W) from its (C, S, S) probabilities."""
        m = finalize(probs, shape, self.post, self.targets)
        if self.targets[0] == "lung":
            return Prediction(m.mask, m.probability, m.lung)
        severity = quantify(m.mask, m.lung, self.severity) if m.lung is not None else None
        return Prediction(m.mask, m.probability, m.lung, severity, self.post.detected(m.mask))


def open_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    threshold: float | None = None,
    postprocess: bool = True,
) -> tuple[Predictor, Config, dict[str, Any]]:
    """A run's predictor (settings resolved: ``threshold`` > ``postprocess.json`` > config), its
    config and its checkpoint state."""
    dev = resolve_device(device)
    model, cfg, state = load_run(run_dir, checkpoint, map_location=dev)
    saved = load_postprocess(run_dir) if postprocess else None
    post = resolve_postprocess(saved, cfg.eval.threshold, threshold)
    rule = SeverityRule.from_text(cfg.eval.severity_extent, cfg.eval.severity_grades)
    return Predictor(model, cfg.data.image_size, post, dev, cfg.model.target_list, rule, "torch"), cfg, state
