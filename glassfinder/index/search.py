"""Per-product search over a view index: a product's score aggregates its views' similarities.

`max` (a product is as close as its closest view) is exact with an over-fetch of k x the most
views any product has; `mean` re-scores the fetched candidate products over all of their views
from the stored vectors. The evaluation of each published version says which is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from glassfinder.errors import BadInputError, FaultError

AGGREGATIONS = ("max", "mean")


@dataclass(frozen=True)
class ProductHit:
    product_id: str
    score: float
    view_key: str  # the product's closest view


class ProductSearcher:
    """Search an index whose ids are described by an id table (id, view_key, product_id, ...).

    vectors: (n, d) float32 rows aligned with the id table (used by `mean`).
    """

    def __init__(self, index: object, ids: pa.Table, vectors: np.ndarray, aggregation: str = "max") -> None:
        if aggregation not in AGGREGATIONS:
            raise BadInputError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.index = index
        self.aggregation = aggregation
        self.vectors = vectors
        id_col = np.asarray(ids.column("id"), dtype=np.int64)
        order = np.argsort(id_col, kind="stable")
        self._sorted_ids = id_col[order]
        self._row_of_sorted = order
        self._product = np.asarray(ids.column("product_id").to_pylist(), dtype=object)
        self._view_key = np.asarray(ids.column("view_key").to_pylist(), dtype=object)
        products, inverse, counts = np.unique(
            self._product.astype(str), return_inverse=True, return_counts=True
        )
        self._rows_of_product = {p: np.flatnonzero(inverse == i) for i, p in enumerate(products)}
        self.max_views = int(counts.max()) if len(counts) else 1
        self.products = len(products)

    def views_of(self, product_id: str) -> list[str]:
        """View keys of a product's indexed views ([] when the index does not hold it)."""
        rows = self._rows_of_product.get(product_id)
        return [] if rows is None else [str(self._view_key[r]) for r in rows]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._sorted_ids, ids)
        return self._row_of_sorted[np.clip(pos, 0, len(self._sorted_ids) - 1)]

    def search(self, queries: np.ndarray, k: int) -> list[list[ProductHit]]:
        """The top-k products of each query. queries: (q, d) float32 unit vectors."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.vectors.shape[1]:
            raise FaultError(f"queries must have shape (q, {self.vectors.shape[1]}), got {q.shape}")
        fetch = min(int(self.index.ntotal), max(k * self.max_views, 10))  # type: ignore[attr-defined]
        scores, ids = self.index.search(q, fetch)  # type: ignore[attr-defined]
        out: list[list[ProductHit]] = []
        for qi in range(len(q)):
            valid = ids[qi] >= 0
            rows = self._rows(ids[qi][valid])
            best: dict[str, tuple[float, str]] = {}
            for row, score in zip(rows, scores[qi][valid], strict=True):
                pid = str(self._product[row])
                if pid not in best:  # results come best first
                    best[pid] = (float(score), str(self._view_key[row]))
            if self.aggregation == "mean":
                rescored = {
                    pid: (float((self.vectors[self._rows_of_product[pid]] @ q[qi]).mean()), view)
                    for pid, (_, view) in best.items()
                }
                best = rescored
            ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
            out.append([ProductHit(pid, score, view) for pid, (score, view) in ranked])
        return out


def evaluate_searcher(
    searcher: ProductSearcher, queries: np.ndarray, query_products: np.ndarray, *, k: int = 10
) -> dict[str, Any]:
    """top-1/5/10 and mAP@k (reciprocal rank within k) of queries whose product is indexed, and
    each query's rank by product (0: not within k), so a gate can compare versions on the products
    both hold (versions.gate_check)."""
    indexed = set(searcher._rows_of_product)
    keep = np.array([str(p) in indexed for p in query_products])
    if not keep.any():
        raise BadInputError("no evaluation query belongs to an indexed product")
    results = searcher.search(queries[keep], k)
    ranks = []
    for hits, truth in zip(results, query_products[keep], strict=True):
        found = [h.product_id for h in hits]
        ranks.append(found.index(str(truth)) + 1 if str(truth) in found else 0)
    by_product: dict[str, list[int]] = {}
    for truth, rank in zip(query_products[keep], ranks, strict=True):
        by_product.setdefault(str(truth), []).append(int(rank))
    return {"ranks_by_product": by_product, **rank_figures(ranks)}


def rank_figures(ranks: list[int]) -> dict[str, Any]:
    """Query count, top-1/5/10 and mAP@10 from each query's rank (1-based; 0: not within k)."""
    r = np.array(ranks)
    return {
        "queries": len(r),
        "top1": round(float((r == 1).mean()), 4),
        "top5": round(float(((r >= 1) & (r <= 5)).mean()), 4),
        "top10": round(float(((r >= 1) & (r <= 10)).mean()), 4),
        "mAP@10": round(float(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0).mean()), 4),
    }
