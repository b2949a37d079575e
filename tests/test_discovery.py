from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from covidseg.data.discovery import DATASET_FOLDER, discover, find_dataset_folder
from covidseg.errors import DataError


def test_counts_per_split_and_group(synth_root: Path) -> None:
    d = discover(synth_root)
    assert d.counts() == {
        "Train": {"COVID-19": 8, "Non-COVID": 4, "Normal": 4},
        "Val": {"COVID-19": 4, "Non-COVID": 2, "Normal": 2},
        "Test": {"COVID-19": 4, "Non-COVID": 2, "Normal": 2},
    }
    assert all(s.lung is not None for s in d.samples)
    assert len({s.id for s in d.samples}) == len(d.samples)
    assert "Train" in d.table() and "16" in d.table()


def test_accepts_root_dataset_folder_and_nested_form(synth_root: Path, tmp_path: Path) -> None:
    inner = synth_root / DATASET_FOLDER
    assert find_dataset_folder(synth_root) == inner
    assert find_dataset_folder(inner) == inner
    nested = tmp_path / "download" / DATASET_FOLDER
    shutil.copytree(inner, nested / DATASET_FOLDER)
    assert find_dataset_folder(tmp_path / "download") == nested / DATASET_FOLDER
    assert find_dataset_folder(nested) == nested / DATASET_FOLDER
    assert len(discover(tmp_path / "download").samples) == len(discover(synth_root).samples)


def test_names_match_case_insensitively(tmp_path: Path, synth_root: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    group = root / DATASET_FOLDER / "Train" / "Non-COVID"
    img = sorted((group / "images").iterdir())[0]
    # Mask with a different capitalisation from its image, and a lower-case folder name.
    (group / "infection masks" / img.name).rename(group / "infection masks" / img.name.upper())
    (root / DATASET_FOLDER / "Train" / "Normal").rename(root / DATASET_FOLDER / "Train" / "normal")
    d = discover(root)
    assert d.counts()["Train"] == {"COVID-19": 8, "Non-COVID": 4, "Normal": 4}
    assert not d.skipped


def test_images_without_infection_mask_are_skipped_with_reason(tmp_path: Path, synth_root: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    masks = root / DATASET_FOLDER / "Val" / "COVID-19" / "infection masks"
    victim = sorted(masks.iterdir())[0]
    victim.unlink()
    (root / DATASET_FOLDER / "Val" / "COVID-19" / "images" / "notes.txt").write_text("not an image")
    d = discover(root)
    assert d.counts()["Val"]["COVID-19"] == 3
    reasons = {p.name: r for p, r in d.skipped}
    assert reasons[victim.name] == "no infection mask with the same file name or stem"
    assert reasons["notes.txt"] == "not an image file by its name"
    assert "skipped 1: no infection mask" in d.table()


@pytest.mark.parametrize("kind", ["missing", "empty", "other", "file"])
def test_bad_roots_give_clear_errors(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "x"
    if kind == "empty":
        target.mkdir()
    elif kind == "other":
        (target / "photos").mkdir(parents=True)
        (target / "photos" / "a.png").write_bytes(b"")
    elif kind == "file":
        target.write_text("hello")
    with pytest.raises(DataError, match="Infection Segmentation Data"):
        discover(target)


def test_masks_pair_by_stem_when_suffixes_differ(tmp_path: Path, synth_root: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    images = root / DATASET_FOLDER / "Val" / "Normal" / "images"
    img = sorted(images.iterdir())[0]
    img.rename(img.with_suffix(".jpg"))  # the bytes stay PNG; pairing goes by name only
    d = discover(root)
    match = [s for s in d.samples if s.image.name == img.with_suffix(".jpg").name]
    assert len(match) == 1 and match[0].infection.name == img.name and match[0].lung.name == img.name
    # Two masks with the image's stem: ambiguous, so the image is skipped rather than guessed.
    masks = root / DATASET_FOLDER / "Val" / "Normal" / "infection masks"
    (masks / img.name).rename(masks / img.with_suffix(".bmp").name)
    (masks / img.with_suffix(".tif").name).write_bytes((masks / img.with_suffix(".bmp").name).read_bytes())
    reasons = {p.name: r for p, r in discover(root).skipped}
    assert reasons[img.with_suffix(".jpg").name] == "no infection mask with the same file name or stem"
