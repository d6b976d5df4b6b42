"""`glassfinder search` and `glassfinder serve`: the query path, for one photo and over HTTP."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glassfinder import settings
from glassfinder.cli.common import SubParsers, add, float_between, int_between, open_args_store
from glassfinder.errors import BadInputError

#: Exit status of `glassfinder search` when the photo is refused (errors exit 1).
REFUSED_EXIT = 3
#: Pillow refuses images over twice this as decompression bombs and warns above it.
MAX_MEGAPIXELS = 89
# Spelt here so `glassfinder --help` does not import the heavy module that owns it
# (tests/test_hostile_input.py checks they agree).
MAX_TOP_K = 100  # glassfinder.search.query.MAX_TOP_K


def cmd_search(args: argparse.Namespace) -> int:
    # torch: imported on use, keeping --help fast
    from glassfinder.errors import QueryRefusedError
    from glassfinder.search.query import QueryEngine, read_photo

    path = Path(args.photo)
    if not path.is_file():
        raise BadInputError(f"photo {path} does not exist or is not a file")
    engine = QueryEngine(open_args_store(args), args.index or settings.index_name())
    try:
        result = engine.search(read_photo(path), path.name, k=args.top_k)
    except QueryRefusedError as exc:
        if args.json:
            print(json.dumps({"refused": True, "reason": exc.reason, "message": str(exc)}))
        else:
            print(f"glassfinder: refused ({exc.reason}): {exc}", file=sys.stderr)
        return REFUSED_EXIT
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    t = result.timings_ms
    (lx, ly), (rx, ry) = result.eyes_xy
    faces = f"the largest of {result.faces_found} faces" if result.faces_found > 1 else "face"
    border = ", cut by the photo's border" if result.face_at_border else ""
    print(
        f"{path.name}: {faces} {result.face_box_xyxy}{border} (score {result.detection_score:.2f}), "
        f"eyes ({lx:.0f}, {ly:.0f}) ({rx:.0f}, {ry:.0f}), glasses p={result.glasses_probability:.2f}; "
        f"index {result.index} v{result.index_version}; {t['total']:.0f} ms (detect {t['detect']:.0f}, "
        f"analyse {t['analyse']:.0f}, align+embed {t['align_embed']:.0f}, search {t['search']:.1f})"
    )
    for hit in result.hits:
        name = hit.product.get("display_name") or ""
        print(f"{hit.rank:>3}. {hit.product_id:<24} {hit.score:.4f}  {name}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # torch: imported on use, keeping --help fast
    from glassfinder.search.query import QueryEngine
    from glassfinder.search.service import ServiceLimits, serve

    samples = {}
    for path in args.sample or []:
        p = Path(path)
        if not p.is_file():
            raise BadInputError(f"sample photo {p} does not exist or is not a file")
        samples[p.name] = p.read_bytes()
    limits = ServiceLimits(
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        max_pixels=args.max_megapixels * 1_000_000,
        max_decode_bytes=args.max_decode_mb * 1024 * 1024,
        max_concurrent=args.workers,
        queue_depth=args.queue_depth,
        queue_wait_s=args.queue_wait,
        reload_interval_s=args.reload_interval,
        max_header_bytes=args.max_header_kb * 1024,
        max_headers=args.max_headers,
        header_timeout_s=args.header_timeout,
        body_read_timeout_s=args.body_timeout,
        request_timeout_s=args.request_timeout,
        docs=args.docs,
    )
    # fallback: a broken CURRENT starts the service on the newest version that verifies (degraded)
    engine = QueryEngine(open_args_store(args), args.index or settings.index_name(), fallback=True)
    serve(engine, host=args.host, port=args.port, limits=limits, samples=samples)
    return 0


def register(sub: SubParsers) -> None:
    p = add(sub, "search", cmd_search, "find the glasses in a photo: top-k products of the CURRENT index")
    p.add_argument("photo", help="a JPEG, PNG or WebP photo of a face wearing glasses")
    p.add_argument(
        "--top-k", type=int_between(1, MAX_TOP_K), default=10, help="how many products to show (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print the result (or refusal) as JSON")
    p.add_argument("--index", default=None, help=f"index name (default {settings.DEFAULT_INDEX_NAME})")

    p = add(sub, "serve", cmd_serve, "serve search over HTTP with the evaluation page at /")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--index", default=None, help=f"index name (default {settings.DEFAULT_INDEX_NAME})")
    p.add_argument("--sample", action="append", help="a photo the page offers to pick (repeatable)")
    p.add_argument("--max-upload-mb", type=int_between(1, 1024), default=10)
    p.add_argument("--max-megapixels", type=int_between(1, MAX_MEGAPIXELS), default=40)
    p.add_argument(
        "--max-decode-mb",
        type=int_between(1, 65_536),
        default=192,
        help="peak memory one photo's decode may hold, whatever its header claims (default 192)",
    )
    p.add_argument(
        "--workers",
        "--max-concurrent",
        type=int_between(1, 256),
        default=2,
        help="query workers: one per core (default 2)",
    )
    p.add_argument(
        "--queue-depth",
        type=int_between(0, 100_000),
        default=8,
        help="searches that may wait for a worker; past it 503 at once (default 8)",
    )
    p.add_argument(
        "--queue-wait",
        type=float_between(0.0, 3600.0),
        default=1.0,
        help="seconds a search may wait for a worker before its 503 (default 1)",
    )
    p.add_argument("--max-header-kb", type=int_between(1, 1024), default=16, help="request head size (431)")
    p.add_argument("--max-headers", type=int_between(8, 10_000), default=64, help="header count (431)")
    p.add_argument(
        "--header-timeout", type=float_between(0.05, 3600.0), default=10.0, help="seconds for the head (408)"
    )
    p.add_argument(
        "--body-timeout",
        type=float_between(0.05, 3600.0),
        default=10.0,
        help="longest silence between body chunks, seconds (408)",
    )
    p.add_argument(
        "--request-timeout",
        type=float_between(0.1, 3600.0),
        default=30.0,
        help="whole request, body and work included, seconds (408 or 503)",
    )
    p.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (off by default)")
    p.add_argument(
        "--reload-interval",
        type=float_between(0.0, 86_400.0, open_low=True),
        default=10.0,
        help="seconds between CURRENT checks",
    )
