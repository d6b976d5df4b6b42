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
    BadInputError,
    CorruptIndexFileError,
    GateRefusedError,
    GlassFinderError,
    IndexBuildError,
    IndexCorruptError,
    IndexRequestError,
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
    """Largest drops below CURRENT's figures that still promote (absolute, 0..1), and how sure the
    gate must be that a drop is not the evaluation's own sampling noise before it refuses.

    noise_confidence: one-sided confidence of the paired bootstrap (0: no noise margin, the
    point estimate alone decides, as before the margin existed). bootstrap_seed: the
    resampling is seeded, so one pair of evaluations always gets one decision.
    """

    max_top1_drop: float = 0.01
    max_top10_drop: float = 0.01
    noise_confidence: float = 0.95
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if not (self.noise_confidence == 0 or 0.5 <= self.noise_confidence < 1):
            raise BadInputError(
                f"gate noise_confidence must be 0 (no margin) or in [0.5, 1), got {self.noise_confidence}"
            )
        if self.bootstrap_resamples < 100:
            raise BadInputError(f"gate bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")


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
    """(CURRENT, its etag, manifest, files), verified from the pointer down; IndexBuildError when
    there is no CURRENT yet."""
    current, etag = read_current(store, name)
    if current is None:
        raise IndexBuildError(
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
#: The figures the gate compares: top-k of a query's true product (rank 1..k; 0: not within 10).
GATE_FIGURES = {"top1": 1, "top10": 10}


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why: `record` is what the version's manifest keeps (per figure:
    both versions' values, the drop, the allowed drop, the noise margin and the bootstrap's
    bound; which products and queries were compared; how the bootstrap was drawn)."""

    passed: bool
    why: str
    record: dict[str, Any]


def gate_check(
    candidate: dict[str, Any] | None, current: dict[str, Any] | None, gate: GateConfig
) -> tuple[bool, str]:
    """(passes, why) comparing a candidate's evaluation with CURRENT's (see gate_decision)."""
    decision = gate_decision(candidate, current, gate)
    return decision.passed, decision.why


def gate_decision(
    candidate: dict[str, Any] | None, current: dict[str, Any] | None, gate: GateConfig
) -> GateDecision:
    """Compare a candidate's evaluation with CURRENT's, like with like and net of sampling noise.

    Like with like: only the queries of products both versions were evaluated on count (same
    query spec and damage seed, so the same query images), each query paired with itself.
    Noise: the evaluation is a sample of queries, and on a small catalogue one query is a big
    step (12 products, 1 query each: one query that a new near-twin product outranks is a top-1
    drop of 0.083). A paired bootstrap over the shared queries - resampled by product, since
    a product's queries rise and fall together (a new near-twin takes them all) - gives the
    drop's one-sided lower confidence bound; the candidate is refused only when even that bound
    is beyond the allowed drop, i.e. when the drop exceeds the allowed drop by more than the
    noise margin (drop - bound). Evaluations without per-query ranks compare as a whole, with no
    margin."""
    if current is None:
        return GateDecision(True, "no CURRENT version to compare with", {})
    if candidate is None:
        return GateDecision(False, "candidate has no evaluation while CURRENT has one", {})
    same_queries = {k: candidate.get(k) for k in ("query_spec", "damage_seed")} == {
        k: current.get(k) for k in ("query_spec", "damage_seed")
    }
    if not same_queries:
        cand = f"{candidate.get('query_spec')}/{candidate.get('damage_seed')}"
        cur = f"{current.get('query_spec')}/{current.get('damage_seed')}"
        why = f"evaluation query sets differ (candidate {cand}, CURRENT {cur}): figures are not comparable"
        return GateDecision(False, why, {})
    limits = {"top1": gate.max_top1_drop, "top10": gate.max_top10_drop}
    paired = _paired_queries(candidate, current)
    record: dict[str, Any] = {"compared_on": paired.scope if paired else {"whole": True}}
    parts, failed = [], []
    for figure, k in GATE_FIGURES.items():
        if paired is None:  # no per-query ranks: the recorded figures, no noise margin
            new, old = float(candidate[figure]), float(current[figure])
            noise: dict[str, Any] = {"margin": 0.0, "drop_low": old - new}
        else:
            new, old = paired.figure(k)
            noise = paired.drop_noise(k, gate)
        drop = old - new
        refused = noise["drop_low"] > limits[figure] + 1e-9
        record[figure] = {
            "candidate": round(new, 4),
            "current": round(old, 4),
            "drop": round(drop, 4),
            "allowed": limits[figure],
            "noise_margin": round(noise["margin"], 4),
            "drop_low": round(noise["drop_low"], 4),
            "refused": refused,
        }
        if refused:
            failed.append(figure)
        parts.append(
            f"{figure} {new:.4f} vs CURRENT {old:.4f} (drop {drop:+.4f}, allowed {limits[figure]:.4f}, "
            f"noise margin {noise['margin']:.4f})"
        )
    if paired is not None:
        record["bootstrap"] = {
            "method": "paired percentile bootstrap, products resampled with their shared queries",
            "confidence": gate.noise_confidence,
            "resamples": gate.bootstrap_resamples,
            "seed": gate.bootstrap_seed,
        }
    why = ", ".join(parts) + (paired.note if paired else "")
    if failed:
        why += "; beyond the allowed drop by more than the evaluation's noise"
    return GateDecision(not failed, why, record)


@dataclass(frozen=True)
class _PairedQueries:
    """The queries both evaluations ran, per shared product: (p, q) ranks padded with -1."""

    candidate: np.ndarray  # (p, q) int ranks (1-based, 0: not within 10, -1: padding)
    current: np.ndarray
    scope: dict[str, Any]
    note: str

    def hits(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per product: (candidate's hits within k, CURRENT's, query count)."""
        real = self.current >= 0
        cand = ((self.candidate >= 1) & (self.candidate <= k) & real).sum(axis=1)
        cur = ((self.current >= 1) & (self.current <= k) & real).sum(axis=1)
        return cand.astype(float), cur.astype(float), real.sum(axis=1).astype(float)

    def figure(self, k: int) -> tuple[float, float]:
        cand, cur, n = self.hits(k)
        return float(cand.sum() / n.sum()), float(cur.sum() / n.sum())

    def drop_noise(self, k: int, gate: GateConfig) -> dict[str, float]:
        """The drop's one-sided lower confidence bound and the margin (drop - bound)."""
        cand, cur, n = self.hits(k)
        lost = cur - cand
        drop = float(lost.sum() / n.sum())
        if gate.noise_confidence == 0 or len(lost) < 2 or (np.all(lost == lost[0]) and np.all(n == n[0])):
            return {"margin": 0.0, "drop_low": drop}  # nothing to resample: the drop is what it is
        from scipy.stats import bootstrap  # scipy (~0.3 s): only when a gate compares ranks

        result = bootstrap(
            (lost, n),
            _ratio_of_sums,
            paired=True,
            vectorized=True,
            n_resamples=gate.bootstrap_resamples,
            confidence_level=gate.noise_confidence,
            alternative="greater",
            method="percentile",
            rng=np.random.default_rng(gate.bootstrap_seed),
        )
        low = min(float(result.confidence_interval.low), drop)
        return {"margin": drop - low, "drop_low": low}


def _ratio_of_sums(lost: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
    """The drop of a resample of products: queries lost over queries asked."""
    return np.asarray(lost.sum(axis=axis) / n.sum(axis=axis))


def _paired_queries(candidate: dict[str, Any], current: dict[str, Any]) -> _PairedQueries | None:
    """The shared queries of two evaluations with per-product ranks, or None without ranks.

    A catalogue that grows or shrinks changes the query set: a new product whose own queries miss
    would otherwise refuse its onboarding although no existing product got worse, and a removed
    one could hide a loss. A product evaluated on a different number of queries by the two
    (its asset changed, and with it its query renders) is not like with like and is left out.
    No product in common: the versions compare as a whole (None)."""
    cand_ranks, cur_ranks = candidate.get("ranks_by_product"), current.get("ranks_by_product")
    if not cand_ranks or not cur_ranks:
        return None
    shared = sorted(set(cand_ranks) & set(cur_ranks))
    unpaired = [p for p in shared if len(cand_ranks[p]) != len(cur_ranks[p])]
    shared = [p for p in shared if p not in unpaired and cur_ranks[p]]
    if not shared:
        return None
    width = max(len(cur_ranks[p]) for p in shared)
    pad = np.full((len(shared), width), -1, dtype=np.int64)
    cand, cur = pad.copy(), pad.copy()
    for i, p in enumerate(shared):
        cand[i, : len(cand_ranks[p])] = cand_ranks[p]
        cur[i, : len(cur_ranks[p])] = cur_ranks[p]
    queries = int((cur >= 0).sum())
    new = sorted(set(cand_ranks) - set(cur_ranks))
    note = f" on the {len(shared)} products both evaluate ({queries} queries)"
    scope: dict[str, Any] = {"products": len(shared), "queries": queries, "new_products": len(new)}
    if new:
        added = _figures_of(cand_ranks, set(new))
        note += f"; its {len(new)} new products: top1 {added['top1']:.4f}, top10 {added['top10']:.4f}"
        scope["new_products_figures"] = {"top1": added["top1"], "top10": added["top10"]}
    if unpaired:
        note += f"; {len(unpaired)} products evaluated on other queries left out"
        scope["unpaired_products"] = unpaired[:20]
    return _PairedQueries(cand, cur, scope, note)


def _figures_of(ranks: dict[str, list[int]], products: set[str]) -> dict[str, Any]:
    return rank_figures([x for p in sorted(products) for x in ranks[p]])


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
    current_number = int(current["version"]) if current else None
    gate_record = _pass_gate(
        store, name, current_number, evaluation, gate, enforce=promote, force_reason=force_reason
    )
    versions = list_versions(store, name)
    version = max(versions, default=0) + 1
    files = version_files(built)
    manifest = _version_manifest(
        name,
        version,
        parent if parent is not None else current_number,
        built,
        info,
        evaluation=evaluation,
        gate_record=gate_record,
        files=files,
    )
    raw_manifest = manifest_bytes(manifest)
    _write_version(store, name, version, files, raw_manifest)
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


def _pass_gate(
    store: ObjectStore,
    name: str,
    current_number: int | None,
    evaluation: dict[str, Any] | None,
    gate: GateConfig,
    *,
    enforce: bool,
    force_reason: str | None,
) -> dict[str, Any]:
    """The gate's record for the manifest. Checked before anything is written, so a refused
    version leaves no files behind; enforce=False (not promoting) only records the decision."""
    current_eval = _evaluation_of(store, name, current_number)
    decision = gate_decision(evaluation, current_eval, gate)
    passed, why = decision.passed, decision.why
    gate_record: dict[str, Any] = {
        "passed": passed,
        "figures": why,
        "config": gate.__dict__,
        "decision": decision.record,
    }
    if enforce and not passed:
        if not force_reason:
            raise GateRefusedError(
                f"quality gate refused index {name} (CURRENT v{current_number}): {why}; "
                "pass {option:force} to override"
            )
        gate_record["forced"] = force_reason
        log.warning("quality gate overridden for %s: %s (reason: %s)", name, why, force_reason)
    return gate_record


def _version_manifest(
    name: str,
    version: int,
    parent: int | None,
    built: BuiltIndex,
    info: dict[str, Any],
    *,
    evaluation: dict[str, Any] | None,
    gate_record: dict[str, Any],
    files: dict[str, bytes],
) -> dict[str, Any]:
    """The manifest of a version: provenance, counts, evaluation, gate, and every file's checksum."""
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "parent": parent,
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


def _write_version(
    store: ObjectStore, name: str, version: int, files: dict[str, bytes], raw_manifest: bytes
) -> None:
    """Write the version's files create-only, the manifest last: a version with a manifest is
    complete, and of two publishers that picked the same number one wins (PublishConflictError)."""
    prefix = layout.index_version_prefix(name, version)
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
        raise IndexRequestError(f"index {name} has no CURRENT version to roll back in {store.uri}")
    target = to if to is not None else read_manifest(store, name, int(current["version"])).get("parent")
    if target is None:
        raise IndexRequestError(
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
        raise BadInputError(f"gc keep must be >= 1, got {keep}")
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
