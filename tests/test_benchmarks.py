"""The scripts behind published comparisons, ``benchmarks/paired.py`` and
``benchmarks/dice_by_size.py``, on per-image tables whose answers are known by construction."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from covidseg.evaluation import write_rows

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def write_eval(folder: Path, rows: list[dict[str, object]]) -> Path:
    """A folder with ``per_image.csv`` written by ``covidseg evaluate``'s own writer (the columns
    the scripts read; None for an undefined value)."""
    folder.mkdir(parents=True)
    write_rows(rows, folder / "per_image.csv")
    return folder


def script(name: str, *args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def dice_rows(dice: np.ndarray, groups: list[str], lung: float) -> list[dict[str, object]]:
    return [
        {
            "id": f"x{i}",
            "group": g,
            "tp": 1,
            "fp": 0,
            "fn": 0,
            "tn": 1,
            "dice": None if np.isnan(d) else d,
            "lung_dice": lung,
        }
        for i, (d, g) in enumerate(zip(dice, groups, strict=True))
    ]


def line(out: str, label: str) -> tuple[float, float, float]:
    """Mean and interval of the line that starts with ``label``."""
    match = re.search(rf"^\s+{re.escape(label)}.*?([+-]\d\.\d+) \[([+-]\d\.\d+), ([+-]\d\.\d+)\]$", out, re.M)
    assert match, out
    return tuple(float(v) for v in match.groups())


def test_paired_difference_and_its_interval_per_subset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = ["COVID-19"] * 40 + ["Normal"] * 40
    a = rng.uniform(0.3, 0.9, 80)
    gain = np.where(np.array(groups) == "COVID-19", 0.1, 0.0)  # B gains 0.1 on COVID-19 X-rays only
    noise = rng.normal(0, 0.05, 80) * (np.array(groups) == "Normal")  # and differs by noise elsewhere
    a_dir = write_eval(tmp_path / "a", dice_rows(a, groups, 0.90))
    b_dir = write_eval(tmp_path / "b", dice_rows(a + gain + noise, groups, 0.92))
    done = script("paired.py", b_dir, a_dir, "--resamples", "2000")
    assert done.returncode == 0, done.stderr
    covid = line(done.stdout, "infection Dice, COVID-19 (40)")
    assert np.allclose(covid, 0.1, atol=1e-9)  # the same gain on every image: no spread
    mean, lo, hi = line(done.stdout, "infection Dice, negatives (40)")
    assert mean == round(float(noise[40:].mean()), 3) and lo < mean < hi and lo < 0 < hi
    assert line(done.stdout, "infection Dice, all images (80)")[0] == round(float((gain + noise).mean()), 3)
    assert np.allclose(line(done.stdout, "lung Dice, all images (80)"), 0.02, atol=1e-9)


def test_paired_leaves_out_undefined_images_and_refuses_different_ones(tmp_path: Path) -> None:
    groups = ["COVID-19"] * 4 + ["Normal"] * 4
    a = np.array([0.5, 0.5, 0.5, 0.5, 1.0, np.nan, 1.0, 1.0])
    b = np.array([0.6, 0.6, 0.6, 0.6, 0.0, 1.0, 1.0, 1.0])
    a_dir = write_eval(tmp_path / "a", dice_rows(a, groups, 0.9))
    done = script("paired.py", write_eval(tmp_path / "b", dice_rows(b, groups, 0.9)), a_dir, "--resamples", "500")
    assert done.returncode == 0, done.stderr
    assert line(done.stdout, "infection Dice, negatives (3 of 4)")[0] == round(-1 / 3, 3)
    other = write_eval(tmp_path / "c", dice_rows(b[:7], groups[:7], 0.9))
    refused = script("paired.py", other, a_dir)
    assert refused.returncode != 0 and "score different images (8 and 7; 1 differ)" in refused.stderr


def test_dice_by_size_cuts_every_model_at_the_first_ones_quartiles(tmp_path: Path) -> None:
    # 8 COVID-19 X-rays of 1000 pixels with true infections of 10..80 pixels; model A finds half of
    # each, model B all of the large ones and none of the small; a Normal X-ray is left out.
    truth = np.arange(1, 9) * 10

    def rows(found: np.ndarray) -> list[dict[str, object]]:
        out = [
            {"id": f"x{i}", "group": "COVID-19", "tp": f, "fp": 0, "fn": t - f, "tn": 1000 - t, "dice": 2 * f / (f + t)}
            for i, (t, f) in enumerate(zip(truth, found, strict=True))
        ]
        return out + [{"id": "n", "group": "Normal", "tp": 0, "fp": 0, "fn": 0, "tn": 1000, "dice": 1.0}]

    a_dir = write_eval(tmp_path / "a", rows(truth // 2))
    b_dir = write_eval(tmp_path / "b", rows(np.where(truth > 40, truth, 0)))
    done = script("dice_by_size.py", a_dir, b_dir)
    assert done.returncode == 0, done.stderr
    a_out, b_out = done.stdout.split(str(b_dir))
    assert "8 COVID-19 X-rays, per-image Dice 0.667" in a_out and a_out.count("Dice 0.667 (2 X-rays)") == 4
    assert "empty masks 0, Dice below 0.3 0" in a_out and "median 0.50" in a_out
    quartiles = re.findall(r"Dice (\d\.\d+) \((\d) X-rays\)", b_out)
    assert quartiles == [("0.000", "2"), ("0.000", "2"), ("1.000", "2"), ("1.000", "2")]
    assert "empty masks 4, Dice below 0.3 4" in b_out
