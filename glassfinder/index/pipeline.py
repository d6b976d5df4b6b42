"""From feature shards to a published index: collect, build, evaluate, publish; and incremental updates.

The catalogue manifest decides what is indexed: every product whose asset has a feature shard
for (model, spec). Products without one are reported, not silently dropped. Evaluation embeds
the held-out query views (damaged, other faces) with the index's model and searches the
candidate exactly as the serving reader does, with max and mean aggregation; the better one is
what the version serves.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from glassfinder import layout
from glassfinder.catalog.ingest import split_uri
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.errors import GlassFinderError, IndexStoreError, ObjectNotFoundError
from glassfinder.index.build import ID_SCHEMA, BuiltIndex, IndexParams, build_index
from glassfinder.index.search import AGGREGATIONS, ProductSearcher, evaluate_searcher
from glassfinder.index.versions import (
    GateConfig,
    PublishResult,
    fetch_current_verified,
    load_files,
    publish_version,
)
from glassfinder.store.base import ObjectStore
from glassfinder.store.shards import embeddings_of, read_shard

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """vectors: (n, d) float32; meta: view_key, product_id, asset_sha256 per row."""

    vectors: np.ndarray
    meta: pa.Table
    missing: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class QuerySet:
    vectors: np.ndarray
    products: np.ndarray
    query_spec: str
    damage_seed: int


def content_digest(pairs: set[tuple[str, str]], model_sha: str, spec_hash: str) -> str:
    """What an index holds, as one digest: its (product id, asset sha256) pairs, model and spec.

    Two versions with the same digest answer every query alike (same vectors under the same
    ids), so a nightly run whose catalogue would give CURRENT's digest has nothing to publish.
    """
    h = hashlib.sha256(f"{model_sha}\n{spec_hash}\n".encode())
    for pid, sha in sorted(pairs):
        h.update(f"{pid}\t{sha}\n".encode())
    return h.hexdigest()


def pairs_of(ids: pa.Table) -> set[tuple[str, str]]:
    """The (product id, asset sha256) pairs of an id table."""
    return set(zip(ids.column("product_id").to_pylist(), ids.column("asset_sha256").to_pylist(), strict=True))


def catalogue_rows(manifest_uri: str) -> tuple[list[dict[str, Any]], str]:
    """(manifest rows, sha256 of the manifest's bytes: the catalogue digest)."""
    mstore, mkey = split_uri(manifest_uri)
    digest = hashlib.sha256(mstore.get(mkey)).hexdigest()
    return read_manifest_rows(mstore, mkey), digest


def collect_features(
    store: ObjectStore, rows: list[dict[str, Any]], model_sha: str, spec_hash: str
) -> FeatureSet:
    """Every row's feature shard for (model, spec), concatenated; rows lacking one are listed."""
    vectors, metas, missing = [], [], []
    for row in rows:
        sha = str(row.get("asset_sha256") or "")
        try:
            key = layout.feature_shard_key(model_sha, spec_hash, sha)
            table = read_shard(
                store, key, "feature", columns=["view_key", "product_id", "asset_sha256", "embedding"]
            )
        except (ObjectNotFoundError, GlassFinderError) as exc:
            missing.append(
                {"product_id": row.get("product_id"), "reason": type(exc).__name__, "message": str(exc)}
            )
            continue
        if table.num_rows == 0:
            missing.append(
                {"product_id": row.get("product_id"), "reason": "empty", "message": f"{key} has no rows"}
            )
            continue
        pid = str(row["product_id"])
        if set(table.column("product_id").to_pylist()) != {pid}:
            # The shard is keyed by asset: a product reusing another's asset gets its own rows.
            table = table.set_column(1, "product_id", pa.array([pid] * table.num_rows, pa.string()))
        vectors.append(embeddings_of(table))
        metas.append(table.select(["view_key", "product_id", "asset_sha256"]))
    if not vectors:
        raise IndexStoreError(
            f"no feature shards under {store.uri}/features/{model_sha}/{spec_hash}/ for this catalogue: "
            "run `glassfinder embed` first"
        )
    return FeatureSet(np.concatenate(vectors), pa.concat_tables(metas), missing)


def id_table(meta: pa.Table, first_id: int = 0) -> pa.Table:
    ids = pa.array(np.arange(first_id, first_id + meta.num_rows, dtype=np.int64))
    return pa.Table.from_arrays(
        [ids, meta.column("view_key"), meta.column("product_id"), meta.column("asset_sha256")],
        schema=ID_SCHEMA,
    )


def evaluation_queries(store: ObjectStore, query_spec: str, embedder: Any, *, seed: int = 0) -> QuerySet:
    """The held-out query views of `query_spec`, damaged like photos and embedded."""
    from glassfinder.embed.augment import QUERY_DAMAGE
    from glassfinder.embed.data import load_views

    views = load_views(store, query_spec, embedder.geometry, damage=QUERY_DAMAGE, seed=seed)
    return QuerySet(embedder.embed(views.crops), views.product_ids.astype(str), query_spec, seed)


def evaluate_built(built: BuiltIndex, queries: QuerySet) -> dict[str, Any]:
    """Figures for both aggregations; 'aggregation' names the better (top-1, then top-10)."""
    figures = {
        agg: evaluate_searcher(
            ProductSearcher(built.index, built.ids, built.vectors, agg), queries.vectors, queries.products
        )
        for agg in AGGREGATIONS
    }
    best = max(AGGREGATIONS, key=lambda a: (figures[a]["top1"], figures[a]["top10"], a == "max"))
    return {
        **figures[best],
        "aggregation": best,
        "by_aggregation": figures,
        "query_spec": queries.query_spec,
        "damage_seed": queries.damage_seed,
    }


def _model_sha(store: ObjectStore, model_ref: str) -> str:
    """The sha a model reference names (NAME resolves through its CURRENT)."""
    from glassfinder.embed.registry import current_sha, parse_model_ref

    name, sha = parse_model_ref(model_ref)
    if sha is None:
        sha, _ = current_sha(store, name)
    if sha is None:
        raise IndexStoreError(f"no model named {name!r} is published in {store.uri}: run `glassfinder train`")
    return sha


def _embedder(store: ObjectStore, model_ref: str, device: str | None) -> Any:
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.registry import load_model

    return Embedder(load_model(store, model_ref).model, device=device)


def build_and_publish(
    store: ObjectStore,
    name: str,
    *,
    manifest_uri: str,
    model_ref: str,
    spec_hash: str,
    query_spec: str | None,
    params: IndexParams | None = None,
    gate: GateConfig | None = None,
    force_reason: str | None = None,
    publish: bool = True,
    device: str | None = None,
) -> tuple[BuiltIndex, dict[str, Any], PublishResult | None, FeatureSet]:
    """A full rebuild from the catalogue's feature shards, evaluated, published through the gate."""
    rows, digest = catalogue_rows(manifest_uri)
    model_sha = _model_sha(store, model_ref)
    features = collect_features(store, rows, model_sha, spec_hash)
    for m in features.missing:
        log.warning("not indexed: %s (%s)", m["product_id"], m["message"])
    built = build_index(features.vectors, id_table(features.meta), params)
    evaluation = None
    if query_spec:
        embedder = _embedder(store, f"{model_ref.partition('@')[0]}@{model_sha}", device)
        evaluation = evaluate_built(built, evaluation_queries(store, query_spec, embedder))
    info = {
        "model": model_ref.partition("@")[0],
        "model_sha": model_sha,
        "spec_hash": spec_hash,
        "catalog_manifest": manifest_uri,
        "catalog_digest": digest,
        "aggregation": evaluation["aggregation"] if evaluation else "max",
        "kind": "full",
        "not_indexed": len(features.missing),
        "content_digest": content_digest(pairs_of(features.meta), model_sha, spec_hash),
    }
    result = None
    if publish:
        result = publish_version(
            store, name, built, info, evaluation=evaluation, gate=gate, force_reason=force_reason
        )
    return built, info | {"evaluation": evaluation}, result, features


def load_current(store: ObjectStore, name: str) -> tuple[int, dict[str, Any], BuiltIndex]:
    """(version, manifest, index) of CURRENT, every file verified."""
    current, _, manifest, files = fetch_current_verified(store, name)
    version = int(current["version"])
    index, ids, vectors = load_files(files)
    from glassfinder.index.build import apply_search_params

    apply_search_params(index, manifest.get("search_params", {}))
    built = BuiltIndex(index, manifest["factory"], ids, vectors, dict(manifest.get("search_params", {})))
    return version, manifest, built


def update_and_publish(
    store: ObjectStore,
    name: str,
    *,
    manifest_uri: str | None,
    remove_products: list[str] | None = None,
    only_products: list[str] | None = None,
    query_spec: str | None = None,
    gate: GateConfig | None = None,
    force_reason: str | None = None,
    device: str | None = None,
) -> tuple[PublishResult, dict[str, int]]:
    """A child of CURRENT: new (or changed) products of `manifest_uri` added, `remove_products` removed.

    only_products: take just these products of `manifest_uri` (the catalogue's changed ones).
    The copy keeps CURRENT's model, spec and trained quantiser; only the named products change.
    """
    version, parent, built = load_current(store, name)
    model_sha, spec_hash = parent["model_sha"], parent["spec_hash"]
    rows, digest = catalogue_rows(manifest_uri) if manifest_uri else ([], parent["catalog_digest"])
    if only_products is not None:
        wanted = set(only_products)
        rows = [r for r in rows if str(r.get("product_id")) in wanted]
    added = collect_features(store, rows, model_sha, spec_hash) if rows else None
    replace = set(remove_products or [])
    if added is not None:
        replace |= set(added.meta.column("product_id").to_pylist())
    products = np.asarray(built.ids.column("product_id").to_pylist(), dtype=object)
    unknown = sorted(set(remove_products or []) - set(products.tolist()))
    if unknown:
        raise IndexStoreError(f"cannot remove products not in index {name} v{version}: {unknown[:5]}")
    drop = np.array([p in replace for p in products], dtype=bool)
    ids = np.asarray(built.ids.column("id"), dtype=np.int64)
    index = built.index
    if drop.any():
        index.remove_ids(ids[drop])
    keep_ids, keep_vectors = built.ids.filter(pa.array(~drop)), built.vectors[~drop]
    counts = {"removed_rows": int(drop.sum()), "added_rows": 0}
    if added is not None:
        new_ids = id_table(added.meta, first_id=int(ids.max()) + 1 if len(ids) else 0)
        index.add_with_ids(added.vectors, np.asarray(new_ids.column("id"), dtype=np.int64))
        keep_ids = pa.concat_tables([keep_ids, new_ids])
        keep_vectors = np.concatenate([keep_vectors, added.vectors])
        counts["added_rows"] = added.meta.num_rows
    child = BuiltIndex(
        index, parent["factory"], keep_ids, keep_vectors, dict(parent.get("search_params", {}))
    )
    child.recall_at_10 = parent.get("recall_at_10_vs_exact")
    evaluation = None
    if query_spec or (parent.get("evaluation") or {}).get("query_spec"):
        embedder = _embedder(store, f"{parent['model']}@{model_sha}", device)
        spec = query_spec or parent["evaluation"]["query_spec"]
        seed = int((parent.get("evaluation") or {}).get("damage_seed", 0))
        evaluation = evaluate_built(child, evaluation_queries(store, spec, embedder, seed=seed))
    info = {k: parent[k] for k in ("model", "model_sha", "spec_hash", "catalog_manifest") if k in parent} | {
        "catalog_digest": digest,
        "aggregation": evaluation["aggregation"] if evaluation else parent.get("aggregation", "max"),
        "kind": "incremental",
        "changes": counts | {"removed_products": sorted(set(remove_products or []))},
        "content_digest": content_digest(pairs_of(keep_ids), model_sha, spec_hash),
        "not_indexed": len(added.missing) if added is not None else 0,
    }
    result = publish_version(
        store, name, child, info, evaluation=evaluation, gate=gate, force_reason=force_reason, parent=version
    )
    return result, counts
