"""`mnistlab serve`: a page to draw a digit on, and a JSON API, with FastAPI.

The model is loaded once, at start-up. `POST /api/predict` takes a picture as a multipart upload (field
`image`) or 784 pixels as JSON; both are declared in the OpenAPI schema, so `/docs` ("Try it out") can
send either. `/docs` is served from files installed with mnistlab's `[serve]` extra (fastapi-offline),
never from a CDN: it works offline.

What the server holds, whatever clients send:
- a body over 1 MB is refused with 413 while it is read (FastAPI sets no limit of its own), and a body
  that takes over BODY_SECONDS to arrive gets 408: a slow client cannot hold a connection open;
- a picture is checked for its size before it is decoded (MAX_PIXELS), and decoded and read in worker
  threads, at most DECODERS at once: the event loop, and so /healthz and the page, stay responsive
  while uploads decode. Past WAITING requests queued for a decoder, the server answers 503 at once;
- malformed JSON, NaN or deeply nested values, the wrong number of pixels, and files that are not images
  get a JSON error (422 or 400); a client that hangs up mid-upload is one line in the log.
"""

import asyncio
import contextlib
import html
import json
import logging
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from mnistlab.files import parse_json
from mnistlab.serving.images import FRAME, ImageError, Prepared, read, to_mnist
from mnistlab.serving.prediction import Reader
from mnistlab.version import __version__

MAX_BODY = 1 << 20  # bytes
MAX_PIXELS = 16_000_000  # of an uploaded picture, decoded: a 12-megapixel phone photo passes
BODY_SECONDS = 10.0
DECODERS = 2
WAITING = 32
LOG = logging.getLogger("mnistlab.serve")


class PixelsRequest(BaseModel):
    """A digit as the model sees it: 28x28 pixels, row by row, light ink (1) on black (0)."""

    pixels: list[float] = Field(min_length=FRAME * FRAME, max_length=FRAME * FRAME)


class PredictionResponse(BaseModel):
    label: str | None = Field(description="the most probable class; null when the picture holds no digit")
    probability: float | None
    top: list[tuple[str, float]] = Field(description="the three most probable classes")
    probabilities: list[float] = Field(description="every class's probability, in class order")
    uncertain: bool = Field(description="the probability is below what 99% of test digits reach")
    empty: bool
    image: list[list[float]] | None = Field(description="the 28x28 picture the model read")


class ErrorResponse(BaseModel):
    error: str


# The request body, declared by hand: the handler reads it itself, to bound its size and its decoding.
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "a picture of a digit: PNG, JPEG, BMP, GIF or WebP, at most 1 MB",
                        }
                    },
                    "required": ["image"],
                }
            },
            "application/json": {"schema": PixelsRequest.model_json_schema()},
        },
    }
}


class _Busy(Exception):
    """More requests wait for a decoder than the server queues."""


class _Decoders:
    """At most `threads` pictures decode at once; past `waiting` in the queue, requests are refused."""

    def __init__(self, threads: int, waiting: int):
        self.slots, self.waiting, self.queued = asyncio.Semaphore(threads), waiting, 0

    @contextlib.asynccontextmanager
    async def slot(self):
        if self.queued >= self.waiting:
            raise _Busy
        self.queued += 1
        try:
            async with self.slots:
                yield
        finally:
            self.queued -= 1


def create_app(reader: Reader, name: str, body_seconds: float = BODY_SECONDS) -> FastAPI:
    from fastapi_offline import FastAPIOffline

    app = FastAPIOffline(
        title="mnistlab digit reader",
        description=f"Reads handwritten digits with {name}. Send a picture to `POST /api/predict`.",
        version=__version__,
    )
    decoders = _Decoders(DECODERS, WAITING)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        template = (resources.files("mnistlab.serving") / "page.html").read_text()
        return template.replace("{{name}}", html.escape(name)).replace("{{classes}}", json.dumps(reader.classes))

    @app.get("/healthz")
    def healthz() -> dict:
        """Whether the server is up, and the model it serves."""
        return {"status": "ok", "model": name, "classes": reader.classes}

    errors = {code: {"model": ErrorResponse} for code in (400, 408, 413, 422, 503)}

    @app.post("/api/predict", response_model=PredictionResponse, responses=errors, openapi_extra=REQUEST_BODY)
    async def predict(request: Request) -> Response:
        """Read the digit in a picture (multipart upload, field `image`), or in 784 pixels sent as JSON
        (`{"pixels": [...]}`, or the bare list). The picture is made into a 28x28 digit as MNIST's were
        made (fitted to 20x20, centred by its centre of mass, light ink on black), then read."""
        try:
            source = await _source(request)
            async with decoders.slot():
                prepared = await run_in_threadpool(_prepare, source)
                (prediction,) = await run_in_threadpool(reader.predict, [prepared], 3)
        except ClientDisconnect:
            LOG.warning("a client hung up before its request was read")
            return Response(status_code=400)
        except _Busy:
            return JSONResponse({"error": "busy: too many pictures waiting; try again"}, status_code=503)
        except ImageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(prediction.to_json())

    app.add_middleware(LimitBody, seconds=body_seconds)
    return app


async def _source(request: Request) -> tuple[bytes, str] | np.ndarray:
    """An uploaded picture's bytes and name, or the pixels of a JSON body, checked but not decoded."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ImageError("multipart upload: no file in the field 'image'")
        return await upload.read(), upload.filename or "upload"
    try:
        body = parse_json(await request.body())
    except json.JSONDecodeError:
        raise ValueError("malformed JSON") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    pixels = body.get("pixels") if isinstance(body, dict) else body
    if not isinstance(pixels, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pixels):
        raise ImageError('expected JSON: a list of 784 numbers, or {"pixels": [...]}')
    if len(pixels) != FRAME * FRAME:
        raise ImageError(f"expected {FRAME * FRAME} pixels, got {len(pixels)}")
    image = np.asarray(pixels, np.float64)
    if not np.isfinite(image).all():
        raise ImageError("pixels must be finite numbers from 0 to 1")
    return np.clip(image, 0, 1).astype(np.float32).reshape(FRAME, FRAME)


def _prepare(source: tuple[bytes, str] | np.ndarray) -> Prepared:
    """What the model reads: a decoded picture made like MNIST, or pixels that already are."""
    if isinstance(source, np.ndarray):
        return Prepared(source if source.max() > 0 else None, inverted=False)
    content, name = source
    return to_mnist(read(content, name, max_pixels=MAX_PIXELS))


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class LimitBody:
    """ASGI middleware: refuse a request body over `limit` bytes, by its Content-Length or while reading
    it, and one that takes over `seconds` to arrive."""

    def __init__(self, app, limit: int = MAX_BODY, seconds: float = BODY_SECONDS):
        self.app, self.limit, self.seconds = app, limit, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _refuse(send, 413, f"request body over {self.limit:,} bytes")
        seen = 0
        deadline = asyncio.get_running_loop().time() + self.seconds

        async def counted():
            nonlocal seen
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                raise _BodyTooSlow from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _refuse(send, 413, f"request body over {self.limit:,} bytes")
        except _BodyTooSlow:
            LOG.warning("a client took over %.0f s to send its request; it was refused", self.seconds)
            await _refuse(send, 408, f"the request body took over {self.seconds:.0f} s to arrive")


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` on host:port until Ctrl-C, with uvicorn; a host or port that cannot be listened on is
    one line. The socket is bound here and handed to uvicorn, so that its error is ours to word."""
    import socket

    import uvicorn

    from mnistlab.errors import MnistlabError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError, UnicodeError) as exc:
        raise MnistlabError(f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})") from None
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, limit_concurrency=256)
    uvicorn.Server(config).run(sockets=[sock])
