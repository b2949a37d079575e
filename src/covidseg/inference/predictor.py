"""``Predictor.load(run_or_bundle).predict(image) -> Prediction``: one X-ray in, final masks out.

The image goes through the training preprocessing (gray, S x S bilinear, [0, 1]); the
probability maps come back at the input's own size and are post-processed there
(:func:`covidseg.inference.postprocess.finalize`), so the masks line up with the file the user
gave. ``evaluate`` and ``tune`` score through the same :meth:`Predictor.probabilities` and
``finalize``. A run folder runs in PyTorch; an exported bundle runs in onnxruntime (or PyTorch
from its safetensors weights with ``engine="torch"``).

With a lung output the prediction also holds the lung mask, the infected share of each lung
and the severity grade (:mod:`covidseg.severity`); every infection model gives the image-level
COVID-19 call (:mod:`covidseg.detection`). A run or bundle calibrated by ``covidseg calibrate``
adds the input check (:mod:`covidseg.inference.input_check`), calibrated infection probabilities
and the COVID-19 probability (:mod:`covidseg.inference.calibration`); masks are the same with or
without them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidseg.config import Config
from covidseg.data.image_io import preprocess_image, read_xray_colour
from covidseg.engine.checkpoint import FILE_SHA256, load_run
from covidseg.engine.device import resolve_device
from covidseg.errors import CovidsegError
from covidseg.inference.backends import FeatureBackend, sigmoid, torch_backend
from covidseg.inference.builtin import resolve_model, sha256
from covidseg.inference.bundle import is_bundle, load_bundle, weights_file
from covidseg.inference.calibration import FILENAME as CALIBRATION_FILE
from covidseg.inference.calibration import Calibration, read_calibration
from covidseg.inference.input_check import FILENAME as CHECK_FILE
from covidseg.inference.input_check import InputCheck, lung_figures
from covidseg.inference.postprocess import Postprocess, finalize, load_postprocess, resolve_postprocess
from covidseg.severity import SeverityRule, quantify

log = logging.getLogger(__name__)


def changed_settings(fitted: Any, current: dict[str, Any]) -> list[str]:
    """The post-processing settings that differ from those a calibration was fitted with (none
    known for calibrations written before they were recorded)."""
    if not isinstance(fitted, dict):
        return []
    return sorted(k for k, v in current.items() if k in fitted and fitted[k] != v)


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 {0, 1} at the input's size: the first target (infection, or lung)
    probability: np.ndarray  # (H, W) float32 in [0, 1] at the input's size, as the network gave it
    lung: np.ndarray | None = None  # (H, W) uint8 lung mask, for models with a lung output
    severity: dict[str, Any] | None = None  # :func:`covidseg.severity.quantify` of mask and lung
    covid_call: bool | None = None  # image-level COVID-19 call (infection models)
    peak: float | None = None  # the image score: the COVID-19 head's probability, else the highest
    # uncalibrated infection probability (inside the lungs when known)
    covid_probability: float | None = None  # calibrated P(COVID-19), for calibrated models
    input_check: dict[str, Any] | None = None  # :meth:`InputCheck.assess`, for calibrated models
    calibration: Calibration | None = field(default=None, repr=False)

    @property
    def calibrated_probability(self) -> np.ndarray:
        """The infection probability after the model's calibration (computed on request: a few
        tens of milliseconds at 2000x2000); the network's own where the model has none.
        ``calibrated_probability > calibration.threshold(t)`` is exactly ``probability > t``."""
        return self.probability if self.calibration is None else self.calibration.pixels(self.probability)

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
        backend: FeatureBackend | torch.nn.Module,
        image_size: int,
        post: Postprocess | float,
        device: torch.device | None = None,
        targets: tuple[str, ...] = ("infection",),
        severity: SeverityRule | None = None,
        engine: str = "torch",
    ) -> None:
        if isinstance(backend, torch.nn.Module):
            backend = torch_backend(backend, device or torch.device("cpu"), features=True)
        self.backend = backend
        self.image_size = image_size
        self.post = post if isinstance(post, Postprocess) else Postprocess(threshold=float(post))
        self.targets = tuple(targets)
        self.severity = severity or SeverityRule()
        self.engine = engine
        self.name = ""  # the model's folder name, set by :meth:`load`
        self.sha256: str | None = None  # its weights file's SHA-256 (checkpoint or bundle), set by :meth:`load`
        self.calibration: Calibration | None = None
        self.check: InputCheck | None = None
        self.calibration_stale: list[str] = []  # post-processing settings changed since calibrate

    def attach_calibration(self, folder: str | Path, threshold_flag: float | None = None) -> None:
        """Use the calibration and input check that ``covidseg calibrate`` stored in ``folder``
        (``threshold_flag``: a threshold given for this use, not the model's own)."""
        found = read_calibration(folder)
        if found is None:
            return
        self.calibration, record = found
        if (Path(folder) / CHECK_FILE).is_file():
            self.check = InputCheck.load(Path(folder) / CHECK_FILE, record.get("input_check"))
        fitted = record.get("postprocess")
        self.calibration_stale = changed_settings(fitted, self.post.as_dict())
        retuned = [k for k in self.calibration_stale if not (k == "threshold" and threshold_flag is not None)]
        path = Path(folder) / CALIBRATION_FILE
        if retuned:
            log.warning(
                "%s: the COVID-19 probability was calibrated with other post-processing settings (%s changed "
                "since); run 'covidseg calibrate' on the run again",
                path, ", ".join(retuned),
            )  # fmt: skip
        elif self.calibration_stale:
            log.warning(
                "the COVID-19 probability was calibrated at threshold %s; at --threshold %s it is approximate",
                fitted["threshold"], threshold_flag,
            )  # fmt: skip

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
        """A run folder (PyTorch), an exported bundle (onnxruntime; ``engine="torch"``, or a bundle
        without ``model.onnx``, for PyTorch), or a built-in model by name (``None``: the default
        built-in model)."""
        path = resolve_model(path)
        if is_bundle(path):
            weights = weights_file(path)
            digest = None if weights is None else sha256(weights)
            if engine == "auto":  # onnxruntime where the bundle has its graph, else PyTorch on its weights
                has_graph = (path / "model.onnx").is_file() or not (path / "model.safetensors").is_file()
                engine = "onnx" if has_graph else "torch"
            predictor = cls.from_bundle(path, engine, threshold, postprocess)
            if postprocess:
                predictor.attach_calibration(path, threshold)
        elif engine == "onnx":
            raise CovidsegError(f"{path} is a run folder; onnxruntime needs a bundle from 'covidseg export'")
        else:
            predictor, _, state = open_run(path, checkpoint, device, threshold, postprocess)
            digest = state[FILE_SHA256]  # of the checkpoint's bytes as loaded
        predictor.name = path.resolve().name  # '.' names the folder it is
        predictor.sha256 = digest
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

    def run(self, images: np.ndarray, tta_hflip: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 1, S, S) float32 images in [0, 1] -> (N, C, S, S) float32 probabilities,
        flip-averaged when the settings keep flip TTA (or ``tta_hflip`` says so), and the (N, D)
        pooled encoder features of the unflipped pass (None without an encoder module)."""
        flip = self.post.tta_hflip if tta_hflip is None else tta_hflip
        logits, features = self.backend(images)
        prob = sigmoid(logits)
        if flip:
            mirrored = sigmoid(self.backend(np.ascontiguousarray(images[..., ::-1]))[0])[..., ::-1]
            prob = 0.5 * (prob + mirrored)
        return prob.astype(np.float32), features

    def probabilities(self, images: np.ndarray, tta_hflip: bool | None = None) -> np.ndarray:
        """The probabilities of :meth:`run` alone."""
        return self.run(images, tta_hflip)[0]

    def lung_figures(self, probs: np.ndarray, image: np.ndarray | None = None) -> dict[str, float] | None:
        """The input check's lung and image figures from one image's (C, S, S) probabilities and
        its (S, S) network input (lung output only)."""
        return lung_figures(probs[self.targets.index("lung")], image) if "lung" in self.targets else None

    def predict(self, image: np.ndarray | str | Path, colour: float = 0.0) -> Prediction:
        """Segment one X-ray: a file path (PNG, JPEG, TIFF, BMP, DICOM) or an 8-bit gray array of
        any size (see :func:`covidseg.data.image_io.read_xray`; ``colour``: the file's
        colourfulness, for the input check). When the input check finds no frontal chest X-ray,
        the masks are kept but the COVID-19 call, its probabilities and the severity grade are
        not given (:func:`withhold`): they would describe a picture the model was not made for."""
        if isinstance(image, (str, Path)):
            return self.predict_file(image)
        gray8 = np.asarray(image)
        if gray8.ndim != 2 or gray8.dtype != np.uint8 or min(gray8.shape) < 1:
            raise CovidsegError(f"expected a 2-D uint8 gray image, got shape {gray8.shape} of {gray8.dtype}")
        x = preprocess_image(gray8, self.image_size)
        probs, features = self.run(x[None, None])
        pred = self.from_probabilities(probs[0], gray8.shape)
        if self.check is not None:
            figures = self.lung_figures(probs[0], x)
            feats = None if features is None else features[0]
            pred.input_check = self.check.assess(feats, figures, gray8.shape, colour)
            if pred.input_check["verdict"] == "not_a_frontal_cxr":
                withhold(pred)
        return pred

    def predict_file(self, path: str | Path, max_pixels: int | None = None) -> Prediction:
        """Segment an X-ray file (PNG, JPEG, TIFF, BMP, DICOM) of at most ``max_pixels``."""
        return self.predict(*read_xray_colour(path, max_pixels))

    def from_probabilities(self, probs: np.ndarray, shape: tuple[int, int]) -> Prediction:
        """The prediction for an image of ``shape`` (H, W) from its (C, S, S) probabilities."""
        m = finalize(probs, shape, self.post, self.targets)
        if self.targets[0] == "lung":
            return Prediction(m.mask, m.probability, m.lung)
        severity = quantify(m.mask, m.lung, self.severity) if m.lung is not None else None
        peak = m.score if m.score is not None else float(Postprocess.peak(m.probability, m.lung))
        pred = Prediction(m.mask, m.probability, m.lung, severity, self.post.detected(m.mask), peak)
        if self.calibration is not None:
            pred.calibration = self.calibration
            pred.covid_probability = self.calibration.image_probability(pred.infected_fraction, peak)
        return pred


def withhold(pred: Prediction) -> None:
    """Set to None what a prediction says about the patient (the COVID-19 call, its probabilities,
    the severity scores and grade); what describes the masks (the infected shares) stays."""
    pred.covid_call, pred.covid_probability, pred.peak = None, None, None
    if pred.severity is not None:
        withheld = ("right_score", "left_score", "severity_score", "severity")
        pred.severity = {**pred.severity, **dict.fromkeys(withheld)}


def open_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    threshold: float | None = None,
    postprocess: bool = True,
    calibrated: bool = True,
) -> tuple[Predictor, Config, dict[str, Any]]:
    """A run's predictor (settings resolved: ``threshold`` > ``postprocess.json`` > config; its
    calibration unless ``calibrated`` is off), its config and its checkpoint state."""
    dev = resolve_device(device)
    model, cfg, state = load_run(run_dir, checkpoint, map_location=dev)
    saved = load_postprocess(run_dir) if postprocess else None
    post = resolve_postprocess(saved, cfg.eval.threshold, threshold)
    rule = SeverityRule.from_text(cfg.eval.severity_extent, cfg.eval.severity_grades)
    predictor = Predictor(model, cfg.data.image_size, post, dev, cfg.model.target_list, rule, "torch")
    if postprocess and calibrated:
        predictor.attach_calibration(run_dir, threshold)
    return predictor, cfg, state
