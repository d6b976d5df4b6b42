"""Build a FAISS index over view embeddings: exact at catalogue scale, approximate above a size.

Vectors are unit-length, so inner product is cosine similarity. Up to `exact_max_vectors` the
index is exact (flat); above it an IVF index is trained, with flat storage while the vectors fit
`max_memory_bytes` and product quantisation when they do not, and its `nprobe` is raised until
recall@10 against exact search on a sample of queries reaches the target.

Ids are row numbers of the id table that travels with the index (view key, product, asset), so
search results map back to products without touching the feature shards.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from glassfinder.errors import FaultError

log = logging.getLogger(__name__)

ID_FIELDS = (
    pa.field("id", pa.int64(), nullable=False),
    pa.field("view_key", pa.string(), nullable=False),
    pa.field("product_id", pa.string(), nullable=False),
    pa.field("asset_sha256", pa.string(), nullable=False),
)
ID_SCHEMA = pa.schema(list(ID_FIELDS))


@dataclass(frozen=True)
class IndexParams:
    """Budgets and targets for choosing the index (units in the names)."""

    exact_max_vectors: int = 200_000
    recall_target: float = 0.95
    max_memory_bytes: int = 4 * 1024**3
    tune_queries: int = 1000
    seed: int = 0


@dataclass
class BuiltIndex:
    """An index with its id table and vectors. vectors: (n, d) float32, ids: (n,) int64."""

    index: Any  # faiss.Index
    factory: str
    ids: pa.Table
    vectors: np.ndarray
    search_params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None
    build_seconds: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.index.ntotal)


def choose_factory(n: int, dim: int, params: IndexParams) -> str:
    """The FAISS factory string for n vectors of dim components under the budgets."""
    if n <= params.exact_max_vectors:
        return "IDMap2,Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    if n * dim * 4 <= params.max_memory_bytes:
        return f"IVF{nlist},Flat"
    m = max(8, dim // 4)
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise FaultError(f"vectors must have shape (n >= 1, dim), got {v.shape}")
    if not np.isfinite(v).all():
        raise FaultError("vectors contain NaN or infinite values")
    return v


def build_index(vectors: np.ndarray, ids: pa.Table, params: IndexParams | None = None) -> BuiltIndex:
    """Index `vectors` whose rows are described by `ids` (ID_SCHEMA, id = row number)."""
    params = params or IndexParams()
    start = time.perf_counter()
    v = _check_vectors(vectors)
    if ids.num_rows != len(v):
        raise FaultError(f"id table has {ids.num_rows} rows for {len(v)} vectors")
    factory = choose_factory(len(v), v.shape[1], params)
    index = faiss.index_factory(v.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    id_array = np.asarray(ids.column("id"), dtype=np.int64)
    if not index.is_trained:
        rng = np.random.default_rng(params.seed)
        nlist = faiss.extract_index_ivf(index).nlist
        # 40 points per list: faiss's own floor for stable k-means, and a fraction of n at scale.
        sample = v[np.sort(rng.choice(len(v), size=min(len(v), 40 * nlist), replace=False))]
        index.train(sample)
    if factory.startswith("IDMap"):
        index.add_with_ids(v, id_array)
    else:
        index = faiss.IndexIDMap2(index)
        index.add_with_ids(v, id_array)
    built = BuiltIndex(index, factory, ids, v)
    if not factory.startswith("IDMap2,Flat"):
        tune_nprobe(built, params)
    built.build_seconds = time.perf_counter() - start
    log.info(
        "built %s over %d x %d in %.1f s %s",
        factory,
        len(v),
        v.shape[1],
        built.build_seconds,
        built.search_params,
    )
    return built


def ivf_of(index: Any) -> Any:
    """The IVF index inside an IDMap wrapper (or None for flat indexes)."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return inner if hasattr(inner, "nprobe") else None


def apply_search_params(index: Any, search_params: dict[str, int]) -> None:
    ivf = ivf_of(index)
    if ivf is not None and "nprobe" in search_params:
        ivf.nprobe = int(search_params["nprobe"])


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) row numbers of the exact top-k by inner product."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found, per query."""
    hits = [
        len(set(f[f >= 0].tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def tune_nprobe(built: BuiltIndex, params: IndexParams) -> None:
    """Raise nprobe (powers of two) until recall@10 against exact search meets the target."""
    rng = np.random.default_rng(params.seed + 1)
    n = len(built.vectors)
    rows = rng.choice(n, size=min(n, params.tune_queries), replace=False)
    # Perturbed catalogue vectors (noise of norm ~0.2, whatever the dimension) stand in for queries.
    noise = rng.normal(0, 0.2 / np.sqrt(built.dim), size=(len(rows), built.dim)).astype(np.float32)
    queries = built.vectors[rows] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.asarray(built.ids.column("id"), dtype=np.int64)
    truth = ids[exact_top(built.vectors, queries, 10)]
    ivf = ivf_of(built.index)
    nprobe, recall = 1, 0.0
    while nprobe <= ivf.nlist:
        ivf.nprobe = nprobe
        recall = recall_at(built.index.search(queries, 10)[1], truth)
        if recall >= params.recall_target:
            break
        nprobe *= 2
    built.search_params = {"nprobe": min(nprobe, ivf.nlist)}
    built.recall_at_10 = round(recall, 4)
