"""``covidseg serve``: a local web viewer and JSON API over one model (FastAPI + uvicorn).

Routes:

- ``GET /``: the viewer (one HTML page, no build step: ``static/index.html``)
- ``POST /api/predict``: multipart form with ``file`` (PNG, JPEG, TIFF, BMP or DICOM) -> the
  record ``covidseg predict`` writes to ``predictions.jsonl``, plus the masks as base64 PNGs at
  the X-ray's own size (``mask_png``, ``lung_png``) and two pictures for display: the decoded
  X-ray as a JPEG (``xray_jpeg``, quality 90, shrunk above 8,192 px) and the calibrated
  infection probability as a PNG of at most 512 px, or the network's grid where that is larger,
  along each side (``probability_png``, which the viewer stretches over the X-ray: the network
  saw the film at its grid, so the picture keeps every detail of the map).
- ``GET /api/model``: the model card (name, outputs, files and hashes, Val figures, card text)
- ``GET /api/examples`` and ``GET /api/examples/{name}``: the example X-rays shipped with covidseg
- ``GET /healthz``

Uploads are untrusted: the body is refused above ``max_upload_bytes`` (413) and without a
Content-Length (411); the image header is checked against ``max_pixels`` before decoding
(422, as are non-images and broken DICOMs, named by the upload's file name, and a request
without the ``file`` field). At most ``queue_size`` requests wait for the model
at once; one more gets 503. The upload is decoded from a temporary folder that is removed
before the response leaves.
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image

from covidseg import __version__
from covidseg.data.image_io import DICOM_SUFFIXES, IMAGE_SUFFIXES, PREDICT_SUFFIXES, read_xray_colour
from covidseg.errors import DataError
from covidseg.inference.postprocess import upsample
from covidseg.inference.predictor import Prediction, Predictor
from covidseg.predict import png_bytes, prediction_record

EXAMPLES = "examples"
HEAT_MAX_SIDE = 512  # the display copy of the probability map, per side (or the network's grid)
XRAY_MAX_SIDE = 8192  # the display copy of the X-ray


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int | None = None  # None: covidseg.data.image_io.MAX_PIXELS
    queue_size: int = 4  # requests admitted at once, the one the model is running included


class Queue:
    """A bounded count of requests waiting for or holding the model; the model runs one at a time."""

    def __init__(self, size: int) -> None:
        self.size, self.pending = size, 0
        self._count = threading.Lock()
        self.model = threading.Lock()

    def enter(self) -> bool:
        with self._count:
            if self.pending >= self.size:
                return False
            self.pending += 1
            return True

    def leave(self) -> None:
        with self._count:
            self.pending -= 1


def _png_base64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array)).decode("ascii")


def _jpeg_base64(gray: np.ndarray) -> str:
    """The X-ray's display copy, as JPEG (fast to encode at any size). An image longer than
    ``XRAY_MAX_SIDE`` (no chest detector is; JPEG stops at 65,500) is shrunk for display."""
    img = Image.fromarray(gray)
    if max(img.size) > XRAY_MAX_SIDE:
        img.thumbnail((XRAY_MAX_SIDE, XRAY_MAX_SIDE), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def heat_picture(pred: Prediction, grid: int) -> np.ndarray:
    """The calibrated infection probability as 0-255 gray, each side shrunk to at most
    ``HEAT_MAX_SIDE`` px or the network's ``grid``, whichever is larger (the map holds no finer
    detail). Shrunk first, then calibrated: for display, the same picture at a fraction of the cost."""
    h, w = pred.probability.shape
    cap = max(HEAT_MAX_SIDE, grid)
    prob = upsample(pred.probability, min(h, cap), min(w, cap))  # bilinear either way; as is when small
    if pred.calibration is not None:
        prob = pred.calibration.pixels(prob)
    return np.round(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)


def upload_name(filename: str) -> str:
    """How an error message names an upload: its file name as sent, quoted, at most 100
    characters of it, printable characters only (the name is untrusted); "the upload" without one."""
    name = "".join(c for c in Path(filename).name if c.isprintable())[:100]
    return repr(name) if name else "the upload"


# The size limit is the server's: the one who uploads cannot raise it.
SERVER_LIMIT = (
    "(raise it with --max-pixels if the image is genuine)",
    "(this server's limit, set by its --max-pixels)",
)


def predict_upload(predictor: Predictor, data: bytes, filename: str, limits: Limits) -> dict[str, Any]:
    """Decode an uploaded file (from a temporary folder) and predict it: the API's JSON."""
    suffix = Path(filename).suffix.lower()
    suffix = suffix if suffix in PREDICT_SUFFIXES + DICOM_SUFFIXES else ".upload"
    with tempfile.TemporaryDirectory(prefix="covidseg-serve-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            gray, colour = read_xray_colour(path, limits.max_pixels)
        except DataError as exc:  # the message names the upload as sent, not the server's temporary path
            message, shown = str(exc), upload_name(filename)
            message = message.replace(repr(str(path)), shown).replace(str(path), shown)
            raise DataError(message.replace(*SERVER_LIMIT)) from None
    pred = predictor.predict(gray, colour)
    record = prediction_record(pred, predictor, gray.shape)
    record["filename"] = Path(filename).name[:200]  # as predictions.jsonl's "image": the name the user knows
    record["xray_jpeg"] = _jpeg_base64(gray)
    record["mask_png"] = _png_base64(pred.mask * 255)
    record["lung_png"] = _png_base64(pred.lung * 255) if pred.lung is not None else None
    record["probability_png"] = _png_base64(heat_picture(pred, predictor.image_size))
    return record


def example_files() -> dict[str, Path]:
    root = Path(str(resources.files("covidseg"))) / EXAMPLES
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


def create_app(
    predictor: Predictor, card: dict[str, Any], limits: Limits | None = None, allowed_hosts: list[str] | None = None
) -> FastAPI:
    """The FastAPI application serving ``predictor``; ``card`` is what ``GET /api/model`` returns.
    ``allowed_hosts``: the Host headers answered (others get 400, which stops DNS rebinding of a
    server bound to this machine); None answers any."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    limits = limits or Limits()
    queue = Queue(limits.queue_size)
    app = FastAPI(title="covidseg", version=__version__, docs_url=None, redoc_url=None)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    page = (resources.files("covidseg.serve") / "static" / "index.html").read_text()

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        """Refuse a body that is too large, and a request the queue has no room for, before the
        body is read (so a full server spools nothing)."""
        if request.method != "POST":
            return await call_next(request)
        length = request.headers.get("content-length")
        if length is None:
            return JSONResponse({"detail": "the request needs a Content-Length header"}, status_code=411)
        if not length.isdigit() or int(length) > limits.max_upload_bytes:
            mb = limits.max_upload_bytes / 1e6
            return JSONResponse({"detail": f"the upload is larger than the limit of {mb:g} MB"}, 413)
        if not queue.enter():
            busy = {"detail": "the server is busy; try again in a moment"}
            return JSONResponse(busy, 503, headers={"Retry-After": "1"})
        try:
            return await call_next(request)
        finally:
            queue.leave()

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A request of the wrong shape gets one line, as every other error does."""
        if request.url.path == "/api/predict":
            detail = "send the X-ray as the multipart form field 'file' (PNG, JPEG, TIFF, BMP or DICOM)"
        else:
            detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors())
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.name, "waiting": queue.pending}

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        return card

    @app.get("/api/examples")
    def examples() -> list[str]:
        return list(example_files())

    @app.get("/api/examples/{name}")
    def example(name: str) -> FileResponse:
        files = example_files()
        if name not in files:
            raise HTTPException(404, f"no example {name!r}")
        return FileResponse(files[name])

    @app.post("/api/predict")
    async def api_predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        data = await file.read()

        def run() -> dict[str, Any]:
            with queue.model:
                return predict_upload(predictor, data, file.filename or "", limits)

        try:
            return await run_in_threadpool(run)
        except DataError as exc:
            raise HTTPException(422, str(exc)) from None

    return app
