"""The Airflow plugin (macros, run-metrics listener, versions app) and the catalogue export watcher."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from glassfinder import layout
from glassfinder.index.build import build_index
from glassfinder.index.versions import publish_version
from glassfinder.ops.macros import current_index_uri, current_index_version
from glassfinder.ops.run_metrics import record_run
from glassfinder.ops.versions_app import create_app
from glassfinder.pipeline.watch import SourceManifestTrigger
from glassfinder.store import LocalStore, S3Store
from glassfinder.store.base import ObjectStore
from glassfinder.store.seaweed import free_ports


def _publish(store: ObjectStore, products: int, *, top1: float, seed: int = 0) -> int:
    """Publish a small real index of random unit vectors with the given recorded evaluation."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(products * 2, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pids = [f"P{i // 2:03d}" for i in range(products * 2)]
    ids = pa.table(
        {
            "id": pa.array(np.arange(products * 2), pa.int64()),
            "view_key": [f"{'ab' * 8}/{'cd' * 8}/head-{i}/{i}" for i in range(products * 2)],
            "product_id": pids,
            "asset_sha256": [f"{int(p[1:]):064x}" for p in pids],
        }
    )
    evaluation = {
        "top1": top1,
        "top5": 0.9,
        "top10": 0.95,
        "mAP@10": 0.5,
        "queries": 10,
        "aggregation": "max",
        "query_spec": "q",
        "damage_seed": 0,
    }
    info = {"model": "glasses", "model_sha": "ab" * 8, "spec_hash": "cd" * 8, "kind": "full"}
    result = publish_version(store, "catalog", build_index(vectors, ids), info, evaluation=evaluation)
    return result.version


def test_macros_name_the_current_version_and_its_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert (
        current_index_version("catalog", store.uri) is None
        and current_index_uri("catalog", store.uri) is None
    )
    _publish(store, 4, top1=0.5)
    _publish(store, 5, top1=0.5, seed=1)
    assert current_index_version("catalog", store.uri) == 2
    uri = current_index_uri("catalog", store.uri)
    assert uri == f"{store.uri}/indexes/catalog/v2/" and Path(uri, "manifest.json").is_file()


def test_versions_app_lists_versions_runs_and_refuses_bad_names(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _publish(store, 4, top1=0.5)
    _publish(store, 6, top1=0.6, seed=1)
    store.put("indexes/catalog/v3/index.faiss", b"abandoned")  # a publish that died half-way
    summary = {
        "finished_at": "2026-11-23T02:10:00Z",
        "ok": True,
        "rendered": 12,
        "reused": 3,
        "embedded": 4,
        "quarantined": 1,
        "index": {"published": True, "version": 2},
    }
    store.put(
        layout.run_record_key("glassfinder_catalog_reindex", "scheduled__x", "summary.json"),
        json.dumps(summary).encode(),
    )
    client = TestClient(create_app(store.uri))
    versions = client.get("/api/indexes/catalog/versions").json()
    assert [(v["version"], v["complete"], v["current"]) for v in versions] == [
        (3, False, False),
        (2, True, True),
        (1, True, False),
    ]
    assert (
        versions[1]["products"] == 6
        and versions[1]["evaluation"]["top1"] == 0.6
        and versions[1]["parent"] == 1
    )
    assert client.get("/api/indexes/catalog/versions/1").json()["counts"]["products"] == 4
    assert client.get("/api/indexes/catalog/versions/9").status_code == 404
    assert client.get("/api/indexes/Not A Name/versions").status_code == 400
    runs = client.get("/api/runs/glassfinder_catalog_reindex").json()
    assert [(r["run_id"], r["summary"]["rendered"]) for r in runs] == [("scheduled__x", 12)]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert (
        "v2 (CURRENT)" in page.text
        and "partial (abandoned publish)" in page.text
        and "scheduled__x" in page.text
    )
    assert client.get("/health").json()["status"] == "ok"


def test_run_metrics_listener_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        dag_id, run_id, conf = "glassfinder_catalog_reindex", "r1", {"store": "s3://"}

    assert record_run(Broken(), "success") is None
    assert "could not record metrics" in caplog.text

    class Other:
        dag_id = "someone_elses_dag"

    assert record_run(Other(), "failed") is None  # not ours: left alone


def test_airflow_loads_the_plugin(airflow_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "plugins", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(proc.stdout[proc.stdout.index("[") :])}
    ours = plugins["glassfinder"]
    text = json.dumps(ours)
    assert "current_index_version" in text and "current_index_uri" in text
    assert "glassfinder.ops.run_metrics" in text and "/glassfinder" in text


def _first_event(trigger: SourceManifestTrigger, timeout_s: float) -> Any:
    async def first() -> Any:
        return await asyncio.wait_for(trigger.run().__anext__(), timeout_s)

    return asyncio.run(first())


def test_export_watcher_announces_each_new_version_of_the_export_once(s3_env: S3Store) -> None:
    store = s3_env
    source = f"{store.uri}/incoming/manifest.json"
    trigger = SourceManifestTrigger(source, store.uri, poll_interval_s=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "glassfinder.pipeline.watch.SourceManifestTrigger" and kwargs["source_uri"] == source
    with pytest.raises(TimeoutError):
        _first_event(trigger, 0.5)  # nothing exported yet
    store.put("incoming/manifest.json", b"[]")
    event = _first_event(trigger, 10)
    assert event.payload == {
        "source_manifest": source,
        "etag": store.head("incoming/manifest.json").etag,
        "size": 2,
    }
    # The triggerer starts the trigger again after an event: the same export is not announced twice.
    with pytest.raises(TimeoutError):
        _first_event(SourceManifestTrigger(**kwargs), 0.5)
    store.put("incoming/manifest.json", b'[{"product_id": "x"}]')
    assert _first_event(SourceManifestTrigger(**kwargs), 10).payload["size"] == 21


def test_the_api_server_serves_the_versions_app_to_logged_in_users(
    airflow_home: Path, tmp_path: Path
) -> None:
    """The real `airflow api-server` on loopback mounts the plugin's app under /glassfinder."""
    store = LocalStore(tmp_path / "store")
    _publish(store, 3, top1=0.4)
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"operator": "s3cret-pass"}))
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "GLASSFINDER_STORE_URI": store.uri,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v2/version").close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/glassfinder/api/indexes/catalog/versions")
        assert refused.value.code == 401
        login = urllib.request.Request(
            f"{base}/auth/token",
            data=json.dumps({"username": "operator", "password": "s3cret-pass"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(login) as r:
            token = json.loads(r.read())["access_token"]
        request = urllib.request.Request(
            f"{base}/glassfinder/api/indexes/catalog/versions", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request) as r:
            versions = json.loads(r.read())
        assert [(v["version"], v["current"], v["products"]) for v in versions] == [(1, True, 3)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_missing_pool_is_named_when_a_run_starts(
    airflow_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from glassfinder.ops import pool_check

    with create_session() as session:
        session.query(Pool).filter(Pool.pool == "gpu").delete()
    assert pool_check.missing_pools() == ["gpu"]
    pool_check._check("glassfinder_training_data")
    assert "pool 'gpu' does not exist" in caplog.text and "airflow pools set gpu 1" in caplog.text
    with create_session() as session:
        session.add(Pool(pool="gpu", slots=1, description="test", include_deferred=False))
    assert pool_check.missing_pools() == []
