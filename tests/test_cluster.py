"""A real Celery cluster on one machine: `glassfinder airflow up --executor celery`.

Redis, PostgreSQL, api-server, scheduler, dag-processor, triggerer and one Celery worker per
queue, all on 127.0.0.1, against a SeaweedFS S3 store (the workers never see a local store
path). The nightly re-index runs on a two-product catalogue; the REST API says which worker ran
each task. Then the gpu worker (and the task it runs) is SIGKILLed mid-embed, as a lost host
would be: a new worker takes the retry and the night publishes exactly one version.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from glassfinder import layout, settings
from glassfinder.ops import deployment
from glassfinder.store import LocalStore, S3Store
from glassfinder.store.seaweed import SeaweedServer, free_ports
from tests.conftest import new_bucket_store
from tests.test_deployment import Api

CATALOG_SPEC = {"image_px": 64, "views_per_asset": 2, "fit_jitter": 0.5}
QUERY_SPEC = {"image_px": 64, "views_per_asset": 1, "face_first": 900, "face_count": 100, "seed": 1}
MODEL = "clustertest"
DAG = "glassfinder_catalog_reindex"
RUN_BOUND_S = 600  # one run on a loaded 2-core machine, a worker's loss and a retry included
pytestmark = pytest.mark.timeout(1800)


def _cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _publish_model(store: S3Store, seed: int) -> str:
    from glassfinder.embed.model import ModelConfig, build_model
    from glassfinder.embed.registry import publish_model

    model = build_model(ModelConfig(), seed=seed).eval()
    return str(publish_model(store, MODEL, model, {"note": f"untrained, seed {seed} (cluster test)"}))


@pytest.fixture(scope="module")
def cluster(seaweed: SeaweedServer) -> Iterator[dict[str, Any]]:
    store = new_bucket_store(seaweed)
    # Not pytest's tmp dir: PostgreSQL runs as the postgres user and must reach its data dir.
    home = Path(tempfile.mkdtemp(prefix="gf-cluster-"))
    home.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "GLASSFINDER_"))}
    env |= seaweed.env() | {
        "GLASSFINDER_CATALOG_SPEC": json.dumps(CATALOG_SPEC),
        "GLASSFINDER_QUERY_SPEC": json.dumps(QUERY_SPEC),
        "GLASSFINDER_STORE_URI": store.uri,
        "GLASSFINDER_MODEL_NAME": MODEL,
    }
    made = _cli("catalog", "generate", "--count", "2", "--seed", "11", "--out", str(home / "shop"), env=env)
    assert made.returncode == 0, made.stderr
    shop = LocalStore(home / "shop")
    rows = pq.read_table(home / "shop" / "manifest.parquet").to_pylist()
    for row in rows:
        store.put(f"incoming/{row['asset_uri']}", shop.get(row["asset_uri"]))
    store.put("incoming/manifest.parquet", shop.get("manifest.parquet"))
    ingested = _cli(
        "catalog", "ingest", f"{store.uri}/incoming/manifest.parquet", "--store", store.uri, env=env
    )
    assert ingested.returncode == 0, ingested.stderr
    _publish_model(store, seed=0)
    (port,) = free_ports(1)
    airflow = home / "airflow"
    up = _cli(
        "airflow", "up", "--executor", "celery", "--home", str(airflow), "--port", str(port),
        "--heartbeat-timeout", "30", "--wait", "400",
        env=env,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "default-1@" in up.stdout and "gpu-1@" in up.stdout
        yield {"home": airflow, "store": store, "env": env}
    finally:
        down = _cli("airflow", "down", "--home", str(airflow), env=env, timeout=180)
        assert down.returncode == 0, down.stderr
        subprocess.run(["rm", "-rf", str(home)], check=False)


def _api(home: Path) -> Api:
    state = deployment.read_state(home)
    assert state is not None
    return Api(state["url"], deployment.password(home))


def _wait_all(api: Api, bound_s: float = RUN_BOUND_S) -> list[dict[str, Any]]:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        runs = api.runs(DAG)
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(3)
    raise AssertionError(
        f"runs not finished in {bound_s} s: {[(r['dag_run_id'], r['state']) for r in api.runs(DAG)]}"
    )


def _task_instances(api: Api, run_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"])


def _summary(store: S3Store, run_id: str) -> dict[str, Any]:
    return dict(json.loads(store.get(layout.run_record_key(DAG, run_id, "summary.json"))))


def test_celery_cluster_routes_render_to_default_and_embed_to_gpu(cluster: dict[str, Any]) -> None:
    home, store, env = cluster["home"], cluster["store"], cluster["env"]
    api = _api(home)
    deadline = time.monotonic() + 180
    while DAG not in {d["dag_id"] for d in api.get("/api/v2/dags")["dags"]} and time.monotonic() < deadline:
        time.sleep(2)
    assert api.client.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False}).status_code == 200
    api.trigger(DAG, {"assets_per_batch": 1})
    runs = _wait_all(api)
    assert {r["state"] for r in runs} == {"success"}, runs

    ran: dict[str, set[tuple[str, str]]] = {"render": set(), "embed": set()}
    for run in runs:
        for ti in _task_instances(api, run["dag_run_id"]):
            if ti["task_id"] in ran and ti["state"] == "success":
                ran[ti["task_id"]].add((ti["hostname"].split("@")[0], ti["queue"]))
    assert ran["render"] == {("default-1", settings.DEFAULT_QUEUE)}, ran
    assert ran["embed"] == {("gpu-1", settings.GPU_QUEUE)}, ran
    published = [s for s in (_summary(store, r["dag_run_id"]) for r in runs) if s["index"]["published"]]
    assert [s["index"]["version"] for s in published] == [1]  # once, whichever run did the work

    # The embed task's log, read through the api-server from the worker's log folder.
    run_id = next(r["dag_run_id"] for r in runs if _summary(store, r["dag_run_id"])["index"]["published"])
    resp = api.client.get(
        f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/embed/logs/1",
        params={"map_index": 0, "full_content": True},
        headers={"Accept": "text/plain"},
    )
    assert resp.status_code == 200 and "embed" in resp.text, resp.text[:2000]

    # The gpu worker said once, in its own log, that it embeds on the CPU (no CUDA here).
    gpu_log = (home / "logs" / "worker gpu-1.log").read_text(errors="replace")
    assert gpu_log.count("gpu worker: ") == 1, gpu_log[-3000:]

    status = _cli("airflow", "status", "--home", str(home), "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["running"] and not report["unhealthy"], report
    assert {w["queue"] for w in report["workers"].values()} == {settings.DEFAULT_QUEUE, settings.GPU_QUEUE}
    assert all(w["ready"] for w in report["workers"].values())


def test_a_gpu_worker_killed_mid_embed_is_replaced_and_the_night_publishes_once(
    cluster: dict[str, Any],
) -> None:
    home, store, env = cluster["home"], cluster["store"], cluster["env"]
    api = _api(home)
    _publish_model(store, seed=1)  # a new CURRENT model: every shard is embedded again
    run_id = api.trigger(DAG, {"assets_per_batch": 1})
    state = deployment.read_state(home)
    assert state is not None
    gpu = state["components"]["worker gpu-1"]
    deadline = time.monotonic() + RUN_BOUND_S
    while time.monotonic() < deadline:
        tis = _task_instances(api, run_id)
        if any(t["task_id"] == "embed" and t["state"] == "running" for t in tis):
            break
        assert api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"] == "running"
        time.sleep(0.3)
    else:
        raise AssertionError("no embed task started")
    # A lost host: the worker and everything below it (the task has a process group of its own).
    victims = deployment.descendants(int(gpu["pid"])) | {int(gpu["pid"])}
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    added = _cli("airflow", "worker", "--home", str(home), "--queue", settings.GPU_QUEUE, env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "gpu-2" in added.stdout

    runs = _wait_all(api)
    assert {r["state"] for r in runs} == {"success"}, runs
    summary = _summary(store, run_id)
    assert summary["ok"] and summary["index"]["published"] and summary["index"]["version"] == 2
    embeds = [t for t in _task_instances(api, run_id) if t["task_id"] == "embed"]
    assert all(t["state"] == "success" for t in embeds)
    retried = [t for t in embeds if t["try_number"] > 1]
    assert retried and all(t["hostname"].startswith("gpu-2@") for t in retried), embeds
    versions = {
        int(info.key.split("/")[2].lstrip("v"))
        for info in store.list(layout.index_prefix(settings.index_name()))
        if info.key.endswith("/manifest.json") and info.key.split("/")[2].startswith("v")
    }
    assert versions == {1, 2}, versions
    report = deployment.status(home)
    assert report["workers"]["worker gpu-1"]["state"] == "stopped"
    assert report["workers"]["worker gpu-2"]["ready"]
