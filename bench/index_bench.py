"""Index build time, per-query search latency, and the approximate index against exact search.

Two parts:
1. catalogue scale: 3,200 products x their views (the real feature shards of a store with
   --store/--model/--spec, else clustered synthetic vectors of the same shape): build time and
   per-query latency p50/p99 of per-product top-10 search, one query at a time;
2. 1,000,000 synthetic 256-d vectors (clustered like products x views): the automatically chosen
   approximate index beside exact search: build time, recall@10 against exact, p50/p99 latency,
   and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa


def clustered(n_products: int, views: int, dim: int, seed: int) -> tuple[np.ndarray, pa.Table]:
    # Products cluster in families (like colourways and shapes of real frames), so a query's
    # neighbours beyond its own product's views are meaningful, not random.
    rng = np.random.default_rng(seed)
    families = rng.normal(size=(max(1, n_products // 50), dim)).astype(np.float32)
    families /= np.linalg.norm(families, axis=1, keepdims=True)
    offsets = rng.normal(0, 0.6 / np.sqrt(dim), size=(n_products, dim)).astype(np.float32)
    centres = families[rng.integers(len(families), size=n_products)] + offsets
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    v = np.repeat(centres, views, axis=0) + rng.normal(
        0, 0.6 / np.sqrt(dim), size=(n_products * views, dim)
    ).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    n = len(v)
    meta = pa.table(
        {
            "view_key": pa.array([f"v{i}" for i in range(n)]),
            "product_id": pa.array([f"p{i // views}" for i in range(n)]),
            "asset_sha256": pa.array(["0" * 64] * n),
        }
    )
    return v, meta


def latencies(fn, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None, :])
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def catalog_part(args: argparse.Namespace) -> None:
    from glassfinder.index.build import IndexParams, build_index
    from glassfinder.index.pipeline import catalog_rows, collect_features, id_table
    from glassfinder.index.search import ProductSearcher

    if args.store:
        from glassfinder.store import open_store

        store = open_store(args.store)
        rows, _ = catalog_rows(f"{store.uri}/{args.manifest_key}")
        features = collect_features(store, rows, args.model_sha, args.spec)
        vectors, meta, source = features.vectors, features.meta, f"feature shards of {args.store}"
    else:
        vectors, meta = clustered(3200, 6, 128, seed=1)
        source = "synthetic clustered vectors"
    t0 = time.perf_counter()
    built = build_index(vectors, id_table(meta), IndexParams())
    build_s = time.perf_counter() - t0
    searcher = ProductSearcher(built.index, built.ids, built.vectors, "max")
    products = len(set(meta.column("product_id").to_pylist()))
    rng = np.random.default_rng(2)
    queries = vectors[rng.choice(len(vectors), 500, replace=False)]
    p50, p99 = latencies(lambda q: searcher.search(q, 10), queries)
    print(f"catalogue: {products} products, {len(vectors)} x {vectors.shape[1]} vectors ({source})")
    print(
        f"  {built.factory}: build {build_s * 1000:.0f} ms; per-product top-10 search "
        f"p50 {p50:.2f} ms p99 {p99:.2f} ms"
    )


def million_part(args: argparse.Namespace) -> None:
    import faiss

    from glassfinder.index.build import IndexParams, build_index, exact_top, recall_at
    from glassfinder.index.pipeline import id_table

    views = 6
    vectors, meta = clustered(args.vectors // views, views, 256, seed=3)
    print(f"\n{len(vectors):,} synthetic 256-d vectors ({len(vectors) // views:,} products x {views} views)")
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(256)
    flat.add(vectors)
    flat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = build_index(vectors, id_table(meta), IndexParams(recall_target=args.recall_target))
    ann_s = time.perf_counter() - t0
    rng = np.random.default_rng(4)
    rows = rng.choice(len(vectors), args.queries, replace=False)
    queries = vectors[rows] + rng.normal(0, 0.3 / 16, size=(args.queries, 256)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top(vectors, queries, 10)
    found = built.index.search(queries, 10)[1]
    recall = recall_at(found, truth)
    exact_p50, exact_p99 = latencies(lambda q: flat.search(q, 10), queries[: args.exact_queries])
    ann_p50, ann_p99 = latencies(lambda q: built.index.search(q, 10), queries)
    print(f"  exact  IndexFlatIP: build {flat_s:.1f} s; top-10 p50 {exact_p50:.2f} ms p99 {exact_p99:.2f} ms")
    print(
        f"  approx {built.factory} {built.search_params}: build {ann_s:.1f} s; top-10 p50 {ann_p50:.2f} ms "
        f"p99 {ann_p99:.2f} ms; recall@10 vs exact {recall:.4f} "
        f"(tuned on its own sample: {built.recall_at_10})"
    )
    print(f"  speed-up over exact: p50 {exact_p50 / ann_p50:.1f}x, p99 {exact_p99 / ann_p99:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store with feature shards (default: synthetic)")
    parser.add_argument("--manifest-key", default="catalog/manifest.parquet")
    parser.add_argument("--model-sha", default=None)
    parser.add_argument("--spec", default=None)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=200, help="exact search is slow: fewer")
    parser.add_argument("--recall-target", type=float, default=0.95)
    parser.add_argument("--skip-million", action="store_true")
    args = parser.parse_args()
    catalog_part(args)
    if not args.skip_million:
        million_part(args)


if __name__ == "__main__":
    main()
