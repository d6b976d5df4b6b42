"""Ingest a shop's manifest: load, validate and normalise every asset; quarantine bad rows.

A bad row (duplicate id, missing or unreadable asset, checksum mismatch, unfixable geometry)
goes to the quarantine report with its reason; every other row goes on. With a destination
store, normalised assets are written content-addressed (`catalog/assets/<sha256>.glb`) with a
clean catalogue manifest beside them.

Normalising an asset costs far more than hashing it, and a nightly run sees the same thousands
of files again: with a destination store, the outcome for each source file (its normalised
sha256, or why it was refused) is cached under `catalog/ingested/` by the sha256 of the source
bytes, so only new or changed files are parsed. The catalogue manifest is rewritten only when
its content changes, by compare-and-swap, so a concurrent onboarding is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from glassfinder.catalog.loader import DEFAULT_MAX_TRIANGLES, NORMALISER_VERSION, AssetError, load_asset
from glassfinder.catalog.manifest import (
    KINDS,
    LENS_POLICIES,
    MANIFEST_SCHEMA,
    manifest_bytes,
    read_manifest_rows,
)
from glassfinder.errors import (
    GlassFinderError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleWriteError,
    StoreError,
)
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

CATALOG_DIR = "catalog/"
CATALOG_MANIFEST_KEY = f"{CATALOG_DIR}manifest.parquet"
QUARANTINE_KEY = "catalog/quarantine.json"


def catalog_asset_key(sha256: str) -> str:
    """Store key of a normalised asset; manifests name it relative to their own folder."""
    return f"{CATALOG_DIR}assets/{sha256}.glb"


def ingest_cache_key(source_sha256: str, max_triangles: int) -> str:
    """Cached outcome of normalising the source file with this sha256 under these settings."""
    return f"{CATALOG_DIR}ingested/n{NORMALISER_VERSION}-t{max_triangles}/{source_sha256}.json"


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
    #: Assets whose cached outcome was reused instead of parsing them again.
    reused: int = 0
    #: Whether the catalogue manifest in the destination changed (False: same rows as before).
    manifest_changed: bool = False

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for q in self.quarantined:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
        return {
            "manifest": self.manifest_uri,
            "rows": self.rows,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "reused": self.reused,
            "manifest_changed": self.manifest_changed,
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
    update_catalogue: bool = True,
) -> IngestReport:
    """Validate every row of the manifest at `manifest_uri`; write normalised assets to `dest`.

    update_catalogue: make the accepted rows `dest`'s whole catalogue manifest (a full export);
    False leaves the manifest to the caller (a delta of new products, merged by onboarding).
    """
    start = time.perf_counter()
    start_etag = catalogue_etag(dest) if dest is not None else None
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
            asset_sha, reused = _normalised_sha(data, asset_uri, dest, max_triangles)
        except AssetError as exc:
            quarantine(exc.reason, str(exc))
            continue
        report.reused += reused
        clean = {f.name: row.get(f.name) for f in MANIFEST_SCHEMA}
        policy = str(row.get("lens_policy") or ("fixed" if kind == "sunglasses" else "palette"))
        if policy not in LENS_POLICIES:
            quarantine("bad_field", f"lens_policy must be one of {LENS_POLICIES}, got {policy!r}")
            continue
        clean.update(
            product_id=pid,
            kind=kind,
            lens_policy=policy,
            asset_sha256=asset_sha,
            asset_uri=catalog_asset_key(asset_sha).removeprefix(CATALOG_DIR),  # relative to the manifest
            lens_style=str(row.get("lens_style") or ("tinted" if kind == "sunglasses" else "clear")),
            lens_rgba=_rgba(row.get("lens_rgba"), kind),
            display_name=str(row.get("display_name") or pid),
        )
        for name in ("lens_width_mm", "lens_height_mm", "bridge_mm", "temple_mm"):
            clean[name] = float(clean[name]) if clean.get(name) not in (None, "") else None
        report.accepted.append(clean)
    if dest is not None and update_catalogue:
        report.manifest_changed = write_catalogue_manifest(dest, report.accepted, expected_etag=start_etag)
    report.seconds = time.perf_counter() - start
    return report


def _normalised_sha(data: bytes, name: str, dest: ObjectStore | None, max_triangles: int) -> tuple[str, int]:
    """(sha256 of the normalised asset, 1 if a cached outcome was reused else 0).

    Raises AssetError (cached too: the same bytes fail the same way) for an unusable asset.
    Without a destination nothing is cached or written: validation only.
    """
    if dest is None:
        return load_asset(data, name, max_triangles=max_triangles).sha256, 0
    cache_key = ingest_cache_key(hashlib.sha256(data).hexdigest(), max_triangles)
    try:
        cached = json.loads(dest.get(cache_key))
    except (ObjectNotFoundError, json.JSONDecodeError):
        cached = None
    if cached is not None:
        if "error" in cached:
            raise AssetError(name, cached["error"]["reason"], cached["error"]["message"])
        if dest.exists(catalog_asset_key(cached["sha256"])):
            return str(cached["sha256"]), 1
    try:
        asset = load_asset(data, name, max_triangles=max_triangles)
    except AssetError as exc:
        message = str(exc).removeprefix(f"asset {name}: ")
        dest.put(cache_key, json.dumps({"error": {"reason": exc.reason, "message": message}}).encode())
        raise
    dest.put(catalog_asset_key(asset.sha256), asset.glb)
    dest.put(
        cache_key,
        json.dumps({"sha256": asset.sha256, "unit": asset.unit, "triangles": asset.triangles}).encode(),
    )
    return asset.sha256, 0


def read_catalogue(dest: ObjectStore) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, etag) of the catalogue manifest in `dest`; ([], None) before the first ingest."""
    etag = catalogue_etag(dest)
    return (read_manifest_rows(dest, CATALOG_MANIFEST_KEY) if etag else []), etag


def catalogue_etag(dest: ObjectStore) -> str | None:
    try:
        return dest.head(CATALOG_MANIFEST_KEY).etag
    except ObjectNotFoundError:
        return None


def write_catalogue_manifest(
    dest: ObjectStore, rows: list[dict[str, Any]], *, expected_etag: str | None
) -> bool:
    """Replace the catalogue manifest with `rows` unless it already holds them; True if it changed.

    expected_etag: the manifest's etag when the caller read it (None: it did not exist). The
    write is a compare-and-swap on it, so a writer that lost a race gets StaleWriteError
    instead of silently dropping the products another writer added meanwhile.
    """
    where = f"catalogue manifest {dest.uri}/{CATALOG_MANIFEST_KEY}"
    data = manifest_bytes(rows)
    current = catalogue_etag(dest)
    if current != expected_etag:
        raise StaleWriteError(
            f"{where} changed while it was being updated (etag {current}, read {expected_etag})"
        )
    if current is not None and dest.get(CATALOG_MANIFEST_KEY) == data:
        return False
    try:
        if expected_etag is None:
            dest.put(CATALOG_MANIFEST_KEY, data, create_only=True)
        else:
            dest.put(CATALOG_MANIFEST_KEY, data, if_match=expected_etag)
    except (ObjectExistsError, StaleWriteError) as exc:
        raise StaleWriteError(f"{where} was changed by another writer meanwhile: run again") from exc
    return True


def _rgba(value: Any, kind: str) -> list[float]:
    if isinstance(value, str) and value.strip():
        value = json.loads(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return [0.04, 0.04, 0.045, 0.85] if kind == "sunglasses" else [0.9, 0.95, 1.0, 0.08]
    return [float(v) for v in value]
