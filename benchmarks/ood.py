"""The input check against inputs no one tuned it on: how often it flags what is not a frontal chest X-ray.

In-distribution: every Val X-ray of a COVID-QU-Ex copy (the split the cut-offs were set on; the
cross-fitted false-flag share is in the model's calibration.json). Out-of-distribution families,
all built on this machine (nothing is downloaded):

- photographs and scientific images shipped inside scikit-image (``skimage/data``) and
  matplotlib (``mpl-data/sample_data``), and 20 of scikit-image's LFW face crops;
- Val X-rays turned 90 and 180 degrees, inverted, cut to one half (one lung), blurred to nothing
  (Gaussian, sigma 10% of the side);
- pure noise, blank images, and the synthetic phantoms of ``covidseg synth``.

Per family: n, ROC AUC of the check's score against the Val X-rays (1.0: every image of the
family scores above every X-ray), the share flagged (``unusual`` or ``not_a_frontal_cxr``) and
the share called ``not_a_frontal_cxr``; then the check's cost per image (the same predict with
and without it, in one run) and the CPU.

    python benchmarks/ood.py --data ../shared/data/covid-qu-ex                  # the built-in model
    python benchmarks/ood.py --data DATA --model RUN_OR_BUNDLE --markdown
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from covidseg.data.discovery import discover
from covidseg.data.image_io import read_xray, read_xray_colour
from covidseg.data.synthetic import SynthSpec, write_synthetic
from covidseg.detection import roc_auc
from covidseg.engine.device import cpu_info
from covidseg.inference.predictor import Predictor

SCIENCE = {"cell", "ihc", "microaneurysms", "retina", "moon", "hubble_deep_field", "phantom", "multipage", "coins"}


def sample_images() -> tuple[list[tuple[np.ndarray, float]], list[tuple[np.ndarray, float]]]:
    """(photographs, scientific images) from the packages' own sample folders, as 8-bit gray with
    the file's colourfulness, as predict reads a file."""
    import matplotlib
    import skimage.data

    photos, science = [], []
    folders = [Path(skimage.data.__file__).parent, Path(matplotlib.get_data_path()) / "sample_data"]
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".tif", ".gif"):
                continue
            try:
                gray = read_xray_colour(f)
            except Exception:  # noqa: BLE001 - a sample that does not decode is left out
                continue
            (science if f.stem.split("_")[0] in SCIENCE or f.stem in SCIENCE else photos).append(gray)
    faces = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy", allow_pickle=False)[:20]
    photos += [(np.asarray(Image.fromarray((255 * face).astype(np.uint8)).resize((200, 200))), 0.0) for face in faces]
    return photos, science


def transformed(xrays: list[np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    for x in xrays:
        yield "X-ray turned 90 degrees", np.rot90(x).copy()
        yield "X-ray turned 180 degrees", np.rot90(x, 2).copy()
        yield "X-ray inverted", 255 - x
        yield "X-ray cut to one half (one lung)", x[:, : x.shape[1] // 2].copy()
        yield (
            "X-ray blurred to nothing",
            ndimage.gaussian_filter(x.astype(np.float32), 0.1 * max(x.shape)).astype(np.uint8),
        )


def families(xrays: list[np.ndarray], rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, float]]:
    """(family, 8-bit gray image, its file's colourfulness)."""
    photos, science = sample_images()
    yield from (("photographs (skimage, matplotlib, LFW faces)", *p) for p in photos)
    yield from (("scientific images (skimage: cells, retina, moon, CT phantom, ...)", *s) for s in science)
    yield from ((name, x, 0.0) for name, x in transformed(xrays))
    for _ in range(20):
        yield "pure noise", rng.integers(0, 256, (256, 256), dtype=np.uint8), 0.0
    for level in np.linspace(0, 255, 10):
        yield "blank", np.full((256, 256), int(level), np.uint8), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), SynthSpec(train=0, val=30, test=0, seed=3))
        for s in discover(Path(tmp)).split("Val"):
            yield "synthetic phantoms (covidseg synth)", read_xray(s.image), 0.0


def check_cost(predictor: Predictor, gray: np.ndarray, repeats: int = 20) -> tuple[float, float]:
    """Median predict time (ms) with the input check and without it, interleaved in one run."""
    check = predictor.check
    with_, without = [], []
    predictor.predict(gray)
    for _ in range(repeats):
        for on, times in ((True, with_), (False, without)):
            predictor.check = check if on else None
            t0 = time.perf_counter()
            predictor.predict(gray)
            times.append(time.perf_counter() - t0)
    predictor.check = check
    return statistics.median(with_) * 1000, statistics.median(without) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a COVID-QU-Ex folder with Val")
    p.add_argument("--model", help="run folder, bundle or built-in name (default: the built-in model)")
    p.add_argument("--transformed", type=int, default=100, help="Val X-rays to transform (default 100)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args()
    predictor = Predictor.load(a.model)
    if predictor.check is None:
        raise SystemExit(f"{predictor.name} has no input check; run 'covidseg calibrate' on its run first")
    rng = np.random.default_rng(0)
    samples = discover(a.data).split("Val")
    val = [predictor.predict(read_xray(s.image)).input_check for s in samples]
    picks = rng.choice(len(samples), size=min(a.transformed, len(samples)), replace=False)
    xrays = [read_xray(samples[i].image) for i in sorted(picks)]
    found: dict[str, list[dict]] = {}
    for family, image, colour in families(xrays, rng):
        found.setdefault(family, []).append(predictor.predict(image, colour).input_check)
    val_scores = np.array([c["score"] for c in val])
    rows = [_row(f"Val X-rays ({len(val)}, the cut-off's own split)", val, None)]
    rows += [_row(name, checks, val_scores) for name, checks in found.items()]
    with_ms, without_ms = check_cost(predictor, xrays[0])
    cpu = cpu_info()
    _print(rows, predictor, a.markdown, with_ms, without_ms, cpu)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "check_ms": with_ms - without_ms, "cpu": cpu}, indent=2))


def _row(name: str, checks: list[dict], val_scores: np.ndarray | None) -> dict:
    scores = np.array([c["score"] for c in checks])
    auc = None
    if val_scores is not None:
        auc = roc_auc(np.concatenate([scores, val_scores]), np.r_[np.ones(len(scores)), np.zeros(len(val_scores))])
    return {
        "family": name,
        "n": len(checks),
        "auroc": auc,
        "flagged": float(np.mean([c["verdict"] != "ok" for c in checks])),
        "not_a_frontal_cxr": float(np.mean([c["verdict"] == "not_a_frontal_cxr" for c in checks])),
        "median_score": float(np.median(scores)),
    }


def _print(rows: list[dict], predictor: Predictor, markdown: bool, with_ms: float, without_ms: float, cpu: dict):
    where = f"{cpu['model']}, {cpu['summary']}"
    print(f"input check of {predictor.name} ({predictor.engine}); score 1 = the cut-off\n")
    head = ("family", "n", "ROC AUC vs Val", "flagged", "not a frontal CXR", "median score")
    table = [head] + [
        (r["family"], str(r["n"]), "-" if r["auroc"] is None else f"{r['auroc']:.3f}", f"{100 * r['flagged']:.1f}%",
         f"{100 * r['not_a_frontal_cxr']:.1f}%", f"{r['median_score']:.2f}")
        for r in rows
    ]  # fmt: skip
    if markdown:
        print("| " + " | ".join(head) + " |\n|---|" + "---:|" * (len(head) - 1))
        for r in table[1:]:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for r in table:
            print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(f"\ncost of the check per image: {with_ms - without_ms:.1f} ms (predict {with_ms:.1f} ms with it, "
          f"{without_ms:.1f} ms without; 256x256 X-ray, median of 20, interleaved) on {where}")  # fmt: skip


if __name__ == "__main__":
    main()
