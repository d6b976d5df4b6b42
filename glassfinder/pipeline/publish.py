"""The publishing stage: a full rebuild (nightly) or a child of CURRENT (onboarding), through the gate.

A full run first compares what it would index with what CURRENT indexes (the content digest of
glassfinder.index.pipeline): the same products, assets, model and spec publish nothing, so a
quiet night leaves one version, not a duplicate a night.
"""

from __future__ import annotations

import logging
from typing import Any

from glassfinder import layout
from glassfinder.catalog.ingest import split_uri
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.errors import GlassFinderError
from glassfinder.index.pipeline import build_and_publish, content_digest, update_and_publish
from glassfinder.index.versions import PublishResult, read_current, read_ids, read_manifest
from glassfinder.pipeline.config import PipelineConfig
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)


def current_manifest(store: ObjectStore, name: str) -> dict[str, Any] | None:
    """The manifest of the index's CURRENT version, or None before the first publish."""
    current, _ = read_current(store, name)
    return read_manifest(store, name, int(current["version"])) if current else None


def _featured_pairs(
    store: ObjectStore, rows: list[dict[str, Any]], model_sha: str, spec_hash: str
) -> set[tuple[str, str]]:
    """(product id, asset sha256) of every row whose asset has a feature shard for (model, spec)."""
    featured = {i.key for i in store.list(layout.feature_prefix(model_sha, spec_hash))}
    return {
        (str(r["product_id"]), str(r["asset_sha256"]))
        for r in rows
        if r.get("asset_sha256")
        and layout.feature_shard_key(model_sha, spec_hash, str(r["asset_sha256"])) in featured
    }


def _published(result: PublishResult, extra: dict[str, Any]) -> dict[str, Any]:
    m = result.manifest
    return {
        "published": True,
        "version": result.version,
        "parent": result.parent,
        "kind": m.get("kind"),
        "products": m["counts"]["products"],
        "vectors": m["counts"]["vectors"],
        "factory": m["factory"],
        "evaluation": m.get("evaluation"),
        "gate": result.gate,
        "seconds": round(result.seconds, 2),
        **extra,
    }


def publish_full(cfg: PipelineConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the index from every catalogue product's features and publish it, unless unchanged."""
    store = open_store(cfg.store)
    embed = plan["embed"]
    model_sha = embed["model"].partition("@")[2]
    spec_hash = embed["spec_hash"]
    rows = read_manifest_rows(*split_uri(plan["manifest"]))
    expected = content_digest(_featured_pairs(store, rows, model_sha, spec_hash), model_sha, spec_hash)
    current = current_manifest(store, cfg.index)
    if current is not None and current.get("content_digest") == expected:
        log.info(
            "index %s: CURRENT v%d already holds these %d products (same assets, model, spec): "
            "nothing to publish",
            cfg.index,
            current["version"],
            current["counts"]["products"],
        )
        return {
            "published": False,
            "reason": "unchanged",
            "version": current["version"],
            "products": current["counts"]["products"],
            "evaluation": current.get("evaluation"),
        }
    _, _, result, features = build_and_publish(
        store,
        cfg.index,
        manifest_uri=plan["manifest"],
        model_ref=embed["model"],
        spec_hash=spec_hash,
        query_spec=cfg.query_spec.spec_hash if cfg.query_spec else None,
        gate=cfg.gate,
        force_reason=cfg.force_reason,
        device=cfg.device,
    )
    assert result is not None  # publish=True
    return _published(result, {"not_indexed": features.missing})


def index_embed_target(store: ObjectStore, cfg: PipelineConfig) -> tuple[str, str, str] | None:
    """(model name, model sha, spec hash) CURRENT's index was built with, or None without CURRENT.

    An incremental version must embed its new products exactly as its parent did, whatever
    the models' CURRENT says now.
    """
    current = current_manifest(store, cfg.index)
    if current is None:
        return None
    return str(current["model"]), str(current["model_sha"]), str(current["spec_hash"])


def publish_incremental(cfg: PipelineConfig, plan: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Publish a child of CURRENT with the changed products added and the removed ones gone.

    Without a CURRENT version there is nothing to derive from: a full build is published instead.
    """
    store = open_store(cfg.store)
    current = current_manifest(store, cfg.index)
    if current is None:
        if not changes["changed"] and not changes["removed"]:
            # Nothing changed and nothing to derive from (say the export watcher fired while the
            # first re-index is still embedding): the re-index publishes the first version.
            log.info("index %s has no CURRENT version and nothing changed: nothing to publish", cfg.index)
            return {"published": False, "reason": "no changes", "version": None}
        log.info("index %s has no CURRENT version: publishing a full build instead of a child", cfg.index)
        return publish_full(cfg, plan)
    model_sha, spec_hash = str(current["model_sha"]), str(current["spec_hash"])
    if plan["embed"] != {"model": f"{current['model']}@{model_sha}", "spec_hash": spec_hash}:
        raise GlassFinderError(
            f"onboarding planned for {plan['embed']} but index {cfg.index} CURRENT v{current['version']} "
            f"uses {current['model']}@{model_sha} spec {spec_hash}: CURRENT moved during the run; run again"
        )
    rows = read_manifest_rows(*split_uri(plan["manifest"]))
    changed = set(changes["changed"])
    featured = {
        pid
        for pid, _ in _featured_pairs(
            store, [r for r in rows if r["product_id"] in changed], model_sha, spec_hash
        )
    }
    not_indexed = sorted(changed - featured)
    for pid in not_indexed:
        log.warning("not indexed: %s has no feature shard (quarantined earlier in this run?)", pid)
    indexed = set(read_ids(store, cfg.index, int(current["version"])).column("product_id").to_pylist())
    removed = sorted(set(changes["removed"]) & indexed)
    # A changed product whose new renders failed keeps no stale vectors either.
    removed += sorted((set(not_indexed) & indexed) - set(removed))
    if not featured and not removed:
        log.info("index %s: no product to add or remove: nothing to publish", cfg.index)
        return {
            "published": False,
            "reason": "no changes",
            "version": current["version"],
            "not_indexed": not_indexed,
        }
    result, counts = update_and_publish(
        store,
        cfg.index,
        manifest_uri=plan["manifest"],
        only_products=sorted(featured),
        remove_products=removed,
        gate=cfg.gate,
        force_reason=cfg.force_reason,
        device=cfg.device,
    )
    return _published(
        result, {"added": sorted(featured), "removed": removed, "changes": counts, "not_indexed": not_indexed}
    )
