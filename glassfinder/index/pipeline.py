"""From feature shards to a published index: collect, build, evaluate, publish; and incremental updates.

The one build-and-publish flow: the CLI, the benches and the pipeline's publishing tasks all
come here (glassfinder.pipeline.publish only turns task params into these calls and their
outcome into JSON).

The catalogue manifest decides what is indexed: every product whose asset has a feature shard
for (model, spec). Products without one are reported, not silently dropped. Evaluation embeds
the held-out query views (damaged, other faces) with the index's model and searches the
candidate exactly as the serving reader does, with max and mean aggregation; the better one is
what the version serves.

A full run that skips an unchanged catalogue (publish_if_changed) first compares what it would
index with what CURRENT indexes (content_digest): the same products, assets, model and spec
publish nothing, so a quiet night leaves one version, not a duplicate a night.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from glassfinder import layout
from glassfinder.catalog.snapshot import read_catalog_rows
from glassfinder.errors import (
    BadInputError,
    FaultError,
    GlassFinderError,
    IndexBuildError,
    IndexRequestError,
    RetryableError,
)
from glassfinder.index.build import ID_SCHEMA, BuiltIndex, IndexParams, apply_search_params, build_index
from glassfinder.index.search import AGGREGATIONS, ProductSearcher, evaluate_searcher
from glassfinder.index.versions import (
    GateConfig,
    PublishResult,
    fetch_current_verified,
    load_files,
    publish_version,
    read_current,
    read_ids,
    read_manifest,
)
from glassfinder.quarantine import QuarantineRecord, records_json
from glassfinder.store.base import ObjectStore
from glassfinder.store.shards import embeddings_of, read_shard

if TYPE_CHECKING:  # embed.infer pulls torch: kept off the DAG-parse path
    from glassfinder.embed.infer import Embedder

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """vectors: (n, d) float32; meta: view_key, product_id, asset_sha256 per row."""

    vectors: np.ndarray
    meta: pa.Table
    missing: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PublishRequest:
    """One publish, as the CLI, the benches and the pipeline's tasks ask for it.

    manifest_uri: the catalogue the index covers (a run passes its pinned snapshot).
    model_ref: NAME@SHA (or NAME: its CURRENT) whose feature shards are indexed; None for a
        child of CURRENT, which keeps its parent's model and spec.
    query_spec: the render spec of the held-out evaluation queries (None: not evaluated).
    """

    name: str
    manifest_uri: str
    model_ref: str | None = None
    spec_hash: str | None = None
    query_spec: str | None = None
    gate: GateConfig | None = None
    force_reason: str | None = None
    device: str | None = None

    def target(self) -> tuple[str, str]:
        """(model ref, spec hash); a full build needs both."""
        if self.model_ref is None or self.spec_hash is None:
            raise BadInputError(f"index {self.name}: a full build needs a model and a spec, got none")
        return self.model_ref, self.spec_hash


@dataclass
class PublishOutcome:
    """What a publishing run did: the version it published, or (result None) why it published none.

    version: CURRENT's version when nothing was published (None without CURRENT).
    report: what the run tells its caller besides (products not indexed, added and removed
    products; an unchanged CURRENT's product count and evaluation).
    """

    result: PublishResult | None
    reason: str | None = None
    version: int | None = None
    report: dict[str, Any] = field(default_factory=dict)


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


def catalog_rows(manifest_uri: str) -> tuple[list[dict[str, Any]], str]:
    """(manifest rows, sha256 of the manifest's bytes: the catalogue digest), from one read:
    rows and digest always describe the same bytes, even if the manifest moves meanwhile."""
    return read_catalog_rows(manifest_uri)


def featured_pairs(
    store: ObjectStore, rows: list[dict[str, Any]], model_sha: str, spec_hash: str
) -> set[tuple[str, str]]:
    """(product id, asset sha256) of every row whose asset has a feature shard for (model, spec).

    From one listing, without reading a shard: what a build from `rows` would index.
    """
    featured = {i.key for i in store.list(layout.feature_prefix(model_sha, spec_hash))}
    return {
        (str(r["product_id"]), str(r["asset_sha256"]))
        for r in rows
        if r.get("asset_sha256")
        and layout.feature_shard_key(model_sha, spec_hash, str(r["asset_sha256"])) in featured
    }


def current_manifest(store: ObjectStore, name: str) -> dict[str, Any] | None:
    """The manifest of the index's CURRENT version, or None before the first publish."""
    current, _ = read_current(store, name)
    return read_manifest(store, name, int(current["version"])) if current else None


def current_embed_target(store: ObjectStore, name: str) -> tuple[str, str, str] | None:
    """(model name, model sha, spec hash) CURRENT's index was built with, or None without CURRENT.

    An incremental version must embed its new products exactly as its parent did, whatever
    the models' CURRENT says now.
    """
    current = current_manifest(store, name)
    if current is None:
        return None
    return str(current["model"]), str(current["model_sha"]), str(current["spec_hash"])


def _not_indexed(row: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    """The quarantine record of a catalogue product the index could not hold."""
    sha = str(row.get("asset_sha256") or "") or None
    return QuarantineRecord("index", reason, message, str(row.get("product_id")), asset_sha256=sha).to_dict()


def write_not_indexed(store: ObjectStore, name: str, records: list[dict[str, Any]]) -> None:
    """Replace the index's quarantine records with this publish's (glassfinder.quarantine reads them)."""
    store.put(layout.index_quarantine_key(name), records_json(QuarantineRecord.from_dict(r) for r in records))


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
        except RetryableError:
            raise  # an outage fails the task, to be retried; it is not the product's fault
        except GlassFinderError as exc:  # no shard, or one that cannot be read
            missing.append(_not_indexed(row, type(exc).__name__, str(exc)))
            continue
        if table.num_rows == 0:
            missing.append(_not_indexed(row, "empty", f"{key} has no rows"))
            continue
        pid = str(row["product_id"])
        if set(table.column("product_id").to_pylist()) != {pid}:
            # The shard is keyed by asset: a product reusing another's asset gets its own rows.
            table = table.set_column(1, "product_id", pa.array([pid] * table.num_rows, pa.string()))
        vectors.append(embeddings_of(table))
        metas.append(table.select(["view_key", "product_id", "asset_sha256"]))
    if not vectors:
        raise IndexBuildError(
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


def evaluation_queries(store: ObjectStore, query_spec: str, embedder: Embedder, *, seed: int = 0) -> QuerySet:
    """The held-out query views of `query_spec`, damaged like photos and embedded."""
    # embed.augment, embed.data pull cv2: kept off the DAG-parse path
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
    ranks = {agg: figures[agg].pop("ranks_by_product") for agg in AGGREGATIONS}  # the kept one only
    return {
        **figures[best],
        "ranks_by_product": ranks[best],
        "aggregation": best,
        "by_aggregation": figures,
        "query_spec": queries.query_spec,
        "damage_seed": queries.damage_seed,
    }


def summary_of(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """An evaluation without its per-product ranks (they serve the gate, not logs or XCom)."""
    if not evaluation:
        return evaluation
    return {k: v for k, v in evaluation.items() if k != "ranks_by_product"}


def _model_sha(store: ObjectStore, model_ref: str) -> str:
    """The sha a model reference names (NAME resolves through its CURRENT)."""
    # embed.registry pulls torch: kept off the DAG-parse path
    from glassfinder.embed.registry import current_sha, parse_model_ref

    name, sha = parse_model_ref(model_ref)
    if sha is None:
        sha, _ = current_sha(store, name)
    if sha is None:
        raise IndexBuildError(f"no model named {name!r} is published in {store.uri}: run `glassfinder train`")
    return sha


def _embedder(store: ObjectStore, model_ref: str, device: str | None) -> Embedder:
    # embed.infer, embed.registry pull torch: kept off the DAG-parse path
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.registry import load_model

    return Embedder(load_model(store, model_ref).model, device=device)


def build_and_publish(
    store: ObjectStore, request: PublishRequest, *, params: IndexParams | None = None, publish: bool = True
) -> tuple[BuiltIndex, dict[str, Any], PublishResult | None, FeatureSet]:
    """A full rebuild from the catalogue's feature shards, evaluated, published through the gate."""
    return _build_full(store, request, catalog_rows(request.manifest_uri), params=params, publish=publish)


def _build_full(
    store: ObjectStore,
    request: PublishRequest,
    catalog: tuple[list[dict[str, Any]], str],
    *,
    params: IndexParams | None,
    publish: bool,
) -> tuple[BuiltIndex, dict[str, Any], PublishResult | None, FeatureSet]:
    """build_and_publish from the catalogue (rows, digest) already read from the request's manifest."""
    rows, digest = catalog
    name, (model_ref, spec_hash), query_spec = request.name, request.target(), request.query_spec
    model_sha = _model_sha(store, model_ref)
    features = collect_features(store, rows, model_sha, spec_hash)
    for m in features.missing:
        log.warning("not indexed: %s (%s)", m["product_id"], m["message"])
    built = build_index(features.vectors, id_table(features.meta), params)
    evaluation = None
    if query_spec:
        embedder = _embedder(store, f"{model_ref.partition('@')[0]}@{model_sha}", request.device)
        evaluation = evaluate_built(built, evaluation_queries(store, query_spec, embedder))
    info = {
        "model": model_ref.partition("@")[0],
        "model_sha": model_sha,
        "spec_hash": spec_hash,
        "catalog_manifest": request.manifest_uri,
        "catalog_digest": digest,
        "aggregation": evaluation["aggregation"] if evaluation else "max",
        "kind": "full",
        "not_indexed": len(features.missing),
        "content_digest": content_digest(pairs_of(features.meta), model_sha, spec_hash),
    }
    result = None
    if publish:
        write_not_indexed(store, name, features.missing)
        result = publish_version(
            store,
            name,
            built,
            info,
            evaluation=evaluation,
            gate=request.gate,
            force_reason=request.force_reason,
        )
    return built, info | {"evaluation": evaluation}, result, features


def publish_if_changed(store: ObjectStore, request: PublishRequest) -> PublishOutcome:
    """A full rebuild published through the gate, unless CURRENT already holds the same content."""
    name, (model_ref, spec_hash) = request.name, request.target()
    catalog = catalog_rows(request.manifest_uri)
    model_sha = _model_sha(store, model_ref)
    expected = content_digest(featured_pairs(store, catalog[0], model_sha, spec_hash), model_sha, spec_hash)
    current = current_manifest(store, name)
    if current is not None and current.get("content_digest") == expected:
        log.info(
            "index %s: CURRENT v%d already holds these %d products (same assets, model, spec): "
            "nothing to publish",
            name,
            current["version"],
            current["counts"]["products"],
        )
        return PublishOutcome(
            None,
            "unchanged",
            current["version"],
            {"products": current["counts"]["products"], "evaluation": summary_of(current.get("evaluation"))},
        )
    _, _, result, features = _build_full(store, request, catalog, params=None, publish=True)
    assert result is not None  # publish=True
    return PublishOutcome(result, report={"not_indexed": features.missing})


def load_current(store: ObjectStore, name: str) -> tuple[int, dict[str, Any], BuiltIndex]:
    """(version, manifest, index) of CURRENT, every file verified."""
    current, _, manifest, files = fetch_current_verified(store, name)
    version = int(current["version"])
    index, ids, vectors = load_files(files)
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
    catalog = catalog_rows(manifest_uri) if manifest_uri else None
    return _derive_child(
        store,
        name,
        (version, parent, built),
        catalog,
        remove_products=remove_products,
        only_products=only_products,
        query_spec=query_spec,
        gate=gate,
        force_reason=force_reason,
        device=device,
    )


def _derive_child(
    store: ObjectStore,
    name: str,
    loaded: tuple[int, dict[str, Any], BuiltIndex],
    catalog: tuple[list[dict[str, Any]], str] | None,
    *,
    remove_products: list[str] | None,
    only_products: list[str] | None,
    query_spec: str | None,
    gate: GateConfig | None,
    force_reason: str | None,
    device: str | None,
) -> tuple[PublishResult, dict[str, int]]:
    """update_and_publish from CURRENT as loaded and the catalogue (rows, digest) as read, if any."""
    version, parent, built = loaded
    model_sha, spec_hash = parent["model_sha"], parent["spec_hash"]
    rows, digest = catalog if catalog is not None else ([], parent["catalog_digest"])
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
        raise IndexRequestError(f"cannot remove products not in index {name} v{version}: {unknown[:5]}")
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


def publish_changes(
    store: ObjectStore, request: PublishRequest, *, changed: list[str], removed: list[str]
) -> PublishOutcome:
    """Publish a child of CURRENT with the changed products added and the removed ones gone.

    The request's model_ref and spec_hash: what the changed products were embedded with
    (NAME@SHA); it must be what CURRENT was built with. A changed product without a feature
    shard is not indexed, and loses any vectors CURRENT had for it. Without a CURRENT version
    there is nothing to derive from: a full build is published instead (evaluated on the
    request's `query_spec`; a child keeps its parent's evaluation queries).
    """
    name = request.name
    current = current_manifest(store, name)
    if current is None:
        return _publish_first_version(store, request, anything_changed=bool(changed or removed))
    model_sha, current_spec = _check_planned_target(name, current, request.model_ref, request.spec_hash)
    catalog = catalog_rows(request.manifest_uri)
    wanted = set(changed)
    featured = {
        pid
        for pid, _ in featured_pairs(
            store, [r for r in catalog[0] if r["product_id"] in wanted], model_sha, current_spec
        )
    }
    not_indexed = _quarantine_unfeatured(store, name, sorted(wanted - featured))
    gone = _products_to_remove(store, name, int(current["version"]), removed, not_indexed)
    if not featured and not gone:
        log.info("index %s: no product to add or remove: nothing to publish", name)
        return PublishOutcome(None, "no changes", current["version"], {"not_indexed": not_indexed})
    result, counts = _derive_child(
        store,
        name,
        load_current(store, name),
        catalog,
        only_products=sorted(featured),
        remove_products=gone,
        query_spec=None,
        gate=request.gate,
        force_reason=request.force_reason,
        device=request.device,
    )
    return PublishOutcome(
        result,
        report={"added": sorted(featured), "removed": gone, "changes": counts, "not_indexed": not_indexed},
    )


def _publish_first_version(
    store: ObjectStore, request: PublishRequest, *, anything_changed: bool
) -> PublishOutcome:
    """publish_changes without a CURRENT version: a full build, as there is no parent to derive from."""
    if not anything_changed:
        # Nothing changed and nothing to derive from (say the export watcher fired while the
        # first re-index is still embedding): the re-index publishes the first version.
        log.info("index %s has no CURRENT version and nothing changed: nothing to publish", request.name)
        return PublishOutcome(None, "no changes", None)
    log.info("index %s has no CURRENT version: publishing a full build instead of a child", request.name)
    if request.model_ref is None or request.spec_hash is None:
        raise IndexRequestError(f"index {request.name} has no CURRENT version and no model to build one with")
    return publish_if_changed(store, request)


def _check_planned_target(
    name: str, current: dict[str, Any], model_ref: str | None, spec_hash: str | None
) -> tuple[str, str]:
    """(model sha, spec hash) of CURRENT, which must be what the run embedded the changes with:
    a child keeps its parent's model and spec, so CURRENT moving during the run fails it."""
    model_sha, current_spec = str(current["model_sha"]), str(current["spec_hash"])
    planned = {"model": model_ref, "spec_hash": spec_hash} if model_ref is not None else None
    if planned != {"model": f"{current['model']}@{model_sha}", "spec_hash": current_spec}:
        # Not retryable: a retry of this task reuses the same plan; a fresh run plans anew.
        raise FaultError(
            f"onboarding planned for {planned} but index {name} CURRENT v{current['version']} "
            f"uses {current['model']}@{model_sha} spec {current_spec}: "
            "CURRENT moved during the run; run again"
        )
    return model_sha, current_spec


def _quarantine_unfeatured(store: ObjectStore, name: str, not_indexed: list[str]) -> list[str]:
    """Log and record the changed products that have no feature shard; returns them."""
    for pid in not_indexed:
        log.warning("not indexed: %s has no feature shard (quarantined earlier in this run?)", pid)
    if not_indexed:
        message = "no feature shard for the product's asset (quarantined earlier in this run?)"
        records = [_not_indexed({"product_id": p}, "no_features", message) for p in not_indexed]
        write_not_indexed(store, name, records)
    return not_indexed


def _products_to_remove(
    store: ObjectStore, name: str, version: int, removed: list[str], not_indexed: list[str]
) -> list[str]:
    """The products to take out of CURRENT: the removed ones it holds, then the changed ones it
    holds that are not indexed now (a changed product whose new renders failed keeps no stale
    vectors either)."""
    indexed = set(read_ids(store, name, version).column("product_id").to_pylist())
    gone = sorted(set(removed) & indexed)
    gone += sorted((set(not_indexed) & indexed) - set(gone))
    return gone
