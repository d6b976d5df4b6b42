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

Manifests are untrusted input: asset URIs are read only inside the allowed roots and within a
byte budget (glassfinder.catalog.sources), and a full export never shrinks the catalogue by
accident: one that yields no valid product, or would remove more than `max_shrink_fraction` of
the current catalogue, fails and leaves the catalogue as it was unless the operator allows it
with a reason, which is recorded under `catalog/overrides/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glassfinder import layout, settings
from glassfinder.catalog.columns import CellProblem, check_row, complete
from glassfinder.catalog.loader import DEFAULT_MAX_TRIANGLES, NORMALISER_VERSION, load_asset
from glassfinder.catalog.manifest import NOT_AN_OBJECT, manifest_bytes, read_manifest_rows
from glassfinder.catalog.sources import AssetRoots, max_asset_bytes_from_env, roots_from_env
from glassfinder.errors import (
    AssetError,
    AssetSourceError,
    BadInputError,
    CatalogShrinkError,
    FaultError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleWriteError,
)
from glassfinder.quarantine import QuarantineRecord, short_repr
from glassfinder.store import open_object
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

# The catalogue's keys are layout's; these names stay importable from here.
CATALOG_DIR = layout.CATALOG_DIR
CATALOG_MANIFEST_KEY = layout.CATALOG_MANIFEST_KEY
QUARANTINE_KEY = layout.CATALOG_QUARANTINE_KEY
catalog_asset_key = layout.catalog_asset_key
override_key = layout.catalog_override_key
#: Share of the current catalogue a full export may remove without --allow-shrink.
DEFAULT_MAX_SHRINK_FRACTION = 0.25
MAX_SHRINK_ENV = settings.MAX_SHRINK_ENV


def ingest_cache_key(source_sha256: str, max_triangles: int) -> str:
    """Cached outcome of normalising the source file with this sha256 under these settings
    (and this loader's normaliser version)."""
    return layout.catalog_ingest_cache_key(NORMALISER_VERSION, max_triangles, source_sha256)


def resolve_asset(manifest_store: ObjectStore, manifest_key: str, asset_uri: str) -> tuple[ObjectStore, str]:
    """(store, key) of a catalogue manifest row's asset, relative to the manifest's folder.

    Ingested catalogues only ever name assets this way; an absolute URI (which a shop's raw
    export may hold) is refused here, since only ingestion checks it against the allowed roots.
    """
    if "://" in asset_uri or asset_uri.startswith("/"):
        raise AssetSourceError(
            asset_uri,
            "outside_roots",
            "catalogue manifests name assets relative to their own folder; ingest the export first "
            "(glassfinder catalog ingest), which checks absolute URIs against the allowed roots",
        )
    folder = manifest_key.rsplit("/", 1)[0] + "/" if "/" in manifest_key else ""
    return manifest_store, folder + asset_uri


#: Ingest's records are the one quarantine record (glassfinder.quarantine), stage "ingest".
QuarantinedRow = QuarantineRecord


@dataclass
class IngestReport:
    manifest_uri: str
    rows: int
    accepted: list[dict[str, Any]] = field(default_factory=list)
    #: Rows refused, one record each (reason codes: bad_product_id, duplicate_id, bad_field, ...).
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    #: Cells of accepted rows dropped by their column's rule (reason dropped_field): warnings.
    dropped: list[QuarantineRecord] = field(default_factory=list)
    #: Product ids given by more than one row -> the row that won (the last valid one).
    duplicates: dict[str, int] = field(default_factory=dict)
    #: Product ids that had rows but no valid one: these products are not in this ingest's output.
    refused_products: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Assets whose cached outcome was reused instead of parsing them again.
    reused: int = 0
    #: Whether the catalogue manifest in the destination changed (False: same rows as before).
    manifest_changed: bool = False
    #: How the catalogue's size changed, and the operator's reason when a shrink was allowed.
    shrink: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for q in self.quarantined:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
        return {
            "manifest": self.manifest_uri,
            "rows": self.rows,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "dropped_fields": len(self.dropped),
            "duplicate_ids": len(self.duplicates),
            "refused_products": len(self.refused_products),
            "refused_products_sample": self.refused_products[:20],
            "reused": self.reused,
            "manifest_changed": self.manifest_changed,
            "reasons": reasons,
            "seconds": round(self.seconds, 2),
            **({"shrink": self.shrink} if self.shrink else {}),
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                **self.summary(),
                "quarantine": [q.to_dict() for q in self.quarantined],
                "dropped": [q.to_dict() for q in self.dropped],
            },
            indent=2,
        )


def ingest_manifest(
    manifest_uri: str,
    *,
    dest: ObjectStore | None = None,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    progress: bool = False,
    update_catalog: bool = True,
    asset_roots: Sequence[str] | None = None,
    max_asset_bytes: int | None = None,
    max_shrink_fraction: float | None = None,
    allow_shrink_reason: str | None = None,
) -> IngestReport:
    """Validate every row of the manifest at `manifest_uri`; write normalised assets to `dest`.

    update_catalog: make the accepted rows `dest`'s whole catalogue manifest (a full export);
        False leaves the manifest to the caller (a delta of new products, merged by onboarding).
    asset_roots: store URIs assets may come from besides the export's own folder
        (None: $GLASSFINDER_ASSET_ROOTS).
    max_asset_bytes: largest asset file read (None: $GLASSFINDER_MAX_ASSET_BYTES or 256 MiB).
    max_shrink_fraction: largest share of the current catalogue a full export may remove
        (None: $GLASSFINDER_MAX_CATALOGUE_SHRINK or 0.25).
    allow_shrink_reason: the operator's reason to accept an export that empties the catalogue or
        shrinks it past the limit; recorded under `catalog/overrides/`.
    """
    if max_triangles < 1:
        raise BadInputError(f"max_triangles must be a positive number of triangles, got {max_triangles}")
    shrink_limit = _shrink_fraction(max_shrink_fraction)
    start = time.perf_counter()
    current_rows, start_etag = read_catalog(dest) if dest is not None and update_catalog else ([], None)
    base, key = open_object(manifest_uri)
    roots = AssetRoots.for_manifest(
        base,
        key,
        roots_from_env() if asset_roots is None else asset_roots,
        max_bytes=max_asset_bytes_from_env() if max_asset_bytes is None else max_asset_bytes,
    )
    rows = read_manifest_rows(base, key)
    report = IngestReport(manifest_uri=manifest_uri, rows=len(rows))
    winners = _Winners()
    for i, raw in _with_progress(rows, progress):
        checked = _checked_cells(report, winners, i, raw)
        if checked is None:
            continue
        clean = _with_normalised_asset(report, i, checked, roots, dest, max_triangles)
        if clean is not None:
            winners.add(checked[0], i, clean)
    _quarantine_duplicates(report, winners)
    _settle_products(report, winners)
    if dest is not None and update_catalog:
        _replace_catalog(dest, report, current_rows, start_etag, shrink_limit, allow_shrink_reason)
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Winners:
    """Which row each product id comes from: the last valid row of an id wins."""

    #: product id -> (row, clean row) of its winning row so far
    rows: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: (row, clean row) of the valid rows a later valid row of their id beat
    superseded: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    #: every valid id a row gave -> its first row (the catalogue's order)
    given: dict[str, int] = field(default_factory=dict)

    def add(self, pid: str, row: int, clean: dict[str, Any]) -> None:
        if pid in self.rows:
            self.superseded.append(self.rows[pid])
        self.rows[pid] = (row, clean)


def _with_progress(rows: list[dict[str, Any]], progress: bool) -> Any:
    """enumerate(rows), with a progress bar when asked for."""
    iterator: Any = enumerate(rows)
    if progress:
        from tqdm import tqdm  # tqdm (~50 ms): only for a progress bar, kept off the DAG-parse path

        iterator = tqdm(iterator, total=len(rows), unit="asset", desc="ingesting")
    return iterator


def _checked_cells(
    report: IngestReport, winners: _Winners, i: int, raw: dict[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """(product id, checked values) of a row whose cells pass their columns' rules, else None
    (the row quarantined). Dropped cells are recorded as warnings; the row goes on without them."""
    checked = check_row(raw) if NOT_AN_OBJECT not in raw else None
    if checked is None:
        _quarantine(report, i, None, "bad_row", "row is not an object", got=short_repr(raw[NOT_AN_OBJECT]))
        return None
    pid = checked.values.get("product_id")
    if pid is not None:
        winners.given.setdefault(pid, i)
    for p in checked.dropped:
        report.dropped.append(_cell_record(i, pid, p, "dropped_field", "; field dropped"))
        log.warning("row %d (%s): dropped %s: expected %s, got %s", i, pid, p.column, p.expected,
                    short_repr(p.got))  # fmt: skip
    if checked.refused:
        p = checked.refused[0]
        report.quarantined.append(_cell_record(i, pid, p, p.reason, ""))
        log.warning("quarantined row %d (%s): %s: expected %s, got %s", i, pid, p.column, p.expected,
                    short_repr(p.got))  # fmt: skip
        return None
    assert pid is not None  # required: a row without one was refused above
    return pid, checked.values


def _with_normalised_asset(
    report: IngestReport,
    i: int,
    checked: tuple[str, dict[str, Any]],
    roots: AssetRoots,
    dest: ObjectStore | None,
    max_triangles: int,
) -> dict[str, Any] | None:
    """The row's clean values pointing at its normalised asset, else None (the row quarantined)."""
    pid, values = checked
    asset_uri = values["asset_uri"]
    try:
        data = roots.read(asset_uri)
    except AssetSourceError as exc:
        _quarantine(report, i, pid, exc.reason, str(exc), source=asset_uri)
        return None
    try:
        asset_sha, reused = _normalised_sha(data, asset_uri, dest, max_triangles)
    except AssetError as exc:
        _quarantine(report, i, pid, exc.reason, str(exc), source=asset_uri)
        return None
    finally:
        del data  # one asset in memory at a time
    report.reused += reused
    clean = complete(values)
    clean.update(
        asset_sha256=asset_sha,
        asset_uri=catalog_asset_key(asset_sha).removeprefix(CATALOG_DIR),  # relative to the manifest
    )
    return clean


def _quarantine_duplicates(report: IngestReport, winners: _Winners) -> None:
    """Duplicates: the last valid row of an id wins; its other valid rows are quarantined naming it."""
    for i, clean in winners.superseded:
        pid = str(clean["product_id"])
        won = winners.rows[pid][0]
        report.duplicates[pid] = won
        _quarantine(
            report, i, pid, "duplicate_id",
            f"product_id {pid!r} is also given by row {won}, a later valid row, which wins "
            "(the last valid row of an id is the product)",
        )  # fmt: skip


def _settle_products(report: IngestReport, winners: _Winners) -> None:
    """Fill in the report's accepted rows and refused products, in the catalogue's order."""
    report.quarantined.sort(key=lambda q: q.row if q.row is not None else -1)
    report.accepted = [winners.rows[pid][1] for pid in winners.given if pid in winners.rows]
    report.refused_products = [pid for pid in winners.given if pid not in winners.rows]
    for pid in report.refused_products:
        log.warning("product %s: every row giving it was quarantined; it is not in this ingest", pid)


def _replace_catalog(
    dest: ObjectStore,
    report: IngestReport,
    current_rows: list[dict[str, Any]],
    start_etag: str | None,
    shrink_limit: float,
    allow_shrink_reason: str | None,
) -> None:
    """Make the accepted rows the catalogue, unless that shrinks it too far (CatalogShrinkError)."""
    try:
        report.shrink = check_shrink(
            current_rows, report, max_fraction=shrink_limit, allow_reason=allow_shrink_reason
        )
    except CatalogShrinkError as exc:
        exc.report = report  # the quarantine says why the rows were bad
        raise
    report.manifest_changed = write_catalog_manifest(dest, report.accepted, expected_etag=start_etag)
    if report.manifest_changed and report.shrink and report.shrink.get("allowed_reason"):
        record_override(dest, report.shrink)


def _quarantine(
    report: IngestReport,
    row: int,
    pid: str | None,
    reason: str,
    message: str,
    *,
    got: str | None = None,
    source: str | None = None,
) -> None:
    report.quarantined.append(QuarantineRecord("ingest", reason, message, pid, row, got=got, source=source))
    log.warning("quarantined row %d (%s): %s: %s", row, pid, reason, message)


def _cell_record(row: int, pid: str | None, p: CellProblem, reason: str, suffix: str) -> QuarantineRecord:
    got = short_repr(p.got)
    message = f"{p.column} must be {p.expected}, got {got}{suffix}"
    return QuarantineRecord("ingest", reason, message, pid, row, p.column, p.expected, got)


def _shrink_fraction(value: float | None) -> float:
    """The shrink limit (0..1): `value`, else $GLASSFINDER_MAX_CATALOGUE_SHRINK, else the default."""
    if value is None:
        raw = settings.env(MAX_SHRINK_ENV).strip()
        try:
            value = float(raw) if raw else DEFAULT_MAX_SHRINK_FRACTION
        except ValueError:
            raise BadInputError(f"{MAX_SHRINK_ENV} must be a fraction between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise BadInputError(f"max_shrink_fraction must be between 0 and 1, got {value}")
    return value


def check_shrink(
    current: list[dict[str, Any]],
    report: IngestReport,
    *,
    max_fraction: float,
    allow_reason: str | None,
) -> dict[str, Any]:
    """How the catalogue would change; CatalogShrinkError if it would empty or shrink too much.

    A careless export (zero-byte file, header-only CSV, every row bad) would otherwise replace
    the catalogue with nothing and the next nightly would publish an empty index. The operator
    can still mean it: `allow_reason` accepts the change and is recorded with it.
    """
    before = {str(r["product_id"]) for r in current}
    after = {str(r["product_id"]) for r in report.accepted}
    removed = sorted(before - after)
    change: dict[str, Any] = {
        "before": len(before),
        "after": len(after),
        "removed": len(removed),
        "removed_sample": removed[:20],
        "max_fraction": max_fraction,
    }
    if not after:
        why = (
            f"manifest {report.manifest_uri} yielded no valid product ({report.rows} rows, "
            f"{len(report.quarantined)} quarantined: {report.summary()['reasons'] or 'none'})"
        )
    elif before and len(removed) > max_fraction * len(before):
        why = (
            f"manifest {report.manifest_uri} would remove {len(removed)} of the catalogue's {len(before)} "
            f"products ({len(removed) / len(before):.0%}, more than the allowed {max_fraction:.0%}; "
            f"e.g. {', '.join(removed[:5])})"
        )
    else:
        return change
    if not allow_reason:
        or_raise = ", or raise {option:max_shrink}" if after else ""
        raise CatalogShrinkError(
            f"{why}; the catalogue was left as it was ({len(before)} products). If this is meant, use "
            "{option:allow_shrink}" + or_raise
        )
    log.warning("catalogue shrink allowed: %s (reason: %s)", why, allow_reason)
    return {**change, "allowed_reason": allow_reason, "why": why}


def record_override(dest: ObjectStore, shrink: dict[str, Any]) -> str:
    """Write the allowed shrink (who-knows-why becomes a file an auditor can read); its key."""
    now = time.time()
    key = override_key(now)
    body = {**shrink, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    dest.put(key, json.dumps(body, indent=2, sort_keys=True).encode())
    return key


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


def read_catalog(dest: ObjectStore) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, etag) of the catalogue manifest in `dest`; ([], None) before the first ingest."""
    etag = catalog_etag(dest)
    return (read_manifest_rows(dest, CATALOG_MANIFEST_KEY) if etag else []), etag


def catalog_assets(store: ObjectStore, limit: int = 64) -> list[tuple[str, bytes]]:
    """(sha256, normalised GLB) of up to `limit` products of the store's catalogue, spread over it:
    frames to put on faces when rendering training data for the face models."""
    rows, _ = read_catalog(store)
    if not rows:
        raise FaultError(f"{store.uri}/{CATALOG_MANIFEST_KEY} lists no products: ingest a catalogue first")
    picked = rows[:: max(1, len(rows) // limit)][:limit]
    return [(r["asset_sha256"], store.get(catalog_asset_key(r["asset_sha256"]))) for r in picked]


def catalog_etag(dest: ObjectStore) -> str | None:
    try:
        return dest.head(CATALOG_MANIFEST_KEY).etag
    except ObjectNotFoundError:
        return None


def write_catalog_manifest(
    dest: ObjectStore, rows: list[dict[str, Any]], *, expected_etag: str | None
) -> bool:
    """Replace the catalogue manifest with `rows` unless it already holds them; True if it changed.

    expected_etag: the manifest's etag when the caller read it (None: it did not exist). The
    write is a compare-and-swap on it, so a writer that lost a race gets StaleWriteError
    instead of silently dropping the products another writer added meanwhile.
    """
    where = f"catalogue manifest {dest.uri}/{CATALOG_MANIFEST_KEY}"
    data = manifest_bytes(rows)
    current = catalog_etag(dest)
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
