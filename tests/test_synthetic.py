from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from covidseg.data.discovery import DATASET_FOLDER, discover
from covidseg.data.synthetic import SynthSpec, write_synthetic


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_masks_and_determinism(tmp_path: Path) -> None:
    spec = SynthSpec(train=8, val=4, test=4, min_side=80, max_side=120, seed=5)
    a = write_synthetic(tmp_path / "a", spec)
    b = write_synthetic(tmp_path / "b", spec)
    assert a.name == DATASET_FOLDER and _digest(a) == _digest(b)
    assert _digest(write_synthetic(tmp_path / "c", SynthSpec(8, 4, 4, 80, 120, seed=6))) != _digest(a)
    d = discover(tmp_path / "a")
    assert d.counts()["Train"] == {"COVID-19": 4, "Non-COVID": 2, "Normal": 2}
    sizes = set()
    for s in d.samples:
        img = np.asarray(Image.open(s.image))
        inf = np.asarray(Image.open(s.infection))
        lung = np.asarray(Image.open(s.lung))
        sizes.add(img.shape)
        assert img.shape == inf.shape == lung.shape and img.dtype == np.uint8
        assert set(np.unique(inf)) <= {0, 255} and lung.any()
        assert not (inf.astype(bool) & ~lung.astype(bool)).any()  # infection only inside the lung
        assert inf.any() == (s.group == "COVID-19")
    assert len(sizes) > 3  # sizes vary between images


def test_groups_look_different(tmp_path: Path) -> None:
    # COVID-19 opacities raise the lung's brightness; Normal lungs stay dark.
    write_synthetic(tmp_path, SynthSpec(train=8, val=0, test=0, seed=2))
    means: dict[str, list[float]] = {}
    for s in discover(tmp_path).samples:
        img = np.asarray(Image.open(s.image), dtype=float)
        lung = np.asarray(Image.open(s.lung)) > 0
        means.setdefault(s.group, []).append(img[lung].mean())
    assert min(means["COVID-19"]) > max(means["Normal"])
