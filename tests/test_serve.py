"""``covidseg serve``: the JSON API through FastAPI's test client (good and bad uploads, the queue)
and the viewer in a real headless Chromium that uploads an X-ray and sees the overlay and numbers."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidseg.data.discovery import discover
from covidseg.inference.calibration import Calibration
from covidseg.inference.postprocess import call_rule
from covidseg.inference.predictor import Prediction, Predictor
from covidseg.predict import prediction_record

fastapi = pytest.importorskip("fastapi", reason="serve needs fastapi (a dependency of covidseg)")
from fastapi.testclient import TestClient  # noqa: E402

from covidseg.serve.app import Limits, create_app, heat_picture  # noqa: E402


@pytest.fixture(scope="module")
def predictor(two_output_run: Path) -> Predictor:
    return Predictor.load(two_output_run)


@pytest.fixture(scope="module")
def xray(synth_root: Path) -> Path:
    return discover(synth_root).split("Val")[0].image


def _client(predictor: Predictor, **limits) -> TestClient:
    return TestClient(create_app(predictor, {"name": predictor.name, "card": "# test card"}, Limits(**limits)))


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` pixels, with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )  # fmt: skip


def test_predict_returns_the_predict_record_and_masks_at_the_xray_size(predictor: Predictor, xray: Path) -> None:
    client = _client(predictor)
    r = client.post("/api/predict", files={"file": (xray.name, xray.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    gray = np.asarray(Image.open(xray).convert("L"))
    expected = prediction_record(predictor.predict(xray), predictor, gray.shape)
    assert {k: body[k] for k in expected} == expected  # the same JSON as predictions.jsonl
    assert body["filename"] == xray.name
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    lung = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["lung_png"]))))
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["xray_jpeg"]))))
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["probability_png"]))))
    assert mask.shape == lung.shape == shown.shape == heat.shape == gray.shape  # under 512 px: full size
    assert np.abs(shown.astype(int) - gray).mean() < 3  # the display copy is a JPEG
    pred = predictor.predict(xray)
    assert np.array_equal(mask > 0, pred.mask > 0)
    assert np.abs(heat.astype(int) - np.round(pred.calibrated_probability * 255)).max() <= 1
    assert body["infected_share_pct"] is not None and body["severity"] in ("none", "mild", "moderate", "severe")


def test_the_heat_picture_of_a_large_xray_is_small_and_calibrated() -> None:
    h, w = 2500, 2000
    prob = np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))
    calibration = Calibration(a=0.5, b=-1.0)
    pred = Prediction(mask=(prob > 0.5).astype(np.uint8), probability=prob, calibration=calibration)
    heat = heat_picture(pred, grid=256)
    assert heat.shape == (512, 512) and heat.dtype == np.uint8  # each side shrunk to 512
    # Column by column it is the calibrated probability at that place of the film.
    x = (np.arange(512) + 0.5) * w / 512 - 0.5
    expected = np.round(calibration.pixels(np.clip(x / (w - 1), 0, 1)) * 255)
    assert np.abs(heat[256].astype(int) - expected).max() <= 2
    assert (heat == heat[0]).all()  # every row alike, as the film's
    # A side already short stays as it is; a network grid above 512 is kept.
    thin = Prediction(mask=np.zeros((8, 70_000), np.uint8), probability=np.zeros((8, 70_000), np.float32))
    assert heat_picture(thin, grid=128).shape == (8, 512)
    assert heat_picture(pred, grid=1024).shape == (1024, 1024)


def test_a_very_long_image_still_gets_its_display_copy(predictor: Predictor, tmp_path: Path) -> None:
    long = tmp_path / "long.png"
    Image.fromarray(np.tile(np.arange(70_000, dtype=np.uint8), (8, 1))).save(long)  # past JPEG's 65,500
    r = _client(predictor).post("/api/predict", files={"file": (long.name, long.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    shown = Image.open(io.BytesIO(base64.b64decode(body["xray_jpeg"])))
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))
    assert (body["width"], body["height"]) == mask.size == (70_000, 8) and max(shown.size) == 8192


def test_model_card_health_page_and_examples(predictor: Predictor) -> None:
    client = _client(predictor)
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/api/model").json()["card"] == "# test card"
    page = client.get("/")
    assert page.status_code == 200 and "covidseg viewer" in page.text and "/api/predict" in page.text
    names = client.get("/api/examples").json()
    assert sorted(names) == ["covid-19.png", "non-covid.png", "normal.png"]
    for name in names:
        r = client.get(f"/api/examples/{name}")
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (256, 256)
    # Only the listed X-rays: the attribution beside them (a real file) is not served.
    assert client.get("/api/examples/ATTRIBUTION.md").status_code == 404


BAD_UPLOADS = {
    "text": (b"hello, not an image", 422, "not a readable image"),
    "empty": (b"", 422, "not a readable image"),
    "truncated PNG": (None, 422, "not a readable image"),
    "header over the pixel limit": (_png_header_claiming(8000, 8000), 422, "above the limit of 50,000,000 pixels"),
    "decompression bomb": (_png_header_claiming(40000, 40000), 422, "above the limit of 50,000,000 pixels"),
    "broken DICOM": (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff", 422, "not a readable DICOM"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_4xx_with_a_clear_message(predictor: Predictor, case: str) -> None:
    data, status, text = BAD_UPLOADS[case]
    if data is None:
        data = _png_bytes(np.full((64, 64), 100, np.uint8))[:60]
    r = _client(predictor).post("/api/predict", files={"file": ("scan 1.png", data, "application/octet-stream")})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert text in detail and "covidseg-serve-" not in detail  # no server path in the message
    assert "'scan 1.png'" in detail and "''" not in detail  # the file as the user named it, quoted once


def test_upload_limits_and_missing_file(predictor: Predictor, xray: Path) -> None:
    client = _client(predictor, max_upload_bytes=1000)
    r = client.post("/api/predict", files={"file": ("x.png", b"\0" * 5000, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = _client(predictor).post("/api/predict", data={"other": "1"})
    assert r.status_code == 422 and r.json()["detail"].startswith("send the X-ray as the multipart form field 'file'")
    small = _client(predictor, max_pixels=100)
    r = small.post("/api/predict", files={"file": (xray.name, xray.read_bytes(), "image/png")})
    assert r.status_code == 422 and "above the limit of 100 pixels" in r.json()["detail"]
    assert "this server's limit" in r.json()["detail"]  # the uploader cannot pass --max-pixels


def test_only_this_machine_s_host_names_are_answered_when_asked(predictor: Predictor) -> None:
    app = create_app(predictor, {"name": "m"}, allowed_hosts=["127.0.0.1", "localhost"])
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding


def test_a_full_queue_answers_503_and_the_server_goes_on(predictor: Predictor, xray: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    class Slow:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def predict(self, image, colour=0.0):
            entered.set()
            release.wait(10)
            return predictor.predict(image, colour)

    client = _client(Slow(), queue_size=1)  # type: ignore[arg-type]
    files = {"file": (xray.name, xray.read_bytes(), "image/png")}
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(r=client.post("/api/predict", files=files)))
    t.start()
    assert entered.wait(10)
    busy = client.post("/api/predict", files=files)
    release.set()
    t.join(10)
    assert busy.status_code == 503 and "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
    assert first["r"].status_code == 200
    assert client.post("/api/predict", files=files).status_code == 200


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _viewer(predictor: Predictor, name: str):
    """A real server on the loopback and a headless Chromium on its page (skips without them)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("browser test: Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test: selenium is not installed")
    uvicorn = pytest.importorskip("uvicorn")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    app = create_app(predictor, {"name": name, "card": "# test card"})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 20).until(lambda d: name in d.find_element(By.ID, "model-name").text)
        yield driver
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)


def _peaks(values: np.ndarray, blocks: int) -> np.ndarray:
    """(y, x) of the highest value in each of blocks x blocks tiles of a 2-D array."""
    out = []
    for ys in np.array_split(np.arange(values.shape[0]), blocks):
        for xs in np.array_split(np.arange(values.shape[1]), blocks):
            y, x = np.unravel_index(np.argmax(values[np.ix_(ys, xs)]), (len(ys), len(xs)))
            out.append((ys[y], xs[x]))
    return np.asarray(out)


def _upload(driver, path: Path, state: str = "done") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == state)


def test_viewer_in_headless_chromium_uploads_and_shows_overlay_and_numbers(
    predictor: Predictor, xray: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    with _viewer(predictor, "test-model") as driver:
        _upload(driver, xray)
        expected = predictor.predict(xray)
        h, w = expected.mask.shape
        assert driver.find_element(By.ID, "r-size").text == f"{w} x {h}"
        share = driver.find_element(By.ID, "r-image-share").text
        assert share == f"{expected.image_infected_share_pct:.2f} %"
        assert driver.find_element(By.ID, "r-severity").text.split(" ")[0] == expected.severity["severity"]
        call = {None: "n/a", True: "COVID-19", False: "no COVID-19"}[expected.covid_call]
        post = predictor.post
        rule = call_rule(post.detect_fraction, post.image_gate, "covid" in predictor.targets)
        assert driver.find_element(By.ID, "r-call").text == f"{call} (rule: {rule})"
        # The overlay canvas holds exactly the predicted infection pixels, in red.
        red = driver.execute_script(
            "const c = document.getElementById('overlay'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] > 200) n++; return n;"
        )
        assert red == int(expected.mask.sum())
        lung_drawn = driver.execute_script(
            "const c = document.getElementById('lung'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
        )
        assert 0 < lung_drawn < int(expected.lung.sum())  # an outline: some lung pixels, not all
        assert driver.find_element(By.ID, "download-json").get_attribute("aria-disabled") == "false"
        # The heat map's alpha is the probability at every place of the X-ray, also when the server
        # sent a smaller picture (a film larger than 512 px) for the page to stretch.
        big = tmp_path / "large.png"
        Image.open(xray).convert("L").resize((900, 1100), Image.BILINEAR).save(big)
        for path in (xray, big):
            _upload(driver, path)
            prob = np.round(255 * predictor.predict(path).calibrated_probability)
            points = _peaks(prob, 5)  # the most probable place of each of 5 x 5 blocks
            drawn = np.asarray(
                driver.execute_script(
                    "const c = document.getElementById('heat'), d = c.getContext('2d')"
                    ".getImageData(0, 0, c.width, c.height).data;"
                    "return arguments[0].map(([y, x]) => d[4 * (y * c.width + x) + 3]);",
                    points.tolist(),
                )
            )
            expected = prob[points[:, 0], points[:, 1]]
            if path == big:  # places that a picture of at most 512 px reaches only stretched
                assert expected[points.max(axis=1) > 600].max() > 30
            assert np.abs(drawn - expected).max() <= 8, path.name
        assert driver.find_element(By.ID, "r-check").text.startswith("n/a")  # this model was never calibrated
        # A bad upload shows its error on the page and the page keeps working.
        bad = tmp_path / "not-an-image.png"
        bad.write_text("not an image")
        _upload(driver, bad, "error")
        assert "422" in driver.find_element(By.ID, "status").text
        assert "not a readable image" in driver.find_element(By.ID, "status").text


def test_viewer_draws_a_film_past_the_canvas_cap_shrunk_and_keeps_the_full_size_downloads(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    import covidseg

    model = covidseg.load_model()
    film = tmp_path / "large.png"
    example = Path(covidseg.__file__).parent / "examples" / "covid-19.png"
    Image.open(example).convert("L").resize((4500, 5000), Image.BILINEAR).save(film)
    expected = model.predict(film)
    assert expected.mask.mean() > 0.01  # something to draw
    with _viewer(model, model.name) as driver:
        _upload(driver, film)
        assert driver.find_element(By.ID, "r-size").text == "4500 x 5000"
        sizes = driver.execute_script(
            "return ['xray', 'heat', 'overlay', 'lung'].map(i => [document.getElementById(i).width,"
            " document.getElementById(i).height]);"
        )
        assert sizes == [[3686, 4096]] * 4
        # The overlay holds the predicted infection shrunk to the canvas: the same share of it.
        red = driver.execute_script(
            "const c = document.getElementById('overlay'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] > 200) n++; return n;"
        )
        assert red / (3686 * 4096) == pytest.approx(expected.mask.mean(), rel=0.02)
        # The lung outline and the heat map are drawn over the whole shrunk canvas, in place.
        lung_rows = driver.execute_script(
            "const c = document.getElementById('lung'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0, lo = c.height, hi = -1;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) {"
            "  const y = Math.floor(i / 4 / c.width); n++; lo = Math.min(lo, y); hi = Math.max(hi, y); }"
            "return [n, lo, hi];"
        )
        lung_ys = np.nonzero(expected.lung.any(axis=1))[0] * 4096 / 5000
        assert lung_rows[0] > 0 and abs(lung_rows[1] - lung_ys[0]) < 4 and abs(lung_rows[2] - lung_ys[-1]) < 4
        prob = np.round(255 * expected.calibrated_probability)
        points = _peaks(prob, 5)
        drawn = driver.execute_script(
            "const c = document.getElementById('heat'), d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data;"
            "return arguments[0].map(([y, x]) => d[4 * (y * c.width + x) + 3]);",
            np.floor(points * [4096 / 5000, 3686 / 4500]).astype(int).tolist(),
        )
        assert np.abs(np.asarray(drawn) - prob[points[:, 0], points[:, 1]]).max() <= 12
        href = driver.find_element(By.ID, "download-mask").get_attribute("href")
        downloaded = Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1])))
        np.testing.assert_array_equal(np.asarray(downloaded) > 127, expected.mask > 0)


def test_viewer_warns_when_the_input_is_not_a_chest_x_ray(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    import covidseg

    model = covidseg.load_model()
    example = Path(covidseg.__file__).parent / "examples" / "covid-19.png"
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)).save(noise)
    with _viewer(model, model.name) as driver:
        _upload(driver, example)
        assert not driver.find_element(By.ID, "check").is_displayed()
        assert driver.find_element(By.ID, "r-check").text.startswith("ok")
        assert driver.find_element(By.ID, "r-prob").text.endswith("%")
        heat = "const c = document.getElementById('heat'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 128) n++; return n;"  # noqa: E501
        assert driver.execute_script(heat) > 0  # the calibrated probability map is drawn
        _upload(driver, noise)
        warning = driver.find_element(By.ID, "check")
        assert warning.is_displayed() and "do not trust" in warning.text
        assert driver.find_element(By.ID, "r-check").text.split(" ")[0] in ("unusual", "not_a_frontal_cxr")
        # A colour photograph, too small and too long a film are no chest X-rays: no COVID-19 call,
        # probability or severity is given for them.
        photo = tmp_path / "photo.png"
        rng = np.random.default_rng(1)
        colours = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(colours).resize((300, 300), Image.BILINEAR).save(photo)
        strip = tmp_path / "strip.png"
        Image.open(example).resize((600, 150)).save(strip)
        for path in (photo, strip):
            _upload(driver, path)
            assert driver.find_element(By.ID, "r-check").text.startswith("not_a_frontal_cxr"), path.name
            assert driver.find_element(By.ID, "r-call").text.startswith("not given"), path.name
            assert driver.find_element(By.ID, "r-prob").text == "n/a"
            assert driver.find_element(By.ID, "r-severity").text == "n/a"
        # A failed upload leaves no earlier answer on the page.
        bad = tmp_path / "text.png"
        bad.write_text("not an image")
        _upload(driver, bad, "error")
        assert driver.find_element(By.ID, "r-call").text == "" and driver.find_element(By.ID, "r-file").text == ""
        assert driver.find_element(By.ID, "download-json").get_attribute("aria-disabled") == "true"
        assert not driver.find_element(By.ID, "stage").is_displayed()
