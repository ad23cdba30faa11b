"""`mnistlab serve`: a page to draw a digit on, and a JSON API, with FastAPI.

The model is loaded once, at start-up. Bad requests get a JSON error and the server goes on: a body
over 1 MB is refused with 413 while it is being read (FastAPI sets no limit of its own), an upload that
is not an image with 400, malformed JSON with 422, a wrong number of pixels with 400.
"""

import html
import json
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mnistlab.serving.images import FRAME, ImageError, Prepared, read, to_mnist
from mnistlab.serving.prediction import Reader

MAX_BODY = 1 << 20  # bytes


class _BodyTooLarge(Exception):
    pass


class LimitBody:
    """ASGI middleware: refuse a request body over `limit` bytes, by its Content-Length or while reading it."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(scope, receive, send, self.limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(scope, receive, send, self.limit)


async def _too_large(scope, receive, send, limit):
    await JSONResponse({"error": f"request body over {limit:,} bytes"}, status_code=413)(scope, receive, send)


def create_app(reader: Reader, name: str) -> FastAPI:
    app = FastAPI(title="mnistlab digit reader", description=f"Reads handwritten digits with {name}.")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        template = (resources.files("mnistlab.serving") / "page.html").read_text()
        return template.replace("{{name}}", html.escape(name)).replace("{{classes}}", json.dumps(reader.classes))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": name, "classes": reader.classes}

    @app.post("/api/predict")
    async def predict(request: Request) -> JSONResponse:
        """An image upload (multipart, field `image`), or JSON: 784 floats in [0, 1], light ink on black,
        as a list or as {"pixels": [...]}."""
        try:
            prepared = await _prepared(request)
        except ImageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        (prediction,) = await run_in_threadpool(reader.predict, [prepared], 3)
        return JSONResponse(prediction.to_json())

    app.add_middleware(LimitBody)
    return app


async def _prepared(request: Request) -> Prepared:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ImageError("multipart upload: no file in the field 'image'")
        return to_mnist(read(await upload.read(), upload.filename or "upload"))
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed JSON") from None
    pixels = body.get("pixels") if isinstance(body, dict) else body
    if not isinstance(pixels, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pixels):
        raise ImageError('expected JSON: a list of 784 numbers, or {"pixels": [...]}')
    if len(pixels) != FRAME * FRAME:
        raise ImageError(f"expected {FRAME * FRAME} pixels, got {len(pixels)}")
    image = np.clip(np.asarray(pixels, np.float32).reshape(FRAME, FRAME), 0, 1)
    return Prepared(image if image.max() > 0 else None, inverted=False)
