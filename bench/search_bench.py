"""Query latency and throughput of the search path on CPU against a catalogue-sized index.

Builds a local store with a real model (untrained: latency does not depend on the weights), the
packaged face-analysis model, and an index of `--products` products x `--views` views whose vectors are
family-clustered synthetic unit vectors (rendering 3,200 products is the pipeline bench's job).
Queries are the two public-domain photos with rendered glasses, sent as JPEG like a phone's
(--format png for lossless uploads, ~9 ms more to decode). Prints p50/p99 per stage
(decode, detect, face analysis, align+embed, search) in-process, then requests per second and latency over
loopback HTTP at each concurrency level.

    .venv/bin/python bench/search_bench.py --products 3200 --queries 100 [--format png]
"""

from __future__ import annotations

import argparse
import io
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _png(a: np.ndarray) -> bytes:
    return _encode(a, "png")


def _encode(a: np.ndarray, fmt: str) -> bytes:
    """Query photos as a shopper's phone sends them (JPEG, quality 90), or lossless PNG, which
    costs ~9 ms more to decode at 512 px."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
    return buf.getvalue()


def build_world(
    root: Path, products: int, views: int, seed: int, fmt: str = "jpeg"
) -> tuple[object, list[bytes]]:
    import matplotlib.cbook
    import skimage.data

    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.embed.model import ModelConfig, build_model
    from glassfinder.embed.registry import publish_model
    from glassfinder.index.build import IndexParams, build_index
    from glassfinder.index.versions import publish_version
    from glassfinder.store import LocalStore

    store = LocalStore(root / "store")
    source = LocalStore(root / "export")
    generate_catalog(source, 8, seed=seed, workers=1)
    ingest_manifest(f"{source.uri}/manifest.parquet", dest=store)
    model = build_model(ModelConfig(), seed=seed).eval()
    sha = publish_model(store, "glasses", model, {"training": {"seed": seed}})
    unseen_face = _png(skimage.data.astronaut())

    rng = np.random.default_rng(seed)
    dim = model.config.dim
    families = max(1, products // 4)
    centres = rng.normal(size=(families, dim)).astype(np.float32)
    product_vec = centres[np.arange(products) // 4] + 0.5 * rng.normal(size=(products, dim)).astype(
        np.float32
    )
    vectors = np.repeat(product_vec, views, axis=0) + 0.3 * rng.normal(size=(products * views, dim)).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    import pyarrow as pa

    n = products * views
    pids = [f"p{i // views:05d}" for i in range(n)]
    asset, spec = "a" * 64, "b" * 16
    ids = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "view_key": [f"{asset}/{spec}/head-{i % views}/{i}" for i in range(n)],
            "product_id": pids,
            "asset_sha256": [asset] * n,
        }
    )
    built = build_index(vectors, ids, IndexParams())
    info = {"model": "glasses", "model_sha": sha, "spec_hash": spec, "kind": "full"}
    publish_version(store, "catalog", built, info, evaluation=None, force_reason="search bench")

    from glassfinder.search.samples import photo_wearing

    training_face = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    rows = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    queries = [
        _encode(photo_wearing(store, row, photo, name), fmt)
        for name, photo in (("astronaut", unseen_face), ("hopper", training_face))
        for row in rows[:4]
    ]
    return store, queries


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=3200)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--queries", type=int, default=100, help="in-process queries timed")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=48, help="HTTP requests per concurrency level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="query photo encoding")
    args = parser.parse_args()

    import httpx
    import uvicorn

    from glassfinder.errors import QueryRefusedError
    from glassfinder.search.query import QueryEngine
    from glassfinder.search.service import ServiceLimits, create_app

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store, queries = build_world(Path(tmp), args.products, args.views, args.seed, args.format)
        engine = QueryEngine(store, "catalog")  # type: ignore[arg-type]
        print(
            f"index: {args.products} products x {args.views} views = {args.products * args.views} vectors "
            f"(set up in {time.perf_counter() - t0:.0f} s); {len(queries)} distinct query photos "
            f"(512 x 512 {args.format.upper()})"
        )
        stages: dict[str, list[float]] = {}
        refused = 0
        for i in range(args.queries + 3):
            try:
                result = engine.search(queries[i % len(queries)], f"q.{args.format}", k=10)
            except QueryRefusedError:
                refused += 1
                continue
            if i >= 3:  # warm-up
                for stage, ms in result.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)
        print(f"in-process, one query at a time ({len(stages.get('total', []))} timed, {refused} refused):")
        for stage in ("decode", "detect", "analyse", "align_embed", "search", "total"):
            v = stages[stage]
            print(f"  {stage:<12} p50 {pct(v, 50):8.2f} ms   p99 {pct(v, 99):8.2f} ms")

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        limits = ServiceLimits(max_concurrent=8, reload_interval_s=3600)
        server = uvicorn.Server(
            uvicorn.Config(create_app(engine, limits), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/search"
        print("HTTP on loopback:")
        with httpx.Client(timeout=120) as client:

            def ask(i: int) -> float:
                start = time.perf_counter()
                photo = (f"q.{args.format}", queries[i % len(queries)], f"image/{args.format}")
                r = client.post(url, files={"photo": photo})
                r.raise_for_status()
                return (time.perf_counter() - start) * 1000

            for level in (int(c) for c in args.concurrency.split(",")):
                with ThreadPoolExecutor(level) as pool:
                    list(pool.map(ask, range(level)))  # warm-up
                    start = time.perf_counter()
                    lat = list(pool.map(ask, range(args.requests)))
                    wall = time.perf_counter() - start
                print(
                    f"  concurrency {level}: {args.requests / wall:6.1f} req/s   "
                    f"p50 {pct(lat, 50):7.1f} ms   p99 {pct(lat, 99):7.1f} ms"
                )
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    main()
