from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidseg.data.image_io import preprocess_image, read_gray8, read_mask, resize_mask
from covidseg.errors import DataError, MaskEncodingError

GRAD = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))  # (40, 64), 0..252


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda: Image.fromarray(GRAD)),
        ("I;16", lambda: Image.fromarray(GRAD.astype(np.uint16) * 257)),
        ("RGB", lambda: Image.fromarray(np.stack([GRAD] * 3, -1))),
        ("RGBA", lambda: Image.fromarray(np.dstack([GRAD] * 3 + [np.full_like(GRAD, 128)]))),
        ("P", lambda: Image.fromarray(GRAD).convert("P")),
        ("LA", lambda: Image.fromarray(GRAD).convert("LA")),
    ],
)
def test_every_mode_reads_to_the_same_gray(tmp_path: Path, mode: str, make) -> None:
    img = make()
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    img.save(path)
    gray = read_gray8(path)
    assert gray.dtype == np.uint8 and gray.shape == (40, 64)
    assert np.abs(gray.astype(int) - GRAD).max() <= 1


def test_sixteen_bit_png_keeps_full_range(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert read_gray8(tmp_path / "a.png").tolist() == [[0, 128, 255]]


def test_preprocess_resizes_and_scales_to_unit_range() -> None:
    x = preprocess_image(GRAD, 32)
    assert x.shape == (32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9


def test_mask_binarised_above_127_with_nearest_resize() -> None:
    mask = np.array([[0, 127], [128, 255]], dtype=np.uint8)
    assert resize_mask(mask, 2).tolist() == [[0, 0], [1, 1]]
    big = resize_mask(np.kron(mask, np.ones((8, 8), np.uint8)), 4)
    assert set(np.unique(big)) <= {0, 1}
    assert big.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("content", [b"", b"not a png at all", None])
def test_unreadable_files_raise_data_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.png"
    if content is None:
        Image.fromarray(GRAD).save(path)
        path.write_bytes(path.read_bytes()[:60])  # truncated
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="bad.png"):
        read_gray8(path)


def test_a_mask_of_zeros_and_ones_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    """Masks are read as > 127; a 0/1 (or label) mask would be empty without a word."""
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    Image.fromarray(mask).save(tmp_path / "ones.png")
    with pytest.raises(MaskEncodingError, match="none above half.*store it as 8-bit 0 and 255"):
        read_mask(tmp_path / "ones.png")
    # 16 bits: 0 and 1, or 0 and 255, mark nothing above half the range either; 0 and 65535 do.
    for top in (1, 255):
        Image.fromarray(mask.astype(np.uint16) * top).save(tmp_path / f"w{top}.png")
        with pytest.raises(MaskEncodingError, match=f"values 0 to {top} "):
            read_mask(tmp_path / f"w{top}.png")
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "w65535.png")
    assert read_mask(tmp_path / "w65535.png").sum() == 144
    Image.fromarray(mask * 255).save(tmp_path / "full.png")
    assert read_mask(tmp_path / "full.png").sum() == 144
    stray = np.zeros((32, 32), np.uint8)
    stray[0, :3] = 1  # a few stray low values on an empty mask: empty, as before
    Image.fromarray(stray).save(tmp_path / "stray.png")
    assert not read_mask(tmp_path / "stray.png").any()


def test_a_figure_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    from covidseg.figures import plot_predictions

    path = tmp_path / "panel.png"
    path.write_bytes(b"the earlier panel")
    image = np.zeros((16, 16), np.uint8)
    panels = [(image, image, image, "x")]
    real_savefig = matplotlib.figure.Figure.savefig

    def killed(self, fname, **kwargs):  # a write cut off half way, into a file or a buffer
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:
            Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        plot_predictions(panels, path)
    assert path.read_bytes() == b"the earlier panel"
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real_savefig)
    plot_predictions(panels, path)
    assert Image.open(path).format == "PNG" and [p.name for p in tmp_path.iterdir()] == ["panel.png"]


def test_a_users_x_ray_stored_sideways_is_read_as_its_exif_orientation_shows_it(tmp_path: Path) -> None:
    from covidseg.data.image_io import read_xray

    stored = np.random.default_rng(0).integers(0, 256, (60, 90), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    Image.fromarray(stored).save(tmp_path / "sideways.png", exif=exif)
    Image.fromarray(stored).save(tmp_path / "plain.png")
    assert np.array_equal(read_xray(tmp_path / "sideways.png", upright=True), np.rot90(stored, k=-1))
    assert np.array_equal(read_xray(tmp_path / "plain.png", upright=True), stored)
    # A data set's X-ray is read as stored, as its mask is, so that the pair stays aligned.
    assert np.array_equal(read_xray(tmp_path / "sideways.png"), stored)


def test_colourfulness_tells_a_photograph_from_a_gray_or_tinted_film(tmp_path: Path) -> None:
    from covidseg.data.image_io import colourfulness, read_xray_colour

    film = np.asarray(Image.open(Path(__file__).parents[1] / "src/covidseg/examples/normal.png").convert("L"))
    sepia = np.stack([film, (film * 0.9).astype(np.uint8), (film * 0.7 + 25).astype(np.uint8)], axis=2)
    blobs = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(blobs).resize((200, 200), Image.BILINEAR))
    assert colourfulness(Image.fromarray(film)) == 0.0
    assert colourfulness(Image.fromarray(np.stack([film] * 3, axis=2))) < 1e-6
    assert colourfulness(Image.fromarray(sepia)) < 0.01 < 0.12 < colourfulness(Image.fromarray(photo))
    Image.fromarray(sepia).save(tmp_path / "sepia.jpg", quality=80)
    gray, colour = read_xray_colour(tmp_path / "sepia.jpg")
    assert gray.shape == film.shape and colour < 0.02
