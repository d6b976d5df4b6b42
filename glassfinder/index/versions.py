"""Versioned index publishing: immutable version folders, a verified manifest, CURRENT by CAS.

Publishing a version:
1. read CURRENT (its version is the parent, its etag the swap condition);
2. apply the quality gate against CURRENT's evaluation (refuse, or record a forced reason);
3. write every file of `indexes/<name>/v<N>/` create-only, the manifest last, so a version with
   a manifest is complete, and a version number two publishers both picked is won by one;
4. read every file back and check its sha256 and size against the manifest;
5. move CURRENT by compare-and-swap on the etag read in step 1.

A crash at any step leaves CURRENT, and every reader of it, where it was. A later publish takes
the next free number; `gc` removes abandoned partial versions along with old ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glassfinder import layout
from glassfinder.errors import (
    CorruptIndexFileError,
    GateRefusedError,
    GlassFinderError,
    IndexCorruptError,
    IndexStoreError,
    ObjectExistsError,
    ObjectNotFoundError,
    PublishConflictError,
    StaleWriteError,
    VersionNotFoundError,
)
from glassfinder.index import signing
from glassfinder.index.build import ID_SCHEMA, BuiltIndex
from glassfinder.index.search import rank_figures
from glassfinder.store.base import ObjectStore
from glassfinder.store.pointer import read_pointer, swap_pointer

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
VECTORS_FILE = "vectors.parquet"
MANIFEST_FILE = "manifest.json"
_VERSION_RE = re.compile(r"^v(\d+)/")


@dataclass(frozen=True)
class GateConfig:
    """Largest drops below CURRENT's figures that still promote (absolute, 0..1)."""

    max_top1_drop: float = 0.01
    max_top10_drop: float = 0.01


@dataclass
class PublishResult:
    name: str
    version: int
    parent: int | None
    manifest: dict[str, Any]
    promoted: bool
    seconds: float = 0.0
    gate: dict[str, Any] = field(default_factory=dict)


# --- (de)serialising ------------------------------------------------------------------------------
def vectors_table(ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)}
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def version_files(built: BuiltIndex) -> dict[str, bytes]:
    """The bytes of every data file of a version (the manifest comes on top)."""
    ids = np.asarray(built.ids.column("id"), dtype=np.int64)
    return {
        INDEX_FILE: faiss.serialize_index(built.index).tobytes(),
        IDS_FILE: _parquet_bytes(built.ids.cast(ID_SCHEMA)),
        VECTORS_FILE: _parquet_bytes(vectors_table(ids, built.vectors)),
    }


def load_files(files: dict[str, bytes], *, where: str = "index version") -> tuple[Any, pa.Table, np.ndarray]:
    """(faiss index, id table, (n, d) vectors aligned with the id table) from a version's files.

    Files whose checksums match but whose bytes FAISS or Parquet cannot read (a truncated file
    whose checksum was re-recorded) raise CorruptIndexFileError naming the file: FAISS raises a
    RuntimeError and pyarrow an OSError or ArrowInvalid, none of which a caller should see.
    """
    fname = INDEX_FILE
    try:
        index = faiss.deserialize_index(np.frombuffer(files[INDEX_FILE], dtype=np.uint8))
        fname = IDS_FILE
        ids = pq.read_table(io.BytesIO(files[IDS_FILE]))
        fname = VECTORS_FILE
        vt = pq.read_table(io.BytesIO(files[VECTORS_FILE]))
        dim = vt.column("embedding").type.list_size
        vectors = np.asarray(vt.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        vectors = vectors.reshape(-1, dim)
        same_ids = np.array_equal(np.asarray(vt.column("id")), np.asarray(ids.column("id")))
    except Exception as exc:  # RuntimeError (FAISS), OSError/ArrowInvalid (Parquet), KeyError, ...
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CorruptIndexFileError(
            f"{where}: {fname} cannot be read ({type(exc).__name__}: {first_line})"
        ) from exc
    if not same_ids:
        raise CorruptIndexFileError(f"{where}: {VECTORS_FILE} and {IDS_FILE} list different ids")
    return index, ids, vectors


# --- reading the index folder ---------------------------------------------------------------------
def index_root(name: str) -> str:
    return layout.index_prefix(name)


def list_versions(store: ObjectStore, name: str) -> dict[int, bool]:
    """Every version number present -> whether it is complete (has its manifest)."""
    root = index_root(name)
    found: dict[int, bool] = {}
    for info in store.list(root):
        m = _VERSION_RE.match(info.key[len(root) :])
        if m:
            n = int(m.group(1))
            found[n] = found.get(n, False) or info.key.endswith("/" + MANIFEST_FILE)
    return dict(sorted(found.items()))


def read_current(store: ObjectStore, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """(CURRENT's body, etag), or (None, None) when nothing was promoted yet."""
    return read_pointer(store, layout.index_current_key(name), corrupt=IndexCorruptError)


def read_manifest(store: ObjectStore, name: str, version: int) -> dict[str, Any]:
    """A version's manifest as stored, unverified (for listings; serving uses fetch_verified)."""
    return _read_manifest_raw(store, name, version)[0]


def _read_manifest_raw(store: ObjectStore, name: str, version: int) -> tuple[dict[str, Any], bytes]:
    key = layout.index_version_prefix(name, version) + MANIFEST_FILE
    try:
        raw = store.get(key)
    except ObjectNotFoundError:
        raise VersionNotFoundError(
            f"index {name} v{version} has no manifest in {store.uri} (never published, or partial)"
        ) from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"{store.uri}/{key} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IndexCorruptError(f"{store.uri}/{key} must be a JSON object with a 'files' table")
    return manifest, raw


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes a manifest is stored as (what CURRENT's sha256 and the HMAC cover)."""
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def current_version(current: dict[str, Any], where: str) -> int:
    """The version CURRENT names, checked: a positive integer (never a path like "../v1")."""
    version = current.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptIndexFileError(f"{where} must name a version as a positive integer, got {version!r}")
    return version


def current_manifest_sha256(current: dict[str, Any], name: str) -> str:
    """The manifest sha256 CURRENT records: a CURRENT without one cannot be verified."""
    sha = current.get("manifest_sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise IndexCorruptError(
            f"index {name} CURRENT must record the manifest's sha256 (manifest_sha256), got {sha!r}"
        )
    return sha


def fetch_verified(
    store: ObjectStore, name: str, version: int, *, manifest_sha256: str | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, files) of a version, every file checked against the manifest's sha256 and size.

    manifest_sha256: what CURRENT records for the manifest; checked first, so an edited
    manifest (which could list the checksums of substituted files) is refused before any of
    its entries is believed. With a signing key in the environment the manifest's HMAC is
    checked too (glassfinder.index.signing).
    """
    manifest, files, _ = _fetch(store, name, version, manifest_sha256)
    return manifest, files


def fetch_current_verified(
    store: ObjectStore, name: str
) -> tuple[dict[str, Any], str | None, dict[str, Any], dict[str, bytes]]:
    """(CURRENT, its etag, manifest, files), verified from the pointer down; IndexStoreError when
    there is no CURRENT yet."""
    current, etag = read_current(store, name)
    if current is None:
        raise IndexStoreError(
            f"index {name} has no CURRENT version in {store.uri}: publish one first "
            "(`glassfinder demo`, or the glassfinder_catalog_reindex DAG)"
        )
    version = current_version(current, f"{store.uri}/{layout.index_current_key(name)}")
    expected_sha = current_manifest_sha256(current, name)
    manifest, files = fetch_verified(store, name, version, manifest_sha256=expected_sha)
    return current, etag, manifest, files


def _fetch(
    store: ObjectStore, name: str, version: int, manifest_sha256: str | None
) -> tuple[dict[str, Any], dict[str, bytes], str]:
    """fetch_verified's work, also returning the sha256 of the manifest's stored bytes."""
    manifest, raw = _read_manifest_raw(store, name, version)
    prefix = layout.index_version_prefix(name, version)
    where = f"index {name} v{version}"
    raw_sha = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None and raw_sha != manifest_sha256:
        raise IndexCorruptError(
            f"{where}: {MANIFEST_FILE} has sha256 {raw_sha[:16]}, CURRENT records {manifest_sha256[:16]}; "
            "refusing an edited manifest"
        )
    if manifest.get("name") != name or manifest.get("version") != version:
        raise IndexCorruptError(
            f"{where}: {MANIFEST_FILE} describes {manifest.get('name')!r} v{manifest.get('version')}, "
            f"expected {name!r} v{version}; refusing a manifest copied from elsewhere"
        )
    key = signing.signing_key()
    if key is not None:
        try:
            signature: bytes | None = store.get(prefix + MANIFEST_FILE + signing.SIGNATURE_SUFFIX)
        except ObjectNotFoundError:
            signature = None
        signing.verify(raw, signature, key, where=f"{where} ({store.uri}/{prefix}{MANIFEST_FILE})")
    files: dict[str, bytes] = {}
    for fname, expected in manifest["files"].items():
        if (
            not isinstance(expected, dict)
            or isinstance(expected.get("size"), bool)
            or not isinstance(expected.get("size"), int)
            or not isinstance(expected.get("sha256"), str)
        ):
            raise CorruptIndexFileError(
                f"{where}: {store.uri}/{prefix}{MANIFEST_FILE} entry {fname!r} must hold an integer "
                f"size and a sha256, got {expected!r}"
            )
        try:
            data = store.get(prefix + fname)
        except ObjectNotFoundError:
            raise IndexCorruptError(f"{where}: {fname} is missing from {store.uri}") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != expected["size"] or digest != expected["sha256"]:
            raise IndexCorruptError(
                f"{where}: {fname} has {len(data)} bytes sha256 {digest[:16]}, manifest "
                f"expects {expected['size']} bytes sha256 {expected['sha256'][:16]}; "
                "refusing a corrupted version"
            )
        files[fname] = data
    return manifest, files, raw_sha


def newest_verified_version(store: ObjectStore, name: str, *, below: int | None = None) -> int | None:
    """The newest complete version (below `below`, if given) whose files verify against its own
    manifest (and its signature, with a signing key) and load; None when none does.

    What a reader falls back to when CURRENT itself is broken: CURRENT's sha256 of the manifest
    cannot be checked then, so the version is announced as a fallback (and `promote` names it).
    """
    for version in sorted((v for v, ok in list_versions(store, name).items() if ok), reverse=True):
        if below is not None and version >= below:
            continue
        try:
            _, files, _ = _fetch(store, name, version, None)
            load_files(files, where=f"index {name} v{version}")
        except GlassFinderError as exc:
            log.warning("index %s: v%d does not verify either: %s", name, version, exc)
            continue
        return version
    return None


def read_ids(store: ObjectStore, name: str, version: int) -> pa.Table:
    """Just the id table of a version (view key, product, asset per vector), checksum verified.

    For questions about what a version holds without fetching its index and vectors.
    """
    manifest = read_manifest(store, name, version)
    key = layout.index_version_prefix(name, version) + IDS_FILE
    try:
        data = store.get(key)
    except ObjectNotFoundError:
        raise IndexCorruptError(f"index {name} v{version}: {IDS_FILE} is missing from {store.uri}") from None
    expected = manifest["files"][IDS_FILE]
    if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise IndexCorruptError(f"index {name} v{version}: {IDS_FILE} does not match its manifest")
    return pq.read_table(io.BytesIO(data))


# --- gate -----------------------------------------------------------------------------------------
def gate_check(
    candidate: dict[str, Any] | None, current: dict[str, Any] | None, gate: GateConfig
) -> tuple[bool, str]:
    """(passes, why) comparing a candidate's evaluation with CURRENT's."""
    if current is None:
        return True, "no CURRENT version to compare with"
    if candidate is None:
        return False, "candidate has no evaluation while CURRENT has one"
    same_queries = {k: candidate.get(k) for k in ("query_spec", "damage_seed")} == {
        k: current.get(k) for k in ("query_spec", "damage_seed")
    }
    if not same_queries:
        cand = f"{candidate.get('query_spec')}/{candidate.get('damage_seed')}"
        cur = f"{current.get('query_spec')}/{current.get('damage_seed')}"
        return (
            False,
            f"evaluation query sets differ (candidate {cand}, CURRENT {cur}): figures are not comparable",
        )
    new, old, scope = _comparable_figures(candidate, current)
    drops = {k: old[k] - new[k] for k in ("top1", "top10")}
    limits = {"top1": gate.max_top1_drop, "top10": gate.max_top10_drop}
    failed = [k for k in drops if drops[k] > limits[k] + 1e-9]
    figures = ", ".join(
        f"{k} {new[k]:.4f} vs CURRENT {old[k]:.4f} (drop {drops[k]:+.4f}, allowed {limits[k]:.4f})"
        for k in drops
    )
    return (not failed), figures + scope


def _figures_of(ranks: dict[str, list[int]], products: set[str]) -> dict[str, Any]:
    return rank_figures([x for p in sorted(products) for x in ranks[p]])


def _comparable_figures(
    candidate: dict[str, Any], current: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(candidate's, CURRENT's figures, a note) on the products both versions were evaluated on.

    A catalogue that grows or shrinks changes the query set: a new product whose own queries miss
    would otherwise refuse its onboarding although no existing product got worse, and a removed
    one could hide a loss. Versions evaluated without per-product ranks compare as a whole."""
    cand_ranks, cur_ranks = candidate.get("ranks_by_product"), current.get("ranks_by_product")
    if not cand_ranks or not cur_ranks:
        return candidate, current, ""
    shared = set(cand_ranks) & set(cur_ranks)
    if not shared:
        return candidate, current, " (no product in common: compared as a whole)"
    new = set(cand_ranks) - shared
    note = f" on the {len(shared)} products both evaluate"
    if new:
        added = _figures_of(cand_ranks, new)
        note += f"; its {len(new)} new products: top1 {added['top1']:.4f}, top10 {added['top10']:.4f}"
    return _figures_of(cand_ranks, shared), _figures_of(cur_ranks, shared), note


def _evaluation_of(store: ObjectStore, name: str, version: int | None) -> dict[str, Any] | None:
    """The recorded evaluation of a version (None for no version): what the gate compares with."""
    return read_manifest(store, name, version).get("evaluation") if version is not None else None


# --- publishing -----------------------------------------------------------------------------------
def publish_version(
    store: ObjectStore,
    name: str,
    built: BuiltIndex,
    info: dict[str, Any],
    *,
    evaluation: dict[str, Any] | None,
    gate: GateConfig | None = None,
    force_reason: str | None = None,
    promote: bool = True,
    parent: int | None = None,
) -> PublishResult:
    """Publish `built` as the next version of `name` and (by default) make it CURRENT.

    info: provenance for the manifest (model_sha, spec_hash, catalog_digest, aggregation, ...).
    parent: the version this one derives from (incremental); default CURRENT's.
    """
    start = time.perf_counter()
    gate = gate or GateConfig()
    current, etag = read_current(store, name)
    current_version = int(current["version"]) if current else None
    current_eval = _evaluation_of(store, name, current_version)
    passed, why = gate_check(evaluation, current_eval, gate)
    gate_record: dict[str, Any] = {"passed": passed, "figures": why, "config": gate.__dict__}
    if promote and not passed:
        if not force_reason:
            raise GateRefusedError(
                f"quality gate refused index {name} (CURRENT v{current_version}): {why}; "
                "pass {option:force} to override"
            )
        gate_record["forced"] = force_reason
        log.warning("quality gate overridden for %s: %s (reason: %s)", name, why, force_reason)
    versions = list_versions(store, name)
    version = max(versions, default=0) + 1
    files = version_files(built)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "parent": parent if parent is not None else current_version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
        "counts": {
            "vectors": len(built),
            "products": len(set(built.ids.column("product_id").to_pylist())),
            "dim": built.dim,
        },
        "factory": built.factory,
        "search_params": built.search_params,
        "recall_at_10_vs_exact": built.recall_at_10,
        "evaluation": evaluation,
        "gate": gate_record,
        "files": {f: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for f, b in files.items()},
    }
    prefix = layout.index_version_prefix(name, version)
    raw_manifest = manifest_bytes(manifest)
    key = signing.signing_key()
    try:
        for fname, data in files.items():
            store.put(prefix + fname, data, create_only=True)
        if key is not None:  # before the manifest, which marks the version complete
            signature = signing.sign(raw_manifest, key)
            store.put(prefix + MANIFEST_FILE + signing.SIGNATURE_SUFFIX, signature, create_only=True)
        store.put(prefix + MANIFEST_FILE, raw_manifest, create_only=True)
    except ObjectExistsError as exc:
        raise PublishConflictError(
            f"index {name} v{version} is being written by another publisher ({exc}); nothing of ours "
            "was promoted: run again to publish as the next version"
        ) from exc
    _, _, raw_sha = _fetch(store, name, version, hashlib.sha256(raw_manifest).hexdigest())
    result = PublishResult(name, version, manifest["parent"], manifest, False, gate=gate_record)
    if promote:
        _move_current(store, name, version, etag, reason=force_reason or "publish", manifest_sha256=raw_sha)
        result.promoted = True
    result.seconds = time.perf_counter() - start
    log.info(
        "published index %s v%d (%d vectors, %s)%s in %.1f s",
        name,
        version,
        len(built),
        built.factory,
        " and made it CURRENT" if promote else "",
        result.seconds,
    )
    return result


def _move_current(
    store: ObjectStore, name: str, version: int, etag: str | None, *, reason: str, manifest_sha256: str
) -> None:
    """Point CURRENT at `version`, recording the sha256 of its manifest's stored bytes (readers
    check the manifest against it before believing any checksum the manifest lists)."""
    key = layout.index_current_key(name)
    body = {
        "version": version,
        "manifest_sha256": manifest_sha256,
        "reason": reason,
        "moved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        swap_pointer(store, key, body, etag)
    except StaleWriteError as exc:
        raise PublishConflictError(
            f"index {name} CURRENT moved while v{version} was being promoted (another publisher won); "
            f"v{version} stays published but not CURRENT"
        ) from exc


def promote(
    store: ObjectStore,
    name: str,
    version: int,
    *,
    gate: GateConfig | None = None,
    force_reason: str | None = None,
) -> dict[str, Any]:
    """Make an existing, verified version CURRENT (through the gate unless forced)."""
    manifest, _, raw_sha = _fetch(store, name, version, None)
    current, etag = read_current(store, name)
    if current and int(current["version"]) == version:
        return manifest
    current_eval = _evaluation_of(store, name, int(current["version"]) if current else None)
    passed, why = gate_check(manifest.get("evaluation"), current_eval, gate or GateConfig())
    if not passed and not force_reason:
        raise GateRefusedError(
            f"quality gate refused promoting index {name} v{version}: {why}; pass {{option:force}}"
        )
    _move_current(store, name, version, etag, reason=force_reason or "promote", manifest_sha256=raw_sha)
    return manifest


def rollback(store: ObjectStore, name: str, *, to: int | None = None, reason: str) -> int:
    """Move CURRENT back to `to` (default: CURRENT's parent). No gate: this is the way back."""
    current, etag = read_current(store, name)
    if current is None:
        raise IndexStoreError(f"index {name} has no CURRENT version to roll back in {store.uri}")
    target = to if to is not None else read_manifest(store, name, int(current["version"])).get("parent")
    if target is None:
        raise IndexStoreError(
            f"index {name} v{current['version']} has no parent: name the version to roll back to"
        )
    _, _, raw_sha = _fetch(store, name, int(target), None)
    _move_current(store, name, int(target), etag, reason=f"rollback: {reason}", manifest_sha256=raw_sha)
    return int(target)


def pin_key(name: str, version: int) -> str:
    return layout.index_pin_key(name, version)


def pin(store: ObjectStore, name: str, version: int, reason: str) -> None:
    read_manifest(store, name, version)
    store.put(pin_key(name, version), json.dumps({"reason": reason}).encode())


def gc(store: ObjectStore, name: str, *, keep: int, dry_run: bool = False) -> list[int]:
    """Delete all but the newest `keep` complete versions, never CURRENT or a pinned one.

    Partial versions (no manifest) older than the newest complete one are abandoned publishes
    and go too. Returns the versions deleted.
    """
    if keep < 1:
        raise GlassFinderError(f"gc keep must be >= 1, got {keep}")
    versions = list_versions(store, name)
    current, _ = read_current(store, name)
    protected = {int(current["version"])} if current else set()
    protected |= {int(i.key.rsplit("/v", 1)[1]) for i in store.list(layout.index_pins_prefix(name))}
    complete = [v for v, ok in versions.items() if ok]
    protected |= set(complete[-keep:])
    newest = max(complete, default=0)
    doomed = [v for v, ok in versions.items() if v not in protected and (ok or v < newest)]
    if not dry_run:
        for v in doomed:
            prefix = layout.index_version_prefix(name, v)
            keys = [i.key for i in store.list(prefix)]
            # The manifest goes first: a half-deleted version must never look complete.
            for key in sorted(keys, key=lambda k: not k.endswith(MANIFEST_FILE)):
                store.delete(key)
    return doomed
