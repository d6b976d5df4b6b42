"""Shared fixtures: a real SeaweedFS S3 server on loopback, and stores on both backends."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glassfinder.store import LocalStore, ObjectStore, S3Config, S3Store
from glassfinder.store.seaweed import SeaweedServer, running_seaweedfs

BACKENDS = ("local", "s3")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS for the whole session; tests isolate themselves by bucket."""
    with running_seaweedfs(
        tmp_path_factory.mktemp("seaweedfs"), access_key="gf-test", secret_key=secrets.token_hex(16)
    ) as server:
        yield server


def s3_config(server: SeaweedServer, **overrides: object) -> S3Config:
    """Explicit config for `server` (tests never rely on the developer's AWS environment)."""
    base: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "region": "us-east-1",
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "max_attempts": 3,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 30.0,
    }
    base.update(overrides)
    return S3Config(**base)  # type: ignore[arg-type]


def new_bucket_store(server: SeaweedServer, prefix: str = "", **overrides: Any) -> S3Store:
    store = S3Store(f"gf-{uuid.uuid4().hex[:20]}", prefix, config=s3_config(server, **overrides))
    store.create_bucket()
    return store


def make_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, **s3_overrides: Any
) -> ObjectStore:
    if backend == "local":
        return LocalStore(tmp_path / "store")
    return new_bucket_store(request.getfixturevalue("seaweed"), **s3_overrides)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """An empty store on each backend in turn."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture(params=BACKENDS)
def small_part_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A store whose S3 side switches to multipart at 5 MiB, so tests can cover it cheaply."""
    mib5 = 5 * 1024 * 1024
    return make_store(
        request.param, request, tmp_path, multipart_threshold_bytes=mib5, multipart_part_bytes=mib5
    )


#: Files of a minute or more, started first: the test processes (pyproject's addopts) then
#: finish together instead of one idling while another works through a long file last.
LONGEST_FIRST = (
    "test_cluster.py",
    "test_deployment.py",
    "test_cli.py",
    "test_dags.py",
    "test_search.py",
    "test_embed.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config: pytest.Config) -> None:
    """Give the session its own Airflow home before anything imports airflow.

    Airflow reads its configuration once, on import (and would otherwise write ~/airflow).
    """
    from glassfinder import airflow_local

    home = Path(tempfile.mkdtemp(prefix="gf-airflow-"))
    os.environ.update(airflow_local.airflow_env(home))


def pytest_unconfigure(config: pytest.Config) -> None:
    home = os.environ.get("AIRFLOW_HOME", "")
    if Path(home).name.startswith("gf-airflow-"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's embedded Airflow (SQLite, the repository's dags/ and plugins/), migrated."""
    from glassfinder import airflow_local

    return airflow_local.configure(Path(os.environ["AIRFLOW_HOME"]))


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """A fresh bucket, reachable through boto3's own environment (as DAG tasks reach it)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = new_bucket_store(seaweed)
    monkeypatch.setenv("GLASSFINDER_STORE_URI", store.uri)
    return store
