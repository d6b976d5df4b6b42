"""The search HTTP service: POST /search, product pages, health, metrics and the evaluation page.

Uploads are bounded twice: by bytes, counted as the body streams in (a 413 before the whole
body is read, whatever Content-Length claims), and by pixels, read from the image header before
any pixel is decoded (decompression bombs). Queries run in worker threads, at most
`max_concurrent` at once so a burst queues instead of thrashing the CPU; CURRENT is polled in
the background and a new version is swapped in whole, so in-flight queries finish on the old one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from glassfinder.errors import GlassFinderError, http_status
from glassfinder.search.query import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_TOP_K,
    MAX_TOP_K,
    REFUSAL_MESSAGE,
    ImageTooLargeError,
    QueryEngine,
    QueryRefusedError,
)

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
#: Refusals that mean the upload itself is wrong (not a photo we can read), answered 415.


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may cost; checked on construction so a bad flag fails at start-up."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_concurrent: int = 4
    reload_interval_s: float = 10.0

    def __post_init__(self) -> None:
        bounds = {
            "max_upload_bytes": (1, 1024**3),
            # Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that: stay below both.
            "max_pixels": (1, Image.MAX_IMAGE_PIXELS or 89_478_485),
            "max_concurrent": (1, 256),
            "reload_interval_s": (0.01, 86_400.0),
        }
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise GlassFinderError(
                    f"ServiceLimits.{name} must be between {lo:,} and {hi:,}, got {value:,}"
                )


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 as soon as it crosses the line.

    With a Content-Length the answer comes before the body is read; a chunked upload has none,
    so the bytes are counted as they arrive. The app (FastAPI's form parser) turns the exception
    that stops the read into a 400 of its own: once the limit has been crossed, whatever the app
    answers is dropped and the 413 sent instead. `on_reject` counts it (for /metrics).
    """

    def __init__(self, app: Any, max_bytes: int, *, on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        started = False
        too_large = False

        async def counted() -> Any:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's own answer to the cut-off body (a 400): the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counted, tracking_send)
        if too_large and not started:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        if self.on_reject is not None:
            self.on_reject()
        body = json.dumps(
            {
                "error": "upload_too_large",
                "detail": f"the upload is larger than {self.max_bytes:,} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _png_b64(rgb: Any) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def create_app(
    engine: QueryEngine, limits: ServiceLimits = ServiceLimits(), *, samples: dict[str, bytes] | None = None
) -> Any:
    """The FastAPI app serving `engine`. samples: example photos the page offers (name -> bytes)."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )

    registry = CollectorRegistry()
    requests = Counter(
        "glassfinder_search_requests", "Search requests by outcome", ["outcome"], registry=registry
    )
    stage_seconds = Histogram(
        "glassfinder_search_stage_seconds",
        "Time per query stage",
        ["stage"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        registry=registry,
    )
    version_gauge = Gauge("glassfinder_index_version", "Index version being served", registry=registry)
    version_gauge.set_function(lambda: engine.serving.reader.version)
    slots = threading.BoundedSemaphore(limits.max_concurrent)
    page = resources.files("glassfinder.search").joinpath("static/index.html").read_text()
    sample_photos = dict(samples or {})

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async def poll() -> None:
            while True:
                await asyncio.sleep(limits.reload_interval_s)
                try:
                    await asyncio.to_thread(engine.refresh)
                except GlassFinderError as exc:
                    log.error(
                        "search: keeping v%d: cannot load CURRENT: %s", engine.serving.reader.version, exc
                    )

        task = asyncio.create_task(poll())
        yield
        task.cancel()

    app = FastAPI(title="GlassFinder search", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        requests.labels(outcome="bad_request").inc()  # a 4xx is counted whatever its cause
        return await request_validation_exception_handler(request, exc)

    def refusal(exc: QueryRefusedError) -> JSONResponse:
        status = 413 if isinstance(exc, ImageTooLargeError) else http_status(exc)
        requests.labels(outcome=exc.reason).inc()
        return JSONResponse(
            {"refused": True, "reason": exc.reason, "message": REFUSAL_MESSAGE, "detail": exc.detail},
            status_code=status,
        )

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.post("/search")
    def search(
        photo: Annotated[UploadFile, File(description="a JPEG, PNG or WebP photo of a face wearing glasses")],
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        debug: Annotated[bool, Query(description="add the aligned crop (base64 PNG) to the answer")] = False,
    ) -> Any:
        name = photo.filename or "upload"
        content_type = (photo.content_type or "").split(";")[0].strip().lower()
        if content_type not in ACCEPTED_CONTENT_TYPES:
            requests.labels(outcome="unsupported_media_type").inc()
            return JSONResponse(
                {
                    "error": "unsupported_media_type",
                    "detail": f"{name} was sent as {content_type or 'no type'}, "
                    f"expected one of {', '.join(ACCEPTED_CONTENT_TYPES)}",
                },
                status_code=415,
            )
        data = photo.file.read()
        if not data:
            requests.labels(outcome="empty_upload").inc()
            return JSONResponse({"error": "empty_upload", "detail": f"{name} is empty"}, status_code=400)
        with slots:
            try:
                result = engine.search(data, name, k=k, max_pixels=limits.max_pixels)
            except QueryRefusedError as exc:
                return refusal(exc)
        for stage, ms in result.timings_ms.items():
            if stage != "total":
                stage_seconds.labels(stage=stage).observe(ms / 1000)
        requests.labels(outcome="ok").inc()
        body = result.to_dict()
        if debug:
            body["aligned_crop_png"] = _png_b64(result.aligned_crop)
        return body

    def not_indexed(product_id: str) -> HTTPException:
        return HTTPException(404, f"product {product_id!r} is not in index v{engine.serving.reader.version}")

    @app.get("/products/{product_id}")
    def product(product_id: str) -> Any:
        found = engine.product(product_id)
        if found is None:
            raise not_indexed(product_id)
        return {**found, "image": f"/products/{product_id}/image"}

    @app.get("/products/{product_id}/image")
    def product_image(product_id: str) -> Response:
        data = engine.thumbnail(product_id)
        if data is None:
            raise not_indexed(product_id)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "public, max-age=3600"})

    @app.get("/samples")
    def sample_list() -> list[str]:
        return sorted(sample_photos)

    @app.get("/samples/{name}")
    def sample(name: str) -> Response:
        if name not in sample_photos:
            raise HTTPException(404, f"no sample photo {name!r}")
        return Response(
            sample_photos[name], media_type="image/jpeg" if name.endswith(".jpg") else "image/png"
        )

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        s = engine.serving
        return {
            "status": "ok",
            "index": engine.index_name,
            "index_version": s.reader.version,
            "model_sha": s.model_sha,
            "face_model_sha": s.face_model_sha,
            "vectors": int(s.reader.manifest.get("counts", {}).get("vectors", 0)),
        }

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return BodyLimit(
        app, limits.max_upload_bytes, on_reject=lambda: requests.labels(outcome="upload_too_large").inc()
    )


def serve(
    engine: QueryEngine, *, host: str, port: int, limits: ServiceLimits, samples: dict[str, bytes]
) -> None:
    """Run the service until interrupted (uvicorn, one process; queries use threads)."""
    import uvicorn

    log.info(
        "search service on http://%s:%d/ (index %s v%d)",
        host,
        port,
        engine.index_name,
        engine.serving.reader.version,
    )
    uvicorn.run(create_app(engine, limits, samples=samples), host=host, port=port, log_level="info")
