"""The compact copy: same X-rays and masks in the same layout, JPEG the only loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidseg.cli import main
from covidseg.data.compact import write_compact
from covidseg.data.discovery import DATASET_FOLDER, discover
from covidseg.data.image_io import read_gray8, resize_image, resize_mask
from covidseg.errors import DataError


def test_copy_keeps_layout_masks_exactly_and_images_closely(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "compact"
    r = write_compact(synth_root, out, ("Train", "Val"), size=64, quality=90)
    src, copy = discover(synth_root, ("Train", "Val")), discover(out)
    assert sorted(s.id for s in copy.samples) == sorted(s.id for s in src.samples)
    assert copy.splits == ["Train", "Val"] and not copy.skipped
    assert r.images == len(src.samples) == 24 and r.counts == src.counts()
    assert r.bytes == sum(p.stat().st_size for p in (out / DATASET_FOLDER).rglob("*") if p.is_file())
    by_id = {s.id: s for s in copy.samples}
    errors = []
    for s in src.samples:
        c = by_id[s.id]
        assert c.image.suffix == ".jpg" and c.infection.suffix == ".png" and c.lung is not None
        # Masks are lossless: what training reads from the copy is what it reads from the source.
        assert np.array_equal(resize_mask(read_gray8(c.infection), 64), resize_mask(read_gray8(s.infection), 64))
        assert np.array_equal(resize_mask(read_gray8(c.lung), 64), resize_mask(read_gray8(s.lung), 64))
        img = read_gray8(c.image)
        assert img.shape == (64, 64)
        errors.append(np.abs(img.astype(int) - resize_image(read_gray8(s.image), 64).astype(int)).mean())
    assert 0 < np.mean(errors) < 5
    saved = json.loads((out / "compact.json").read_text())
    assert saved["quality"] == 90 and saved["images"] == 24
    assert saved["mean_abs_error"] == pytest.approx(np.mean(errors), abs=0.01)


def test_lower_quality_is_smaller_and_coarser(synth_root: Path, tmp_path: Path) -> None:
    hi = write_compact(synth_root, tmp_path / "hi", ("Val",), size=64, quality=95)
    lo = write_compact(synth_root, tmp_path / "lo", ("Val",), size=64, quality=30)
    assert lo.bytes < hi.bytes
    assert lo.mean_abs_error > hi.mean_abs_error


def test_unreadable_image_is_left_out_and_listed(synth_root: Path, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(synth_root, src)
    victim = sorted((src / DATASET_FOLDER / "Val" / "Normal" / "images").iterdir())[0]
    victim.write_bytes(b"not a png")
    r = write_compact(src, tmp_path / "out", ("Val",), size=64)
    assert r.images == 7 and len(r.skipped) == 1 and victim.name in r.skipped[0][0]


def test_an_interrupted_copy_leaves_nothing_behind(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    import covidseg.data.compact as compact

    real, written = compact._png1, []

    def png_then_interrupt(mask01: np.ndarray) -> bytes:  # Ctrl-C after five masks
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(1)
        return real(mask01)

    monkeypatch.setattr(compact, "_png1", png_then_interrupt)
    out = tmp_path / "out"
    out.mkdir()  # an empty folder may be the destination
    with pytest.raises(KeyboardInterrupt):
        write_compact(synth_root, out, ("Val",), size=64)
    assert written and list(tmp_path.iterdir()) == [out] and not any(out.iterdir())
    monkeypatch.undo()
    r = write_compact(synth_root, out, ("Val",), size=64)  # the same destination, now whole
    assert r.images == 8 and list(tmp_path.iterdir()) == [out] and discover(out).counts() == r.counts


def test_bad_destinations_and_settings_are_refused(synth_root: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an empty folder"):
        write_compact(synth_root, busy)
    assert (busy / "x.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="inside the source"):
        write_compact(synth_root, synth_root / DATASET_FOLDER / "copy")
    with pytest.raises(DataError, match="quality"):
        write_compact(synth_root, tmp_path / "q", quality=100)
    with pytest.raises(DataError, match="Infection Segmentation Data"):
        write_compact(tmp_path / "nowhere", tmp_path / "n")


def test_cli_reports_size_and_enforces_the_budget(synth_root: Path, tmp_path: Path, capsys) -> None:
    args = ["compact", str(synth_root), str(tmp_path / "a"), "--size", "64", "--splits", "Val", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 8 X-rays (Val)" in out and "MiB" in out and "mean absolute pixel error" in out
    assert main(["compact", str(synth_root), str(tmp_path / "b"), "--size", "64", "--max-mib", "0.001"]) == 1
    assert "over --max-mib" in capsys.readouterr().err
    assert (tmp_path / "b" / "compact.json").is_file()  # the copy stays; only the budget failed
