"""Prediction on new X-rays: ``Predictor.from_run(run_dir).predict(image) -> mask``.

The image goes through the training preprocessing (gray, SxS bilinear, [0, 1]); the
probability map is resized back to the input's original size (bilinear) and thresholded, so
the mask lines up with the file the user gave.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from covidseg.data.image_io import IMAGE_SUFFIXES, preprocess_image, read_gray8
from covidseg.engine.checkpoint import load_run
from covidseg.engine.device import resolve_device
from covidseg.engine.evaluate import predict_probs
from covidseg.errors import CovidsegError, DataError
from covidseg.postprocess import Postprocess, load_postprocess
from covidseg.progress import Progress, silent

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 {0, 1} at the input's size
    probability: np.ndarray  # (H, W) float32 in [0, 1] at the input's size

    @property
    def infected_fraction(self) -> float:
        return float(self.mask.mean())


class Predictor:
    """A trained model with its preprocessing and threshold."""

    def __init__(self, model: nn.Module, image_size: int, post: Postprocess | float, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.image_size = image_size
        self.post = post if isinstance(post, Postprocess) else Postprocess(threshold=float(post))
        self.device = device

    @property
    def threshold(self) -> float:
        return self.post.threshold

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
        return cls(model, cfg.data.image_size, post, dev)

    @torch.no_grad()
    def predict(self, gray8: np.ndarray) -> Prediction:
        """Segment one 8-bit gray image of any size (see :func:`covidseg.data.image_io.read_gray8`)."""
        if gray8.ndim != 2:
            raise ValueError(f"expected a 2-D gray image, got shape {gray8.shape}")
        x = torch.from_numpy(preprocess_image(gray8, self.image_size))[None, None].to(self.device)
        _, prob_t = predict_probs(self.model, x, tta_hflip=self.post.tta_hflip)
        prob = prob_t[0, 0].cpu().numpy()
        h, w = gray8.shape
        if prob.shape != (h, w):
            prob = np.asarray(Image.fromarray(prob, mode="F").resize((w, h), Image.BILINEAR))
        mask = self.post.apply(prob, area_scale=h * w / self.image_size**2)
        return Prediction(mask, prob.astype(np.float32))


def list_inputs(path: str | Path) -> list[Path]:
    """One image file, or the image files of a folder (recursively), in sorted order."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise DataError(f"{p} does not exist")


def predict_paths(
    predictor: Predictor, inputs: str | Path, out_dir: str | Path, progress: Progress | None = None
) -> tuple[int, list[tuple[str, str]]]:
    """Predict every image under ``inputs`` into ``out_dir``.

    Per image ``<stem>_mask.png`` (0/255, original size) and ``<stem>_overlay.png``, and one line
    in ``predictions.jsonl`` with the infected fraction of the image. Unreadable files are reported
    and skipped; the rest go on.

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
                gray = read_gray8(f)
            except DataError as exc:
                skipped.append((str(f), str(exc)))
                log.warning("skipped %s", exc)
                continue
            pred = predictor.predict(gray)
            rel = f.relative_to(base).with_suffix("")
            stem = "__".join(rel.parts)
            mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
            Image.fromarray(pred.mask * 255).save(mask_path)
            Image.fromarray((overlay(gray, pred.mask) * 255).astype(np.uint8)).save(overlay_path)
            record = {
                "image": str(f),
                "width": gray.shape[1],
                "height": gray.shape[0],
                "infected_fraction": round(pred.infected_fraction, 6),
                "infected_pixels": int(pred.mask.sum()),
                "threshold": predictor.threshold,
                "mask": mask_path.name,
                "overlay": overlay_path.name,
            }
            lines.write(json.dumps(record) + "\n")
            lines.flush()
            done += 1
    if done == 0 and skipped:
        raise CovidsegError(f"none of the {len(files)} input file(s) could be read; see the warnings above")
    return done, skipped
