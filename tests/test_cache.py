from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidseg.data.cache import load_split
from covidseg.data.dataset import SegmentationDataset, stratified_subset
from covidseg.data.discovery import DATASET_FOLDER, discover


@pytest.fixture
def copy_root(synth_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    return root


def test_arrays_match_preprocessing_and_are_reused(copy_root: Path, tmp_path: Path) -> None:
    samples = discover(copy_root).split("Val")
    first = load_split(samples, 32, tmp_path / "c")
    assert first.images.shape == (8, 32, 32) and first.images.dtype == np.uint8
    assert set(np.unique(first.infection)) <= {0, 1} and first.has_lung.all()
    # COVID-19 samples carry infection; the others are empty.
    for s, m in zip(first.samples, first.infection):
        assert (m.sum() > 0) == (s.group == "COVID-19")
    again = load_split(samples, 32, tmp_path / "c")
    assert again.path == first.path and isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, first.images)
    ds = SegmentationDataset(again)
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and float(item["image"].max()) <= 1.0


@pytest.mark.parametrize(
    "name, bad",
    [("images", np.zeros((8, 16, 16), np.uint8)), ("infection", np.zeros((8, 32, 32), np.float32)),
     ("has_lung", np.ones(7, bool)), ("meta.json", '{"ids": 3}')],
)  # fmt: skip
def test_a_damaged_cache_is_decoded_again_not_used(copy_root: Path, tmp_path: Path, name: str, bad) -> None:
    samples = discover(copy_root).split("Val")
    first = load_split(samples, 32, tmp_path / "c")
    expected = {k: np.array(getattr(first, k)) for k in ("images", "infection", "lung", "has_lung")}
    if name == "meta.json":
        (first.path / name).write_text(bad)
    else:
        np.save(first.path / f"{name}.npy", bad)
    again = load_split(samples, 32, tmp_path / "c")
    assert again.path == first.path  # rebuilt in place
    for k, v in expected.items():
        got = getattr(again, k)
        assert got.shape == v.shape and got.dtype == v.dtype and np.array_equal(got, v)


def test_cache_key_follows_files_and_settings(copy_root: Path, tmp_path: Path) -> None:
    samples = discover(copy_root).split("Val")
    a = load_split(samples, 32, tmp_path / "c")
    assert load_split(samples, 40, tmp_path / "c").path != a.path  # other size, other key
    img = samples[0].image
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(img)
    mask = samples[0].infection
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(mask)
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(samples[0].lung)
    os.utime(img, ns=(1, 1))  # a changed mtime alone must also invalidate
    b = load_split(samples, 32, tmp_path / "c")
    assert b.path != a.path and b.images[0].max() == 0


def test_corrupt_and_mismatched_files_are_skipped_with_warning(copy_root: Path, tmp_path: Path, caplog) -> None:
    samples = discover(copy_root).split("Val")
    samples[0].image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(samples[1].infection)
    with caplog.at_level(logging.WARNING, logger="covidseg"):
        split = load_split(samples, 32, tmp_path / "c")
    assert len(split) == len(samples) - 2
    assert {p for p, _ in split.skipped} == {str(samples[0].image), str(samples[1].image)}
    assert samples[0].image.name in caplog.text and "infection mask is (10, 10)" in caplog.text
    # The decision is cached along with the arrays, and reported again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="covidseg"):
        assert len(load_split(samples, 32, tmp_path / "c")) == len(samples) - 2
    assert samples[0].image.name in caplog.text


def test_unwritable_cache_falls_back_to_memory(copy_root: Path, tmp_path: Path, caplog) -> None:
    # A cache folder that cannot be created (its parent is a file) stands for any unwritable place;
    # a permission test would not fail as root.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    samples = discover(copy_root).split("Val")
    with caplog.at_level(logging.WARNING, logger="covidseg"):
        split = load_split(samples, 32, blocker / "cache")
    assert split.path is None and len(split) == len(samples)
    assert "could not write the cache" in caplog.text


def test_stratified_subset_keeps_group_shares_and_is_seeded(synth_root: Path) -> None:
    samples = discover(synth_root / DATASET_FOLDER).split("Train")
    sub = stratified_subset(samples, 8, seed=3)
    assert len(sub) == 8
    groups = [s.group for s in sub]
    assert groups.count("COVID-19") == 4 and groups.count("Normal") == 2
    assert sub == stratified_subset(samples, 8, seed=3)
    assert stratified_subset(samples, None, 0) == samples
