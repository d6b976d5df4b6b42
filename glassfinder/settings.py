"""Defaults that more than one module needs, each read from one environment variable.

Every default lives here so that the CLI, the DAGs, the plugin and the tests agree on them.
"""

from __future__ import annotations

import os
from pathlib import Path

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
#: Every GlassFinder DAG id starts with this (what the plugin's listeners look after).
DAG_PREFIX = "glassfinder_"
GPU_POOL = "gpu"


def store_uri() -> str:
    """The store URI to use: $GLASSFINDER_STORE_URI, else the local default."""
    return os.environ.get("GLASSFINDER_STORE_URI") or DEFAULT_STORE_URI


def source_manifest_uri(store: str | None = None) -> str:
    """The shop's catalogue export: $GLASSFINDER_SOURCE_MANIFEST_URI, else incoming/ in the store."""
    explicit = os.environ.get("GLASSFINDER_SOURCE_MANIFEST_URI")
    if explicit:
        return explicit
    return f"{(store or store_uri()).rstrip('/')}/{DEFAULT_SOURCE_MANIFEST_KEY}"


#: Render spec presets the pipeline uses when a run names none (see glassfinder.render.spec).
DEFAULT_CATALOG_SPEC = "catalog"
DEFAULT_QUERY_SPEC = "queries"


def catalog_spec() -> str:
    """The catalogue render spec of runs that name none (scheduled and Asset-triggered runs):
    $GLASSFINDER_CATALOG_SPEC (a preset, inline JSON, a file or a store URI), else the preset."""
    return os.environ.get("GLASSFINDER_CATALOG_SPEC") or DEFAULT_CATALOG_SPEC


def query_spec() -> str:
    """The evaluation render spec of runs that name none: $GLASSFINDER_QUERY_SPEC, else the preset."""
    return os.environ.get("GLASSFINDER_QUERY_SPEC") or DEFAULT_QUERY_SPEC


def model_name() -> str:
    return os.environ.get("GLASSFINDER_MODEL_NAME") or DEFAULT_MODEL_NAME


def index_name() -> str:
    return os.environ.get("GLASSFINDER_INDEX_NAME") or DEFAULT_INDEX_NAME


def portraits_dir() -> Path:
    """The labelled real portraits face analysis trains on: $GLASSFINDER_PORTRAITS_DIR, else
    `../shared/faces/portraits` beside a source checkout (what the project's machines hold)."""
    explicit = os.environ.get("GLASSFINDER_PORTRAITS_DIR")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[2] / "shared" / "faces" / "portraits"
