"""What ``evaluate`` and ``tune`` score: the masks ``predict`` writes, against the original mask files.

Scoring has two places, recorded as ``scored_at`` in ``summary.json``:

- ``native`` (the default): the probabilities are enlarged to each X-ray's own size and
  post-processed there, exactly as ``predict`` does (:func:`covidseg.inference.postprocess.finalize`),
  and compared with the mask files as stored (binarised at > 127), at their own size;
- ``input``: the older scoring at the network's input size S, against masks shrunk to S with
  nearest neighbour (the training cache). Kept only to compare the two.

The network input is the same in both: the image decoded as ``predict`` decodes it, resized to
S (the training cache).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from covidseg.data.dataset import SegmentationDataset
from covidseg.data.image_io import read_mask, to_unit
from covidseg.errors import ConfigError
from covidseg.inference.predictor import Predictor
from covidseg.progress import Progress, silent

SCORED_AT = ("native", "input")


@dataclass
class Truth:
    """The true masks of a split, per image: infection (H, W) bool, lung (H, W) bool or None."""

    infection: list[np.ndarray]
    lung: list[np.ndarray | None]
    scored_at: str

    def shape(self, k: int) -> tuple[int, int]:
        return self.infection[k].shape  # type: ignore[return-value]

    def sizes(self) -> dict[str, int]:
        """How many images of each size were scored, e.g. ``{"256x256": 932}``."""
        out: dict[str, int] = {}
        for m in self.infection:
            key = f"{m.shape[1]}x{m.shape[0]}"
            out[key] = out.get(key, 0) + 1
        return out


def load_truth(ds: SegmentationDataset, scored_at: str = "native", progress: Progress | None = None) -> Truth:
    """The true masks of ``ds``'s images: the original files (``native``) or the cache (``input``)."""
    if scored_at not in SCORED_AT:
        raise ConfigError(f"scored_at must be one of {list(SCORED_AT)}, got {scored_at!r}")
    split = ds.split
    if scored_at == "input":
        infection = [np.asarray(m).astype(bool) for m in split.infection]
        lung = [np.asarray(m).astype(bool) if h else None for m, h in zip(split.lung, split.has_lung)]
        return Truth(infection, lung, scored_at)
    infection, lung = [], []
    for s in (progress or silent)(split.samples, desc="read masks", total=len(split.samples)):
        infection.append(read_mask(s.infection))
        lung.append(read_mask(s.lung) if s.lung is not None else None)
    return Truth(infection, lung, scored_at)


def network_input(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 cached images -> the (N, 1, S, S) float32 batch ``predict`` would build."""
    return to_unit(np.asarray(images))[:, None]


def split_probabilities(
    predictor: Predictor,
    ds: SegmentationDataset,
    batch_size: int,
    tta_hflip: bool | None = None,
    progress: Progress | None = None,
    desc: str = "predict",
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, (C, S, S) probabilities) of every image of ``ds``, in order, through the predictor."""
    images = ds.split.images
    starts = range(0, len(images), batch_size)
    for start in (progress or silent)(starts, desc=desc, total=len(starts)):
        batch = network_input(images[start : start + batch_size])
        for j, probs in enumerate(predictor.probabilities(batch, tta_hflip)):
            yield start + j, probs
