"""Where every artefact lives in the object store: the one source of truth for key layout.

Render and feature shards are content-addressed (by spec hash, asset sha256 and model sha), so a
re-run finds finished work by key and nightly runs only do what changed.
"""

from __future__ import annotations

import hashlib
import re
import time

from glassfinder.errors import BadInputError

_HEX_RE = re.compile(r"^[0-9a-f]{8,64}$")
#: Model and index names (also the DAG params' JSON-schema pattern).
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def _hex(field: str, value: str) -> str:
    if not isinstance(value, str) or not _HEX_RE.match(value):
        raise BadInputError(f"{field} must be 8-64 lowercase hex digits, got {value!r}")
    return value


def _name(field: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise BadInputError(f"{field} must be 1-64 lowercase letters, digits, '_', '.' or '-', got {value!r}")
    return value


def view_key(asset_sha256: str, spec_hash: str, face_id: str, view_index: int) -> str:
    """The identity of one rendered view: what makes its pixels, and nothing else."""
    if view_index < 0:
        raise BadInputError(f"view_index must be >= 0, got {view_index}")
    return f"{_hex('asset_sha256', asset_sha256)}/{_hex('spec_hash', spec_hash)}/{face_id}/{view_index}"


def render_prefix(spec_hash: str) -> str:
    """Everything rendered under one spec: its shards, spec.json and quarantine records."""
    return f"renders/{_hex('spec_hash', spec_hash)}/"


def render_spec_key(spec_hash: str) -> str:
    """The render spec itself, saved beside the shards it names."""
    return f"{render_prefix(spec_hash)}spec.json"


def render_quarantine_report_key(spec_hash: str) -> str:
    """The quarantine report of the last whole-catalog render under a spec."""
    return f"{render_prefix(spec_hash)}quarantine.json"


def render_quarantine_prefix(spec_hash: str) -> str:
    return f"{render_prefix(spec_hash)}quarantine/"


def render_quarantine_key(spec_hash: str, asset_sha256: str) -> str:
    """Why one asset could not be rendered under a spec."""
    return f"{render_quarantine_prefix(spec_hash)}{_hex('asset_sha256', asset_sha256)}.json"


_RENDER_QUARANTINE_RE = re.compile(r"^renders/[0-9a-f]{8,64}/quarantine/[0-9a-f]{8,64}\.json$")


def is_render_quarantine_key(key: str) -> bool:
    """Whether `key` is one asset's render quarantine record (not a shard, not the run report)."""
    return bool(_RENDER_QUARANTINE_RE.match(key))


def feature_quarantine_key(model_sha: str, spec_hash: str, asset_sha256: str) -> str:
    """Why one asset's image shard could not be embedded by a model."""
    return f"{feature_prefix(model_sha, spec_hash)}quarantine/{_hex('asset_sha256', asset_sha256)}.json"


_FEATURE_QUARANTINE_RE = re.compile(
    r"^features/[0-9a-f]{8,64}/[0-9a-f]{8,64}/quarantine/[0-9a-f]{8,64}\.json$"
)


def is_feature_quarantine_key(key: str) -> bool:
    return bool(_FEATURE_QUARANTINE_RE.match(key))


def feature_prefix(model_sha: str, spec_hash: str) -> str:
    """Every feature shard of one (model, spec)."""
    return f"features/{_hex('model_sha', model_sha)}/{_hex('spec_hash', spec_hash)}/"


#: The catalogue: its manifest, content-addressed assets, ingest caches and records.
CATALOG_DIR = "catalog/"
#: The folders every render spec, every embedding and every index lives under (quarantine lists them).
RENDERS_DIR = "renders/"
FEATURES_DIR = "features/"
INDEXES_DIR = "indexes/"
#: The clean catalogue manifest every later stage reads; rewritten only by compare-and-swap.
CATALOG_MANIFEST_KEY = f"{CATALOG_DIR}manifest.parquet"
#: The quarantine report of the last catalogue ingest (refused rows and why; dropped fields).
CATALOG_QUARANTINE_KEY = f"{CATALOG_DIR}quarantine.json"
#: Where `glassfinder catalog validate` writes its report: beside the manifest it checked.
QUARANTINE_REPORT_SUFFIX = ".quarantine.json"
#: Inline onboarding rows and delta manifests given in a run's conf.
CATALOG_DELTA_PREFIX = f"{CATALOG_DIR}deltas/"


#: A run's pinned catalogue: the manifest's bytes under their sha256, beside the live manifest
#: (rows name assets relative to the manifest's folder, so a snapshot must share it).
_CATALOG_SNAPSHOT_RE = re.compile(r"(?:^|/)catalog/manifest-([0-9a-f]{64})\.parquet$")


def catalog_snapshot_key(sha256: str) -> str:
    """Key of the catalogue manifest whose bytes hash to `sha256`; written once, never replaced."""
    if len(sha256) != 64:
        raise BadInputError(f"catalogue snapshot needs a 64-hex sha256, got {sha256!r}")
    return f"{CATALOG_DIR}manifest-{_hex('sha256', sha256)}.parquet"


def catalog_snapshot_sha(key_or_uri: str) -> str | None:
    """The sha256 a catalogue snapshot's key (or URI) names, or None for any other object."""
    m = _CATALOG_SNAPSHOT_RE.search(key_or_uri)
    return m.group(1) if m else None


def catalog_asset_key(sha256: str) -> str:
    """Store key of a normalised asset; manifests name it relative to their own folder."""
    return f"{CATALOG_DIR}assets/{sha256}.glb"


def catalog_ingest_cache_key(normaliser_version: int, max_triangles: int, source_sha256: str) -> str:
    """Cached outcome of normalising the source file with this sha256 under these settings."""
    return f"{CATALOG_DIR}ingested/n{normaliser_version}-t{max_triangles}/{source_sha256}.json"


def catalog_override_key(when: float) -> str:
    """Key of the record of an allowed catalogue shrink made at `when` (epoch seconds)."""
    return f"{CATALOG_DIR}overrides/shrink-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}.json"


def catalog_delta_key(data: bytes) -> str:
    """An onboarding delta manifest, named by its content."""
    return f"{CATALOG_DELTA_PREFIX}{hashlib.sha256(data).hexdigest()[:16]}.json"


#: Packshots (the frame alone on white), beside the catalogue, content-addressed like renders.
PACKSHOT_DIR = f"{CATALOG_DIR}packshots/"
_VIEW_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def packshot_prefix(spec_hash: str) -> str:
    """Every packshot made under one packshot spec, and the spec itself."""
    return f"{PACKSHOT_DIR}{_hex('spec_hash', spec_hash)}/"


def packshot_spec_key(spec_hash: str) -> str:
    return f"{packshot_prefix(spec_hash)}spec.json"


def packshot_key(spec_hash: str, asset_sha256: str, view: str) -> str:
    """One view of one asset's packshot (PNG): what makes its pixels, and nothing else."""
    if not isinstance(view, str) or not _VIEW_RE.match(view):
        raise BadInputError(f"packshot view must be 1-32 lowercase letters, digits or '_', got {view!r}")
    return f"{packshot_prefix(spec_hash)}{_hex('asset_sha256', asset_sha256)}/{view}.png"


#: Analysed photo-bank faces (landmarks, pose, crops).
FACE_PHOTO_CACHE_PREFIX = "faces/photos/"


def face_photo_analysis_key(photo_sha256: str) -> str:
    """A photo-bank photo's analysis (landmarks, pose, or why it is unusable), by its bytes' sha256."""
    return f"{FACE_PHOTO_CACHE_PREFIX}{photo_sha256}.json"


def face_photo_crop_key(photo_sha256: str) -> str:
    """The square face crop renders are composited onto."""
    return f"{FACE_PHOTO_CACHE_PREFIX}{photo_sha256}.png"


#: A photo bank of real bare faces (the portraits' train split) that renders can wear frames on.
PORTRAIT_BANK_PREFIX = "faces/portraits/"


def portrait_bank_key(portrait_id: str) -> str:
    return f"{PORTRAIT_BANK_PREFIX}{_name('portrait_id', portrait_id.lower())}.jpg"


#: The packaged embedding model's training photo banks, kept in its work store beside the renders
#: (render specs name them with render.spec.OUTPUT_STORE_BANK, so no machine path enters a hash).
TRAINING_BANK_PREFIX = "faces/training/"


def training_bank_prefix(bank: str) -> str:
    return f"{TRAINING_BANK_PREFIX}{_name('bank', bank)}/"


def source_watch_key(source_uri: str) -> str:
    """Where the export watcher keeps the last etag it announced for one source manifest."""
    return f"catalog/watch/{hashlib.sha256(source_uri.encode()).hexdigest()[:16]}.json"


def render_shard_key(spec_hash: str, asset_sha256: str) -> str:
    """Image shard of one asset rendered under one spec."""
    return f"renders/{_hex('spec_hash', spec_hash)}/{_hex('asset_sha256', asset_sha256)}.parquet"


def feature_shard_key(model_sha: str, spec_hash: str, asset_sha256: str) -> str:
    """Feature shard of one asset's views under one spec, embedded by one model."""
    return (
        f"features/{_hex('model_sha', model_sha)}/{_hex('spec_hash', spec_hash)}/"
        f"{_hex('asset_sha256', asset_sha256)}.arrow"
    )


def index_prefix(name: str) -> str:
    """Everything of one index: its versions, CURRENT and pins."""
    return f"indexes/{_name('index name', name)}/"


def index_quarantine_key(name: str) -> str:
    """The products the last publish of an index could not index, and why."""
    return f"{index_prefix(name)}quarantine.json"


_INDEX_QUARANTINE_RE = re.compile(r"^indexes/[a-z0-9][a-z0-9_.-]{0,63}/quarantine\.json$")


def is_index_quarantine_key(key: str) -> bool:
    return bool(_INDEX_QUARANTINE_RE.match(key))


def index_version_prefix(name: str, version: int) -> str:
    """Folder of one immutable index version."""
    if version < 1:
        raise BadInputError(f"index version must be >= 1, got {version}")
    return f"{index_prefix(name)}v{version}/"


def index_current_key(name: str) -> str:
    """Pointer to the live version of an index; moved only by compare-and-swap."""
    return f"{index_prefix(name)}CURRENT"


def index_pins_prefix(name: str) -> str:
    """The pins of an index: versions gc never deletes."""
    return f"{index_prefix(name)}pins/"


def index_pin_key(name: str, version: int) -> str:
    """The pin of one index version (its body says why)."""
    return f"{index_pins_prefix(name)}v{version}"


def model_prefix(name: str, model_sha: str) -> str:
    """Folder of one published model (weights + card)."""
    return f"models/{_name('model name', name)}/{_hex('model_sha', model_sha)}/"


def model_current_key(name: str) -> str:
    """Pointer to the model version the pipeline embeds with."""
    return f"models/{_name('model name', name)}/CURRENT"


def run_record_key(dag_id: str, run_id: str, name: str) -> str:
    """A record of one pipeline run (its summary, its metrics), for operators and the plugin's pages."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return f"runs/{_name('dag id', dag_id)}/{safe}/{_name('record name', name)}"


def run_records_prefix(dag_id: str) -> str:
    return f"runs/{_name('dag id', dag_id)}/"
