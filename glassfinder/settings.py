"""Defaults that more than one module needs, and the one place the environment is read.

Every default lives here so that the CLI, the DAGs, the plugin and the tests agree on them.
Every environment variable GlassFinder reads is named in ENV_VARS with what it sets; modules
read them through `env()` (a name not listed is a bug and fails at once) and change the
process's own environment through `set_env()`. tests/test_layers.py checks that no other
module touches os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# --- environment variables ------------------------------------------------------------------------
STORE_URI_ENV = "GLASSFINDER_STORE_URI"
SOURCE_MANIFEST_URI_ENV = "GLASSFINDER_SOURCE_MANIFEST_URI"
CATALOG_SPEC_ENV = "GLASSFINDER_CATALOG_SPEC"
QUERY_SPEC_ENV = "GLASSFINDER_QUERY_SPEC"
MODEL_NAME_ENV = "GLASSFINDER_MODEL_NAME"
INDEX_NAME_ENV = "GLASSFINDER_INDEX_NAME"
PORTRAITS_DIR_ENV = "GLASSFINDER_PORTRAITS_DIR"
WORK_DIR_ENV = "GLASSFINDER_WORK_DIR"
MAX_SHRINK_ENV = "GLASSFINDER_MAX_CATALOGUE_SHRINK"
ASSET_ROOTS_ENV = "GLASSFINDER_ASSET_ROOTS"
MAX_ASSET_BYTES_ENV = "GLASSFINDER_MAX_ASSET_BYTES"
WORKER_NAME_ENV = "GLASSFINDER_WORKER_NAME"
INDEX_SIGNING_KEY_ENV = "GLASSFINDER_INDEX_SIGNING_KEY"
MODEL_VIEWER_JS_ENV = "GLASSFINDER_MODEL_VIEWER_JS"
GL_PLATFORM_ENV = "GLASSFINDER_GL_PLATFORM"
LOG_FILE_ENV = "GLASSFINDER_LOG_FILE"
MOBILENET_V2_WEIGHTS_ENV = "GLASSFINDER_IMAGENET_WEIGHTS"
EFFICIENTNET_LITE0_WEIGHTS_ENV = "GLASSFINDER_EFFICIENTNET_LITE0_WEIGHTS"
#: S3 client budgets and endpoint: GLASSFINDER_S3_<FIELD> for each field of store.s3.S3Config.
S3_PREFIX = "GLASSFINDER_S3_"
#: Airflow's own configuration variables, set for the embedded Airflow (airflow_local).
AIRFLOW_PREFIX = "AIRFLOW__"

ENV_VARS: dict[str, str] = {
    STORE_URI_ENV: "the store: a folder or s3://bucket/prefix (default .glassfinder/store)",
    SOURCE_MANIFEST_URI_ENV: "the shop's export the nightly ingests (default incoming/ in the store)",
    CATALOG_SPEC_ENV: "catalogue render spec of runs that name none (preset, JSON, file or URI)",
    QUERY_SPEC_ENV: "evaluation render spec of runs that name none",
    MODEL_NAME_ENV: "embedding model name (models/<name>/CURRENT)",
    INDEX_NAME_ENV: "index name (indexes/<name>/CURRENT)",
    PORTRAITS_DIR_ENV: "the labelled real portraits face analysis trains on",
    WORK_DIR_ENV: "local scratch for training checkpoints (default .glassfinder/work)",
    MAX_SHRINK_ENV: "largest share of the catalogue one ingest may remove (0..1)",
    ASSET_ROOTS_ENV: "comma-separated store URIs assets may also come from",
    MAX_ASSET_BYTES_ENV: "largest asset file ingest reads, in bytes",
    WORKER_NAME_ENV: "a Celery worker's name, recorded as NAME@host by its task instances",
    INDEX_SIGNING_KEY_ENV: "HMAC key index files are signed and checked with (>= 16 bytes)",
    MODEL_VIEWER_JS_ENV: "model-viewer's script for product pages (default: the venv's share folder)",
    GL_PLATFORM_ENV: "headless OpenGL platform: egl (default) or osmesa",
    LOG_FILE_ENV: "where the CLI's library log goes (default .glassfinder/glassfinder.log)",
    MOBILENET_V2_WEIGHTS_ENV: "a copy of the ImageNet MobileNetV2 weights to use instead of the venv's",
    EFFICIENTNET_LITE0_WEIGHTS_ENV: "a copy of the ImageNet EfficientNet-Lite0 weights to use",
    # Read, not owned: other software's variables GlassFinder consults or sets for its children.
    "PYOPENGL_PLATFORM": "PyOpenGL's platform; set from GLASSFINDER_GL_PLATFORM before OpenGL loads",
    "LP_NUM_THREADS": "Mesa llvmpipe's threads; set to 1 per render worker of a pool",
    "AIRFLOW_HOME": "Airflow's home; set by the embedded Airflow before Airflow is imported",
    "AWS_ENDPOINT_URL": "the S3 endpoint boto3 uses (SeaweedFS, MinIO, ...); named in messages",
}


def env(name: str, environ: Mapping[str, str] | None = None) -> str:
    """$name ('' when unset); `environ` instead of the process's (tests, child configs)."""
    if not _known(name):
        raise KeyError(f"{name} is not an environment variable GlassFinder reads (settings.ENV_VARS)")
    return (os.environ if environ is None else environ).get(name, "")


def _known(name: str) -> bool:
    return name in ENV_VARS or name.startswith((S3_PREFIX, AIRFLOW_PREFIX))


def environ_copy() -> dict[str, str]:
    """The process's whole environment, for a child process's (which then sets its own)."""
    return dict(os.environ)


def set_env(name: str, value: str, *, only_if_unset: bool = False) -> None:
    """Set a variable of this process (and its children): what a library reads at import."""
    if not _known(name):
        raise KeyError(f"{name} is not an environment variable GlassFinder sets (settings.ENV_VARS)")
    if only_if_unset:
        os.environ.setdefault(name, value)
    else:
        os.environ[name] = value


#: Where artefacts go when no store URI is given: a directory beside the working dir.
DEFAULT_STORE_URI = ".glassfinder/store"
#: Where the shop's full catalogue export (the nightly's input) lands inside the store.
DEFAULT_SOURCE_MANIFEST_KEY = "incoming/manifest.parquet"
#: The embedding model the pipeline embeds with (models/<name>/CURRENT).
DEFAULT_MODEL_NAME = "glasses"
#: The index the pipeline publishes (indexes/<name>/CURRENT).
DEFAULT_INDEX_NAME = "catalog"
#: Celery queue and Airflow pool of the tasks that want a GPU (embedding, training).
GPU_QUEUE = "gpu"
#: Celery queue of every other task (catalogue, planning, rendering, publishing).
DEFAULT_QUEUE = "default"
#: Seconds before a failed task's first retry (Airflow's core.default_task_retry_delay, set by
#: every deployment this package writes; later retries back off from it, glassfinder.pipeline.config).
DEFAULT_TASK_RETRY_DELAY_S = 60
#: Every GlassFinder DAG id starts with this (what the plugin's listeners look after).
DAG_PREFIX = "glassfinder_"
GPU_POOL = "gpu"


def store_uri() -> str:
    """The store URI to use: $GLASSFINDER_STORE_URI, else the local default."""
    return env(STORE_URI_ENV) or DEFAULT_STORE_URI


def source_manifest_uri(store: str | None = None) -> str:
    """The shop's catalogue export: $GLASSFINDER_SOURCE_MANIFEST_URI, else incoming/ in the store."""
    explicit = env(SOURCE_MANIFEST_URI_ENV)
    if explicit:
        return explicit
    return f"{(store or store_uri()).rstrip('/')}/{DEFAULT_SOURCE_MANIFEST_KEY}"


#: Render spec presets the pipeline uses when a run names none (see glassfinder.render.spec).
DEFAULT_CATALOG_SPEC = "catalog"
DEFAULT_QUERY_SPEC = "queries"


def catalog_spec() -> str:
    """The catalogue render spec of runs that name none (scheduled and Asset-triggered runs):
    $GLASSFINDER_CATALOG_SPEC (a preset, inline JSON, a file or a store URI), else the preset."""
    return env(CATALOG_SPEC_ENV) or DEFAULT_CATALOG_SPEC


def query_spec() -> str:
    """The evaluation render spec of runs that name none: $GLASSFINDER_QUERY_SPEC, else the preset."""
    return env(QUERY_SPEC_ENV) or DEFAULT_QUERY_SPEC


def model_name() -> str:
    return env(MODEL_NAME_ENV) or DEFAULT_MODEL_NAME


def index_name() -> str:
    return env(INDEX_NAME_ENV) or DEFAULT_INDEX_NAME


def portraits_dir() -> Path:
    """The labelled real portraits face analysis trains on: $GLASSFINDER_PORTRAITS_DIR, else
    `../shared/faces/portraits` beside a source checkout (what the project's machines hold)."""
    explicit = env(PORTRAITS_DIR_ENV)
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[2] / "shared" / "faces" / "portraits"


def work_dir() -> Path:
    """Local scratch for training checkpoints: $GLASSFINDER_WORK_DIR or .glassfinder/work."""
    return Path(env(WORK_DIR_ENV) or ".glassfinder/work")
