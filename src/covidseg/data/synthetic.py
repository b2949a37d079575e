"""A seeded synthetic chest X-ray set in the exact COVID-QU-Ex layout.

Every image has a body outline, two lung fields, ribs, a spine and a heart shadow, at a size
that varies between images. COVID-19 images carry patchy peripheral opacities, weighted to the
lower zones, with an infection mask that matches them inside the lung; Non-COVID images carry a
different pattern (a homogeneous upper-zone consolidation and perihilar streaks) with an empty
infection mask; Normal images carry none. Every image has a lung mask (the lung fields without
the heart). The same seed writes byte-identical files.

It serves the demo and the fast tests; it is not a stand-in for real data in any reported number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from covidseg.data.discovery import DATASET_FOLDER, GROUPS, IMAGES, INFECTION, LUNG, MARKER, MARKER_NOTE
from covidseg.errors import ConfigError, DataError
from covidseg.progress import Progress, silent

# Group shares follow the real data: half COVID-19, a quarter each Non-COVID and Normal.
SHARES = {"COVID-19": 0.5, "Non-COVID": 0.25, "Normal": 0.25}


@dataclass(frozen=True)
class SynthSpec:
    """How many images per split, and the range of image sides in pixels."""

    train: int = 96
    val: int = 32
    test: int = 32
    min_side: int = 200
    max_side: int = 320
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 100_000:
                raise ConfigError(f"--{name} must be a whole number of images in 0-100000, got {n!r}")
        if not 32 <= self.min_side <= self.max_side <= 4096:
            raise ConfigError(
                f"image sides must satisfy 32 <= min <= max <= 4096, got {self.min_side}, {self.max_side}"
            )
        if self.train + self.val + self.test == 0:
            raise ConfigError("--train, --val and --test are all 0: nothing to write")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    lo, hi = arr.min(), arr.max()
    return (arr - lo) / max(hi - lo, 1e-6)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def render(group: str, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic X-ray of ``group``: (image uint8, infection mask {0,255}, lung mask {0,255})."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    img = np.full((h, w), 0.06, np.float32)
    body = _ellipse(yy, xx, 0.55 + rng.normal(0, 0.01), 0.5, 0.52, 0.47 + rng.normal(0, 0.015)) < 1
    img[body] = 0.5

    # Lung fields, slightly different per image; the heart shadow sits between and below them.
    lungs = np.zeros((h, w), bool)
    lung_params = []
    for side in (-1, 1):
        cx = 0.5 + side * (0.18 + rng.normal(0, 0.01))
        cy = 0.45 + rng.normal(0, 0.015)
        ry, rx = 0.28 + rng.normal(0, 0.015), 0.13 + rng.normal(0, 0.008)
        lungs |= _ellipse(yy, xx, cy, cx, ry, rx) < 1
        lung_params.append((cy, cx, ry, rx))
    heart = _ellipse(yy, xx, 0.66 + rng.normal(0, 0.01), 0.54, 0.13, 0.15 + rng.normal(0, 0.01)) < 1
    lungs &= ~heart
    img[lungs] = 0.2
    img[heart & body] = 0.58

    # Ribs: bright curved bands across each lung; the spine: a bright vertical band.
    phase = rng.uniform(0, 0.04)
    for k in range(9):
        y0 = 0.18 + phase + 0.065 * k
        curve = y0 + 0.35 * (xx - 0.5) ** 2 + 0.02 * np.abs(xx - 0.5)
        band = np.abs(yy - curve) < 0.011
        img[band & body] += 0.11
    img[(np.abs(xx - 0.5) < 0.035) & body] += 0.22

    infection = np.zeros((h, w), bool)
    if group == "COVID-19":
        # Patchy, peripheral and basal: centres near the outer edge of a lung, mostly lower zone.
        for _ in range(int(rng.integers(3, 7))):
            cy, cx, ry, rx = lung_params[int(rng.integers(0, 2))]
            side = 1.0 if cx > 0.5 else -1.0
            py = cy + ry * rng.uniform(-0.2, 0.75)
            px = cx + side * rx * rng.uniform(0.3, 0.8)
            blob = _ellipse(yy, xx, py, px, rng.uniform(0.08, 0.16), rng.uniform(0.05, 0.1)) < 1
            patchy = _smooth_noise(rng, h, w, int(rng.integers(8, 14))) > 0.35
            infection |= blob & patchy & lungs
        texture = 0.55 + 0.45 * _smooth_noise(rng, h, w, 24)
        img[infection] += 0.28 * texture[infection]
    elif group == "Non-COVID":
        # A homogeneous upper-zone consolidation on one side plus fine perihilar streaks.
        cy, cx, ry, rx = lung_params[int(rng.integers(0, 2))]
        lobe = (_ellipse(yy, xx, cy - ry * 0.45, cx, ry * 0.35, rx * 0.8) < 1) & lungs
        img[lobe] += 0.15
        streaks = (np.sin(xx * rng.uniform(90, 130) + yy * 20) > 0.85) & (np.abs(xx - 0.5) < 0.17) & lungs
        img[streaks] += 0.08

    img += 0.05 * (_smooth_noise(rng, h, w, 32) - 0.5) + rng.normal(0, 0.015, (h, w)).astype(np.float32)
    img8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return img8, (infection * 255).astype(np.uint8), (lungs * 255).astype(np.uint8)


def _name(group: str, i: int) -> str:
    if group == "COVID-19":
        return f"covid_{i}.png"
    if group == "Non-COVID":
        # The real data mixes the capitalisation of this prefix; so does the synthetic set.
        return f"{'Non' if i % 7 == 0 else 'non'}_COVID ({i}).png"
    return f"Normal ({i}).png"


def write_synthetic(out_dir: str | Path, spec: SynthSpec | None = None, progress: Progress | None = None) -> Path:
    """Write the synthetic set under ``out_dir/Infection Segmentation Data`` and return that folder."""
    spec = spec or SynthSpec()
    progress = progress or silent
    root = Path(out_dir) / DATASET_FOLDER
    if _same_synthetic(root, spec):
        return root
    _refuse_overwrite(Path(out_dir))
    jobs = []
    for split, total in (("Train", spec.train), ("Val", spec.val), ("Test", spec.test)):
        counts = {g: int(total * SHARES[g]) for g in GROUPS}
        counts["COVID-19"] += total - sum(counts.values())
        for g in GROUPS:
            jobs += [(split, g, i) for i in range(1, counts[g] + 1)]
    for split, group, i in progress(jobs, desc="synth", total=len(jobs)):
        # Each image has its own generator, so one file does not depend on how many came before.
        rng = np.random.default_rng([spec.seed, ("Train", "Val", "Test").index(split), GROUPS.index(group), i])
        h, w = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
        img, inf, lung = render(group, rng, h, w)
        name = _name(group, i)
        for kind, arr in ((IMAGES, img), (INFECTION, inf), (LUNG, lung)):
            folder = root / split / group / kind
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / name)
    (root / MARKER).write_text(json.dumps({"note": MARKER_NOTE, "spec": asdict(spec)}, indent=2))
    return root


def _same_synthetic(root: Path, spec: SynthSpec) -> bool:
    """``root`` already holds the synthetic set of ``spec`` (written completely: the marker is last)."""
    try:
        return json.loads((root / MARKER).read_text()).get("spec") == asdict(spec)
    except (OSError, ValueError, AttributeError):
        return False


def _refuse_overwrite(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out} exists and is not empty; 'covidseg synth' writes only into a new or empty folder "
            "(COVID-QU-Ex uses the same file names, so writing into a real copy would replace X-rays)"
        )


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """A minimal uncompressed DICOM X-ray (12 bits stored in 16) of ``stored``, any ``tags`` set on
    top, to try DICOM reading (tests, ``benchmarks/fuzz.py``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
