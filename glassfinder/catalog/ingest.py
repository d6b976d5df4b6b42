"""Ingest a shop's manifest: load, validate and normalise every asset; quarantine bad rows.

A bad row (duplicate id, missing or unreadable asset, checksum mismatch, unfixable geometry)
goes to the quarantine report with its reason; every other row goes on. With a destination
store, normalised assets are written content-addressed (`catalog/assets/<sha256>.glb`) with a
clean catalogue manifest beside them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from glassfinder.catalog.loader import DEFAULT_MAX_TRIANGLES, AssetError, load_asset
from glassfinder.catalog.manifest import (
    KINDS,
    LENS_POLICIES,
    MANIFEST_SCHEMA,
    read_manifest_rows,
    write_manifest,
)
from glassfinder.errors import GlassFinderError, ObjectNotFoundError, StoreError
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

CATALOG_DIR = "catalog/"
CATALOG_MANIFEST_KEY = f"{CATALOG_DIR}manifest.parquet"
QUARANTINE_KEY = "catalog/quarantine.json"


def catalog_asset_key(sha256: str) -> str:
    """Store key of a normalised asset; manifests name it relative to their own folder."""
    return f"{CATALOG_DIR}assets/{sha256}.glb"


def resolve_asset(manifest_store: ObjectStore, manifest_key: str, asset_uri: str) -> tuple[ObjectStore, str]:
    """(store, key) of a manifest row's asset: absolute URIs as they are, relative ones against
    the manifest's folder (the one rule every manifest reader follows)."""
    if "://" in asset_uri or asset_uri.startswith("/"):
        return split_uri(asset_uri)
    folder = manifest_key.rsplit("/", 1)[0] + "/" if "/" in manifest_key else ""
    return manifest_store, folder + asset_uri


@dataclass(frozen=True)
class QuarantinedRow:
    row: int  # 0-based row number in the input manifest
    product_id: str | None
    asset_uri: str | None
    reason: str  # short code: duplicate_id, missing_asset, unparseable, bad_scale, ...
    message: str


@dataclass
class IngestReport:
    manifest_uri: str
    rows: int
    accepted: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for q in self.quarantined:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
        return {
            "manifest": self.manifest_uri,
            "rows": self.rows,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "reasons": reasons,
            "seconds": round(self.seconds, 2),
        }

    def to_json(self) -> str:
        return json.dumps({**self.summary(), "quarantine": [asdict(q) for q in self.quarantined]}, indent=2)


def split_uri(uri: str) -> tuple[ObjectStore, str]:
    """(store, key) for an object URI such as s3://bucket/dir/file.csv or /path/file.csv."""
    head, sep, key = uri.rstrip("/").rpartition("/")
    if not sep or not key:
        return open_store("."), uri
    if head in ("s3:/", "s3:"):
        raise GlassFinderError(f"object URI {uri!r} names a bucket, expected s3://bucket/key")
    return open_store(head or "/"), key


def ingest_manifest(
    manifest_uri: str,
    *,
    dest: ObjectStore | None = None,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    progress: bool = False,
) -> IngestReport:
    """Validate every row of the manifest at `manifest_uri`; write normalised assets to `dest`."""
    start = time.perf_counter()
    base, key = split_uri(manifest_uri)
    rows = read_manifest_rows(base, key)
    report = IngestReport(manifest_uri=manifest_uri, rows=len(rows))
    seen: dict[str, int] = {}
    iterator: Any = enumerate(rows)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(rows), unit="asset", desc="ingesting")
    for i, row in iterator:
        pid = (str(row.get("product_id") or "")).strip() or None
        asset_uri = (str(row.get("asset_uri") or "")).strip() or None

        def quarantine(
            reason: str, message: str, pid: str | None = pid, asset_uri: str | None = asset_uri, i: int = i
        ) -> None:
            report.quarantined.append(QuarantinedRow(i, pid, asset_uri, reason, message))
            log.warning("quarantined row %d (%s): %s", i, pid, message)

        if pid is None:
            quarantine("missing_product_id", "row has no product_id")
            continue
        if pid in seen:
            quarantine("duplicate_id", f"product_id {pid!r} already used by row {seen[pid]}")
            continue
        seen[pid] = i
        if asset_uri is None:
            quarantine("missing_asset", "row has no asset_uri")
            continue
        kind = str(row.get("kind") or "optical")
        if kind not in KINDS:
            quarantine("bad_field", f"kind must be one of {KINDS}, got {kind!r}")
            continue
        try:
            store, asset_key = resolve_asset(base, key, asset_uri)
            data = store.get(asset_key)
        except ObjectNotFoundError:
            quarantine("missing_asset", f"asset {asset_uri!r} not found")
            continue
        except StoreError as exc:
            quarantine("unreadable_asset", f"asset {asset_uri!r} cannot be read: {exc}")
            continue
        try:
            asset = load_asset(data, asset_uri, max_triangles=max_triangles)
        except AssetError as exc:
            quarantine(exc.reason, str(exc))
            continue
        clean = {f.name: row.get(f.name) for f in MANIFEST_SCHEMA}
        policy = str(row.get("lens_policy") or ("fixed" if kind == "sunglasses" else "palette"))
        if policy not in LENS_POLICIES:
            quarantine("bad_field", f"lens_policy must be one of {LENS_POLICIES}, got {policy!r}")
            continue
        clean.update(
            product_id=pid,
            kind=kind,
            lens_policy=policy,
            asset_sha256=asset.sha256,
            asset_uri=catalog_asset_key(asset.sha256).removeprefix(CATALOG_DIR),  # relative to the manifest
            lens_style=str(row.get("lens_style") or ("tinted" if kind == "sunglasses" else "clear")),
            lens_rgba=_rgba(row.get("lens_rgba"), kind),
            display_name=str(row.get("display_name") or pid),
        )
        for name in ("lens_width_mm", "lens_height_mm", "bridge_mm", "temple_mm"):
            clean[name] = float(clean[name]) if clean.get(name) not in (None, "") else None
        if dest is not None:
            dest.put(catalog_asset_key(asset.sha256), asset.glb)
        report.accepted.append(clean)
    if dest is not None:
        write_manifest(dest, CATALOG_MANIFEST_KEY, report.accepted)
    report.seconds = time.perf_counter() - start
    return report


def _rgba(value: Any, kind: str) -> list[float]:
    if isinstance(value, str) and value.strip():
        value = json.loads(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return [0.04, 0.04, 0.045, 0.85] if kind == "sunglasses" else [0.9, 0.95, 1.0, 0.08]
    return [float(v) for v in value]
