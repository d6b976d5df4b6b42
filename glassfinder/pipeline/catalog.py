"""The catalogue stage: bring the shop's products into `catalog/manifest.parquet` and say what changed.

Two ways in. `sync_catalog` ingests the shop's full export (the nightly): products missing
from it leave the catalogue. `onboard_products` merges new or changed products given directly
(inline rows or a manifest delta) into the catalogue, leaving the rest as it is. Both quarantine
bad rows with their reason and report which products changed in a way that changes pixels
(new product, other asset, other lens), which the later stages then render, embed and index.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from glassfinder import layout
from glassfinder.catalog.ingest import (
    CATALOG_MANIFEST_KEY,
    QUARANTINE_KEY,
    IngestReport,
    ingest_manifest,
    read_catalog,
    write_catalog_manifest,
)
from glassfinder.catalog.snapshot import pin_rows
from glassfinder.catalog.sources import roots_from_env
from glassfinder.errors import ParamError
from glassfinder.pipeline.config import PipelineConfig
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

#: Where onboarding keeps the inline rows it was given, as a manifest named by its content.
DELTA_PREFIX = layout.CATALOG_DELTA_PREFIX


def _pixels_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What in a manifest row decides its renders (float32, as the manifest stores lens colours)."""
    rgba = tuple(np.asarray(row.get("lens_rgba") or [], dtype=np.float32).tolist())
    return (row.get("asset_sha256"), row.get("lens_policy"), row.get("lens_style"), rgba)


def diff_rows(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(product ids new or with other pixels in `after`, product ids gone from `after`)."""
    old = {str(r["product_id"]): _pixels_key(r) for r in before}
    new_ids = {str(r["product_id"]) for r in after}
    changed = [str(r["product_id"]) for r in after if old.get(str(r["product_id"])) != _pixels_key(r)]
    removed = [pid for pid in old if pid not in new_ids]
    return changed, removed


def _result(
    store: ObjectStore,
    report: IngestReport | None,
    rows: list[dict[str, Any]],
    changed: list[str],
    removed: list[str],
) -> dict[str, Any]:
    """The stage's result; `snapshot` pins the rows just written for the rest of the run."""
    return {
        "manifest": f"{store.uri}/{CATALOG_MANIFEST_KEY}",
        "snapshot": pin_rows(store, rows).to_json(),
        "products": len(rows),
        "changed": changed,
        "removed": removed,
        "ingest": report.summary() if report else None,
        "quarantined": [asdict(q) for q in report.quarantined] if report else [],
    }


def sync_catalog(cfg: PipelineConfig) -> dict[str, Any]:
    """Ingest the full source manifest as the catalogue; report what changed since the last sync."""
    store = open_store(cfg.store)
    before, _ = read_catalog(store)
    report = ingest_manifest(cfg.source_manifest, dest=store)
    store.put(QUARANTINE_KEY, report.to_json().encode())
    changed, removed = diff_rows(before, report.accepted)
    s = report.summary()
    log.info(
        "catalogue synced from %s: %d products (%d changed, %d removed), %d rows quarantined, "
        "%d assets reused from the ingest cache",
        cfg.source_manifest,
        len(report.accepted),
        len(changed),
        len(removed),
        s["quarantined"],
        s["reused"],
    )
    for q in report.quarantined:
        log.warning("quarantined row %d (%s): %s: %s", q.row, q.product_id, q.reason, q.message)
    return _result(store, report, report.accepted, changed, removed)


def _delta_uri(store: ObjectStore, products: list[dict[str, Any]]) -> str:
    """Inline product rows written as a JSON manifest; relative asset URIs resolve against the store."""
    rows = []
    for i, row in enumerate(products):
        if not isinstance(row, dict):
            raise ParamError(f"products[{i}] must be an object with product_id and asset_uri, got {row!r}")
        asset = str(row.get("asset_uri") or "")
        if asset and "://" not in asset and not asset.startswith("/"):
            asset = f"{store.uri}/{asset}"
        rows.append({**row, "asset_uri": asset})
    data = json.dumps(rows, sort_keys=True).encode()
    key = layout.catalog_delta_key(data)
    store.put(key, data)
    return f"{store.uri}/{key}"


def onboard_products(
    cfg: PipelineConfig,
    *,
    products: list[dict[str, Any]] | None = None,
    manifest_delta: str | None = None,
    remove_products: list[str] | None = None,
) -> dict[str, Any]:
    """Merge new or changed products (and removals) into the catalogue, by compare-and-swap.

    With nothing given, the catalogue catches up with the source manifest instead (the run an
    Asset event starts when the shop's export changes).
    """
    if not products and not manifest_delta and not remove_products:
        return sync_catalog(cfg)
    store = open_store(cfg.store)
    before, etag = read_catalog(store)
    report = None
    merged = {str(r["product_id"]): r for r in before}
    if products or manifest_delta:
        uri = manifest_delta or _delta_uri(store, products or [])
        # Rows given inline name assets in the pipeline's own store (relative keys are made
        # store URIs): the store is their root, besides the operator's.
        roots = None if manifest_delta else [store.uri, *roots_from_env()]
        report = ingest_manifest(uri, dest=store, update_catalog=False, asset_roots=roots)
        for row in report.accepted:
            merged[str(row["product_id"])] = row
        for q in report.quarantined:
            log.warning("quarantined row %d (%s): %s: %s", q.row, q.product_id, q.reason, q.message)
    unknown = sorted(set(remove_products or []) - set(merged))
    if unknown:
        log.warning("asked to remove products not in the catalogue: %s", unknown[:10])
    for pid in remove_products or []:
        merged.pop(pid, None)
    rows = list(merged.values())
    write_catalog_manifest(store, rows, expected_etag=etag)
    changed, removed = diff_rows(before, rows)
    log.info(
        "onboarding: %d products changed, %d removed, %d quarantined; catalogue now %d products",
        len(changed),
        len(removed),
        len(report.quarantined) if report else 0,
        len(rows),
    )
    return _result(store, report, rows, changed, removed)
