"""Prediction on new X-rays: ``Predictor.load(run_or_bundle).predict(image) -> Prediction``.

The image goes through the training preprocessing (gray, SxS bilinear, [0, 1]); the
probability maps are resized back to the input's original size (bilinear) and post-processed
there, so the masks line up with the file the user gave. A run folder runs in PyTorch; an
exported bundle (:mod:`covidseg.export`) runs in onnxruntime (or PyTorch from its safetensors
weights with ``engine="torch"``).

With a lung output the prediction also holds the lung mask, the infected share of each lung
and the severity grade (:mod:`covidseg.severity`); every infection model gives the image-level
COVID-19 call (:mod:`covidseg.detection`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from covidseg.data.image_io import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom, preprocess_image, read_xray
from covidseg.engine.checkpoint import load_run
from covidseg.engine.device import resolve_device
from covidseg.errors import CovidsegError, DataError
from covidseg.postprocess import Postprocess, load_postprocess, lung_mask
from covidseg.progress import Progress, silent
from covidseg.severity import SeverityRule, quantify

log = logging.getLogger(__name__)

# (N, 1, S, S) float32 images -> (N, C, S, S) float32 logits
Backend = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 {0, 1} at the input's size: the first target (infection, or lung)
    probability: np.ndarray  # (H, W) float32 in [0, 1] at the input's size
    lung: np.ndarray | None = None  # (H, W) uint8 lung mask, for models with a lung output
    severity: dict[str, Any] | None = None  # :func:`covidseg.severity.quantify` of mask and lung
    covid_call: bool | None = None  # image-level COVID-19 call (infection models)

    @property
    def infected_fraction(self) -> float:
        return float(self.mask.mean())


def torch_backend(model: torch.nn.Module, device: torch.device) -> Backend:
    model = model.to(device).eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _resize_prob(prob: np.ndarray, h: int, w: int) -> np.ndarray:
    if prob.shape == (h, w):
        return prob
    return np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


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

    @property
    def threshold(self) -> float:
        return self.post.threshold

    @classmethod
    def load(
        cls,
        path: str | Path,
        checkpoint: str = "best",
        device: str = "auto",
        threshold: float | None = None,
        postprocess: bool = True,
        engine: str = "auto",
    ) -> Predictor:
        """A run folder (PyTorch) or an exported bundle (onnxruntime; ``engine="torch"`` for PyTorch)."""
        from covidseg.export import is_bundle

        if is_bundle(path):
            return cls.from_bundle(path, engine="onnx" if engine == "auto" else engine, threshold=threshold)
        if engine == "onnx":
            raise CovidsegError(f"{path} is a run folder; onnxruntime needs a bundle from 'covidseg export'")
        return cls.from_run(path, checkpoint, device, threshold, postprocess)

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
        dev = resolve_device(device)
        model, cfg, _ = load_run(run_dir, checkpoint, map_location=dev)
        post = load_postprocess(Path(run_dir) if postprocess else None, cfg.eval.threshold)
        if threshold is not None:
            post = replace(post, threshold=threshold)
        rule = SeverityRule.from_text(cfg.eval.severity_extent, cfg.eval.severity_grades)
        return cls(model, cfg.data.image_size, post, dev, cfg.model.target_list, rule, "torch")

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, engine: str = "onnx", threshold: float | None = None) -> Predictor:
        from covidseg.export import load_bundle

        b = load_bundle(bundle_dir, engine)
        post = b.post if threshold is None else replace(b.post, threshold=threshold)
        return cls(b.backend, b.image_size, post, None, b.targets, b.severity, engine)

    def probabilities(self, gray8: np.ndarray) -> np.ndarray:
        """(C, S, S) probabilities of one 8-bit gray image, flip-averaged when the run keeps flip TTA."""
        x = preprocess_image(gray8, self.image_size)[None, None]
        prob = _sigmoid(self.backend(x))
        if self.post.tta_hflip:
            flipped = _sigmoid(self.backend(np.ascontiguousarray(x[..., ::-1])))[..., ::-1]
            prob = 0.5 * (prob + flipped)
        return prob[0].astype(np.float32)

    def predict(self, gray8: np.ndarray) -> Prediction:
        """Segment one 8-bit gray image of any size (see :func:`covidseg.data.image_io.read_xray`)."""
        if gray8.ndim != 2:
            raise ValueError(f"expected a 2-D gray image, got shape {gray8.shape}")
        probs = self.probabilities(gray8)
        h, w = gray8.shape
        full = [_resize_prob(p, h, w) for p in probs]
        lung = lung_mask(full[self.targets.index("lung")]) if "lung" in self.targets else None
        if self.targets[0] == "lung":
            return Prediction(lung, full[0], lung)
        mask = self.post.apply(full[0], area_scale=h * w / self.image_size**2, lung=lung)
        severity = quantify(mask, lung, self.severity) if lung is not None else None
        return Prediction(mask, full[0], lung, severity, self.post.detected(mask))


def list_inputs(path: str | Path) -> list[Path]:
    """One file, or the image and DICOM files of a folder (recursively), in sorted order."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
        files = sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix.lower() in suffixes or is_dicom(f)))
        if not files:
            raise DataError(f"{p} holds no image or DICOM files ({', '.join(suffixes)})")
        return files
    raise DataError(f"{p} does not exist")


def predict_paths(
    predictor: Predictor, inputs: str | Path, out_dir: str | Path, progress: Progress | None = None
) -> tuple[int, list[tuple[str, str]]]:
    """Predict every image under ``inputs`` into ``out_dir``.

    Per image ``<stem>_mask.png`` (0/255, original size), ``<stem>_lung.png`` with a lung output,
    ``<stem>_overlay.png`` (infection red, lung outline), and one line in ``predictions.jsonl``:
    the infected share of the image, the COVID-19 call and, with a lung output, the infected
    share of each lung and the severity grade. Unreadable files are reported and skipped; the
    rest go on.

    Returns:
        (number predicted, [(file, reason) skipped]).
    """
    from covidseg.report.plots import overlay

    files = list_inputs(inputs)
    base = Path(inputs) if Path(inputs).is_dir() else Path(inputs).parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[str, str]] = []
    done = 0
    with (out / "predictions.jsonl").open("w") as lines:
        for f in (progress or silent)(files, desc="predict", total=len(files)):
            try:
                gray = read_xray(f)
            except DataError as exc:
                skipped.append((str(f), str(exc)))
                log.warning("skipped %s", exc)
                continue
            pred = predictor.predict(gray)
            rel = f.relative_to(base).with_suffix("")
            stem = "__".join(rel.parts)
            mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
            Image.fromarray(pred.mask * 255).save(mask_path)
            rgb = overlay(gray, pred.mask)
            record: dict[str, Any] = {
                "image": str(f),
                "width": gray.shape[1],
                "height": gray.shape[0],
                "target": predictor.targets[0],
                "infected_fraction": round(pred.infected_fraction, 6),
                "infected_pixels": int(pred.mask.sum()),
                "covid_call": pred.covid_call,
                "threshold": predictor.threshold,
                "engine": predictor.engine,
                "mask": mask_path.name,
            }
            if pred.lung is not None and predictor.targets[0] != "lung":
                lung_path = out / f"{stem}_lung.png"
                Image.fromarray(pred.lung * 255).save(lung_path)
                rgb = _outline(rgb, pred.lung)
                record["lung"] = lung_path.name
                record.update(pred.severity or {})
            Image.fromarray((rgb * 255).astype(np.uint8)).save(overlay_path)
            record["overlay"] = overlay_path.name
            lines.write(json.dumps(record) + "\n")
            lines.flush()
            done += 1
    if done == 0 and skipped:
        raise CovidsegError(f"none of the {len(files)} input file(s) could be read; see the warnings above")
    return done, skipped


def _outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[float, float, float] = (0.2, 0.6, 1.0)) -> np.ndarray:
    """Draw the border of ``mask`` into an RGB float image."""
    from scipy import ndimage

    m = mask.astype(bool)
    width = max(1, round(max(mask.shape) / 400))
    edge = m & ~ndimage.binary_erosion(m, iterations=width)
    out = rgb.copy()
    out[edge] = color
    return out
