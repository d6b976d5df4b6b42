"""The search HTTP service: POST /search, product pages, health, metrics and the evaluation page.

A product shows as packshots (the frame alone on white, made by the pipeline) and, on its page
`/p/<id>`, in 3D from its normalised GLB, through the <model-viewer> script the service serves
itself (search.viewer).

Budgets a request cannot stretch, outermost first: the request head (size 431, pace 408; see
search.http_limits), the body (size 413 as soon as the line is crossed, whatever Content-Length
claims; pace 408), admission (a bounded queue in front of `max_concurrent` query workers, 503
with Retry-After past it; search.admission), the decode (pixels and peak memory, whatever the
header claims; face.decode) and the request's total time (503). /healthz and /metrics run on
the event loop, never behind queries. CURRENT is polled in the background and a new version is
swapped in whole; any error reading it keeps the last good version serving and /healthz says
`degraded` with why (still HTTP 200). /docs and /openapi.json only with `docs=True`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from glassfinder.errors import (
    REFUSAL_MESSAGE,
    BadInputError,
    ImageTooLargeError,
    Overloaded,
    QueryRefusedError,
    http_status,
)
from glassfinder.face.decode import DEFAULT_MAX_DECODE_BYTES, DecodeBudget
from glassfinder.search.admission import Admission, AdmissionLimits
from glassfinder.search.http_limits import HttpLimits, RequestGuard, guarded_h11
from glassfinder.search.query import DEFAULT_MAX_PIXELS, DEFAULT_TOP_K, MAX_TOP_K, QueryEngine
from glassfinder.search.viewer import load_viewer_js

log = logging.getLogger(__name__)

ACCEPTED_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/heic", "image/heif", "image/mpo")


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may cost and how many may wait; checked on construction so a bad flag
    fails at start-up. `max_concurrent` is the number of query workers (one per core)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    max_concurrent: int = 2
    queue_depth: int = 8
    queue_wait_s: float = 1.0
    reload_interval_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    header_timeout_s: float = 10.0
    body_read_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    docs: bool = False  # /docs and /openapi.json (off: they describe the service to anyone)

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
                raise BadInputError(f"ServiceLimits.{name} must be between {lo:,} and {hi:,}, got {value:,}")
        # The parts' own checks (same message shape): fail at start-up, not at the first request.
        self.decode_budget()
        self.admission()
        self.http()

    def decode_budget(self) -> DecodeBudget:
        return DecodeBudget(max_pixels=self.max_pixels, max_decode_bytes=self.max_decode_bytes)

    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(self.max_concurrent, self.queue_depth, self.queue_wait_s)

    def http(self) -> HttpLimits:
        return HttpLimits(
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout_s=self.header_timeout_s,
            max_body_bytes=self.max_upload_bytes,
            body_read_timeout_s=self.body_read_timeout_s,
            request_timeout_s=self.request_timeout_s,
        )


def _png_b64(rgb: Any) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ServiceApp:
    """The service as uvicorn runs it: the guarded ASGI app, plus what the server needs beside it
    (the HTTP limits and the hook that counts refusals made before the app sees a request)."""

    def __init__(self, asgi: Any, limits: ServiceLimits, count_rejection: Callable[[str], None]) -> None:
        self.asgi = asgi
        self.limits = limits
        self.count_rejection = count_rejection

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)


@dataclass(frozen=True)
class _Metrics:
    """The app's Prometheus metrics, on a registry of its own so that apps side by side (tests)
    do not collide; `exposition` renders it for /metrics."""

    requests: Counter
    stage_seconds: Histogram
    exposition: Callable[[], bytes]
    content_type: str

    def count(self, outcome: str) -> None:
        """Count a search request by outcome (every refusal, wherever it is made, goes through here)."""
        self.requests.labels(outcome=outcome).inc()

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stage_seconds.labels(stage=stage).observe(ms / 1000)


def _metrics(engine: QueryEngine, admission: Admission) -> _Metrics:
    """The counters, the stage histogram and gauges read at scrape time (index version, queue)."""
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
    Gauge("glassfinder_search_queued", "Searches waiting for a worker", registry=registry).set_function(
        lambda: admission.waiting
    )
    Gauge("glassfinder_search_running", "Searches on a worker", registry=registry).set_function(
        lambda: admission.running
    )
    degraded_gauge = Gauge(
        "glassfinder_index_degraded", "1 while the version served is not CURRENT's", registry=registry
    )
    degraded_gauge.set_function(lambda: 1.0 if engine.degraded else 0.0)
    return _Metrics(
        requests, stage_seconds, functools.partial(generate_latest, registry), CONTENT_TYPE_LATEST
    )


@dataclass(frozen=True)
class _Service:
    """What the routes of one app share."""

    engine: QueryEngine
    limits: ServiceLimits
    admission: Admission
    metrics: _Metrics


async def _poll_current(engine: QueryEngine, interval_s: float) -> None:
    """Reload CURRENT every `interval_s`, forever: a failed reload keeps the last good version."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(engine.refresh)
        except Exception:  # any error at all: the loop must outlive it (engine.degraded says why)
            log.debug("search: reload failed", exc_info=True)


def _lifespan(svc: _Service) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Poll CURRENT while the app serves; on shutdown stop polling and the query workers."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(_poll_current(svc.engine, svc.limits.reload_interval_s))
        yield
        task.cancel()
        svc.admission.close()

    return lifespan


def _add_error_handlers(app: FastAPI, count: Callable[[str], None]) -> None:
    """FastAPI's own answers to bad requests, counted like the service's refusals."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        count("bad_request")  # a 4xx is counted whatever its cause
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # a malformed multipart body (FastAPI's form parser)
            count("bad_request")
        return await http_exception_handler(request, exc)


def _refusal(exc: QueryRefusedError, count: Callable[[str], None]) -> JSONResponse:
    status = 413 if isinstance(exc, ImageTooLargeError) else http_status(exc)
    count(exc.reason)
    return JSONResponse(
        {"refused": True, "reason": exc.reason, "message": REFUSAL_MESSAGE, "detail": exc.detail},
        status_code=status,
    )


def _unsupported_media_type(name: str, content_type: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": "unsupported_media_type",
            "detail": f"{name} was sent as {content_type or 'no type'}, "
            f"expected one of {', '.join(ACCEPTED_CONTENT_TYPES)}",
        },
        status_code=415,
    )


def _overloaded(exc: Overloaded) -> JSONResponse:
    return JSONResponse(
        {"error": "overloaded", "detail": f"{exc}; retry in a moment"},
        status_code=503,
        headers={"retry-after": "1"},
    )


def _not_indexed(engine: QueryEngine, product_id: str) -> HTTPException:
    return HTTPException(404, f"product {product_id!r} is not in index v{engine.serving.reader.version}")


def _links(engine: QueryEngine, product_id: str) -> dict[str, Any]:
    """Where a product's pictures live: packshots (those the store holds), its try-on
    thumbnail, its 3D model and its page."""
    base = f"/products/{quote(product_id, safe='')}"
    return {
        "image": f"{base}/image",
        "packshots": {v: f"{base}/packshots/{v}.png" for v in engine.packshot_views(product_id)},
        "model": f"{base}/model.glb",
        "page": f"/p/{quote(product_id, safe='')}",
    }


def _add_search_routes(app: FastAPI, svc: _Service) -> None:
    """The search page and POST /search, whose queries run on the admission's workers."""
    page = resources.files("glassfinder.search").joinpath("static/index.html").read_text()
    budget = svc.limits.decode_budget()
    count = svc.metrics.count

    @app.get("/", response_class=HTMLResponse)
    async def index_page() -> str:
        return page

    @app.post("/search")
    async def search(
        photo: Annotated[
            UploadFile, File(description="a JPEG, PNG, WebP, MPO or HEIC photo of a face wearing glasses")
        ],
        k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K,
        debug: Annotated[bool, Query(description="add the aligned crop (base64 PNG) to the answer")] = False,
    ) -> Any:
        name = photo.filename or "upload"
        content_type = (photo.content_type or "").split(";")[0].strip().lower()
        if content_type not in ACCEPTED_CONTENT_TYPES:
            count("unsupported_media_type")
            return _unsupported_media_type(name, content_type)
        data = await photo.read()
        if not data:
            count("empty_upload")
            return JSONResponse({"error": "empty_upload", "detail": f"{name} is empty"}, status_code=400)

        def work() -> Any:
            return svc.engine.search(data, name, k=k, max_pixels=svc.limits.max_pixels, budget=budget)

        try:
            result = await svc.admission.run(work)
        except Overloaded as exc:
            count("overloaded")
            return _overloaded(exc)
        except QueryRefusedError as exc:
            return _refusal(exc, count)
        svc.metrics.observe_stages(result.timings_ms)
        count("ok")
        body = result.to_dict()
        for hit in body["hits"]:
            hit |= await asyncio.to_thread(_links, svc.engine, hit["product_id"])
        if debug:
            body["aligned_crop_png"] = _png_b64(result.aligned_crop)
        return body


def _add_product_routes(app: FastAPI, engine: QueryEngine) -> None:
    """A product's record, packshots, 3D model, page (and the viewer script it uses) and thumbnail."""
    product_page = resources.files("glassfinder.search").joinpath("static/product.html").read_text()
    viewer_js = load_viewer_js()

    @app.get("/products/{product_id}")
    def product(product_id: str) -> Any:
        found = engine.product(product_id)
        if found is None:
            raise _not_indexed(engine, product_id)
        return {**found, **_links(engine, product_id)}

    @app.get("/products/{product_id}/packshots/{view}.png")
    def product_packshot(product_id: str, view: str) -> Response:
        data = engine.packshot(product_id, view)
        if data is None:
            raise HTTPException(404, f"no {view!r} packshot of product {product_id!r}")
        return Response(data, media_type="image/png", headers={"cache-control": "public, max-age=3600"})

    @app.get("/products/{product_id}/model.glb")
    def product_model(product_id: str) -> Response:
        data = engine.model_glb(product_id)
        if data is None:
            raise HTTPException(404, f"no 3D model of product {product_id!r}")
        return Response(
            data, media_type="model/gltf-binary", headers={"cache-control": "public, max-age=3600"}
        )

    @app.get("/p/{product_id}", response_class=HTMLResponse)
    async def product_html(product_id: str) -> str:
        return product_page

    @app.get("/static/model-viewer.min.js")
    async def viewer_script() -> Response:
        if viewer_js is None:
            raise HTTPException(404, "the 3D viewer is not installed (bash .ci/setup): pages show packshots")
        return Response(
            viewer_js, media_type="text/javascript", headers={"cache-control": "public, max-age=86400"}
        )

    @app.get("/products/{product_id}/image")
    def product_image(product_id: str) -> Response:
        data = engine.thumbnail(product_id)
        if data is None:
            raise _not_indexed(engine, product_id)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "public, max-age=3600"})


def _add_sample_routes(app: FastAPI, samples: dict[str, bytes] | None) -> None:
    """The example photos the page offers."""
    sample_photos = dict(samples or {})

    @app.get("/samples")
    async def sample_list() -> list[str]:
        return sorted(sample_photos)

    @app.get("/samples/{name}")
    async def sample(name: str) -> Response:
        if name not in sample_photos:
            raise HTTPException(404, f"no sample photo {name!r}")
        return Response(
            sample_photos[name], media_type="image/jpeg" if name.endswith(".jpg") else "image/png"
        )


def _add_health_routes(app: FastAPI, svc: _Service) -> None:
    """/healthz and /metrics."""
    engine, admission = svc.engine, svc.admission

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        """Served on the event loop, never behind queries. `degraded` (still HTTP 200: a load
        balancer keeps sending traffic) when the version served is not CURRENT's, with why."""
        s = engine.serving
        body: dict[str, Any] = {
            "status": "degraded" if engine.degraded else "ok",
            "index": engine.index_name,
            "index_version": s.reader.version,
            "model_sha": s.model_sha,
            "face_model_sha": s.face_model_sha,
            "vectors": int(s.reader.manifest.get("counts", {}).get("vectors", 0)),
            "queued": admission.waiting,
            "running": admission.running,
        }
        if engine.degraded:
            body["reason"] = engine.degraded
        return body

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(svc.metrics.exposition(), media_type=svc.metrics.content_type)


def _shedder(app: FastAPI, svc: _Service) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """`app` behind the admission's early refusal: a full queue costs no upload."""

    async def shed(scope: Any, receive: Any, send: Any) -> None:
        """A search that would be refused anyway is answered 503 before its body is read."""
        if scope["type"] == "http" and scope.get("path") == "/search" and svc.admission.full():
            svc.metrics.count("overloaded")
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
                }
            )
            detail = (
                f"all {svc.limits.max_concurrent} query workers busy and the queue full; retry in a moment"
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": json.dumps({"error": "overloaded", "detail": detail}).encode(),
                }
            )
            return
        await app(scope, receive, send)

    return shed


def create_app(
    engine: QueryEngine, limits: ServiceLimits = ServiceLimits(), *, samples: dict[str, bytes] | None = None
) -> ServiceApp:
    """The FastAPI app serving `engine`. samples: example photos the page offers (name -> bytes)."""
    admission = Admission(limits.admission())
    svc = _Service(engine, limits, admission, _metrics(engine, admission))
    app = FastAPI(
        title="GlassFinder search",
        lifespan=_lifespan(svc),
        docs_url="/docs" if limits.docs else None,
        redoc_url="/redoc" if limits.docs else None,
        openapi_url="/openapi.json" if limits.docs else None,
    )
    _add_error_handlers(app, svc.metrics.count)
    # Registered in this order (the order /openapi.json lists them).
    _add_search_routes(app, svc)
    _add_product_routes(app, engine)
    _add_sample_routes(app, samples)
    _add_health_routes(app, svc)
    count = svc.metrics.count
    return ServiceApp(RequestGuard(_shedder(app, svc), limits.http(), on_reject=count), limits, count)


def server_config(app: ServiceApp, *, host: str, port: int, log_level: str = "info") -> Any:
    """uvicorn's Config for `app`: the h11 protocol with the head limits (see search.http_limits)."""
    http = app.limits.http()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_h11(http, app.count_rejection),
        h11_max_incomplete_event_size=http.max_header_bytes,
        timeout_keep_alive=5,
        lifespan="on",
    )


def serve(
    engine: QueryEngine, *, host: str, port: int, limits: ServiceLimits, samples: dict[str, bytes]
) -> None:
    """Run the service until interrupted (uvicorn, one process; queries on their own workers)."""
    log.info(
        "search service on http://%s:%d/ (index %s v%d%s)",
        host,
        port,
        engine.index_name,
        engine.serving.reader.version,
        f"; DEGRADED: {engine.degraded}" if engine.degraded else "",
    )
    uvicorn.Server(server_config(create_app(engine, limits, samples=samples), host=host, port=port)).run()
