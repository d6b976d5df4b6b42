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
from glassfinder.index import versions
from glassfinder.ops import deployment
from glassfinder.store import LocalStore, S3Store
from glassfinder.store.seaweed import SeaweedServer, free_ports
from glassfinder.store.shards import read_shard
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
def cluster(seaweed: SeaweedServer, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
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
        "--heartbeat-timeout", "30", "--retry-delay", "5", "--wait", "400", "--no-schedules",
        env=env,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "default-1@" in up.stdout and "gpu-1@" in up.stdout
        yield {"home": airflow, "store": store, "env": env}
    finally:
        down = _cli("airflow", "down", "--home", str(airflow), env=env, timeout=180)
        assert down.returncode == 0, down.stderr
        if request.session.testsfailed:  # the components' and tasks' logs, for the failure
            print(f"cluster logs kept in {airflow / 'logs'}")
        else:
            subprocess.run(["rm", "-rf", str(home)], check=False)


def _api(home: Path) -> Api:
    state = deployment.read_state(home)
    assert state is not None
    return Api(state["url"], deployment.password(home))


def _unpaused(api: Api) -> None:
    """Wait for the dag-processor to have parsed the DAG, then unpause it (no schedule runs it:
    the cluster is up with --no-schedules, so only the test's own runs start)."""
    deadline = time.monotonic() + 180
    while DAG not in {d["dag_id"] for d in api.get("/api/v2/dags")["dags"]}:
        assert time.monotonic() < deadline, f"{DAG} not parsed within 180 s"
        time.sleep(2)
    assert api.client.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False}).status_code == 200


def _wait_run(api: Api, run_id: str, bound_s: float = RUN_BOUND_S) -> str:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        state = str(api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"])
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    tis = [(t["task_id"], t["map_index"], t["try_number"], t["state"]) for t in _task_instances(api, run_id)]
    raise AssertionError(f"{run_id} not finished in {bound_s} s: {tis}")


def _task_instances(api: Api, run_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"])


def _summary(store: S3Store, run_id: str) -> dict[str, Any]:
    return dict(json.loads(store.get(layout.run_record_key(DAG, run_id, "summary.json"))))


def test_celery_cluster_routes_render_to_default_and_embed_to_gpu(cluster: dict[str, Any]) -> None:
    home, store, env = cluster["home"], cluster["store"], cluster["env"]
    api = _api(home)
    _unpaused(api)
    before = set(versions.list_versions(store, settings.index_name()))
    run_id = api.trigger(DAG, {"assets_per_batch": 1})
    assert _wait_run(api, run_id) == "success", _task_instances(api, run_id)
    assert [r["dag_run_id"] for r in api.runs(DAG)] == [run_id]  # no scheduled run beside it

    ran: dict[str, set[tuple[str, str]]] = {"render": set(), "embed": set()}
    for ti in _task_instances(api, run_id):
        if ti["task_id"] in ran:
            assert ti["state"] == "success", ti
            ran[ti["task_id"]].add((ti["hostname"].split("@")[0], ti["queue"]))
    assert ran["render"] == {("default-1", settings.DEFAULT_QUEUE)}, ran
    assert ran["embed"] == {("gpu-1", settings.GPU_QUEUE)}, ran
    summary = _summary(store, run_id)
    assert summary["index"]["published"], summary
    version = summary["index"]["version"]
    assert set(versions.list_versions(store, settings.index_name())) - before == {version}

    # The embed task's log, read through the api-server from the worker's log folder: the
    # line the task itself logs, with the device it embedded on.
    logged = api.get(
        f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/embed/logs/1", map_index=0, full_content=True
    )
    events = [str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in logged["content"]]
    assert any("feature shards written" in e and "on cpu" in e for e in events), events[-20:]

    # The gpu worker said once, in its own log, that it embeds on the CPU (no CUDA here).
    gpu_log = (home / "logs" / "worker gpu-1.log").read_text(errors="replace")
    assert gpu_log.count("gpu worker: ") == 1, gpu_log[-3000:]

    status = _cli("airflow", "status", "--home", str(home), "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["running"] and not report["unhealthy"], report
    assert {w["queue"] for w in report["workers"].values()} == {settings.DEFAULT_QUEUE, settings.GPU_QUEUE}
    assert all(w["ready"] for w in report["workers"].values())


def _kill_mid_embed(api: Api, run_id: str, worker_pid: int) -> None:
    """SIGKILL the worker and everything below it while it runs an embed task, as a lost host.

    The task runs in a child of the worker (Airflow's supervisor forks it), so a child seen in
    /proc, polled cheaply, is a task in progress; the REST API then confirms it is an embed task
    running on that worker, and the child must still be alive when the signal goes.
    """
    deadline = time.monotonic() + RUN_BOUND_S
    while time.monotonic() < deadline:
        assert api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"] in ("queued", "running")
        children = deployment.descendants(worker_pid)
        if not children:
            time.sleep(0.1)
            continue
        running = [
            t
            for t in _task_instances(api, run_id)
            if t["task_id"] == "embed" and t["state"] == "running" and t["hostname"].startswith("gpu-1@")
        ]
        alive = children & deployment.descendants(worker_pid)
        if running and alive:
            for pid in alive | {worker_pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)
    raise AssertionError("the gpu worker ran no embed task")


def test_a_gpu_worker_killed_mid_embed_is_replaced_and_the_night_publishes_once(
    cluster: dict[str, Any],
) -> None:
    home, store, env = cluster["home"], cluster["store"], cluster["env"]
    api = _api(home)
    _unpaused(api)
    index = settings.index_name()
    before = versions.list_versions(store, index)
    model_sha = _publish_model(store, seed=1)  # a new CURRENT model: every shard is embedded again
    # Both models are untrained: the gate must not weigh one against the other here.
    run_id = api.trigger(DAG, {"assets_per_batch": 1, "max_top1_drop": 1.0, "max_top10_drop": 1.0})
    state = deployment.read_state(home)
    assert state is not None
    _kill_mid_embed(api, run_id, int(state["components"]["worker gpu-1"]["pid"]))
    added = _cli("airflow", "worker", "--home", str(home), "--queue", settings.GPU_QUEUE, env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "gpu-2" in added.stdout

    ended = _wait_run(api, run_id)
    brief = [
        (t["task_id"], t["map_index"], t["try_number"], t["state"], t["hostname"])
        for t in _task_instances(api, run_id)
    ]
    assert ended == "success", brief
    summary = _summary(store, run_id)
    assert summary["ok"] and summary["index"]["published"], summary
    embeds = [t for t in _task_instances(api, run_id) if t["task_id"] == "embed"]
    assert all(t["state"] == "success" for t in embeds), embeds
    retried = [t for t in embeds if t["try_number"] > 1]
    assert retried and all(t["hostname"].startswith("gpu-2@") for t in retried), embeds
    for t in retried:  # the first try was the one on the lost worker
        tries = api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/embed/{t['map_index']}/tries")
        first = next(x for x in tries["task_instances"] if x["try_number"] == 1)
        assert first["hostname"].startswith("gpu-1@") and first["state"] != "success", first

    # One new index version, complete, and CURRENT verified from its pointer down; every feature
    # shard of the new model reads whole (none half-written by the killed task).
    after = versions.list_versions(store, index)
    assert set(after) - set(before) == {summary["index"]["version"]} and all(after.values()), after
    current, _, _, _ = versions.fetch_current_verified(store, index)
    assert versions.current_version(current, "CURRENT") == summary["index"]["version"]
    shards = [
        i.key
        for i in store.list("features/")
        if i.key.endswith(".arrow") and model_sha.startswith(i.key.split("/")[1])
    ]
    assert len(shards) >= 2, shards  # the two products' catalogue views at least
    for key in shards:
        assert read_shard(store, key, "feature").num_rows >= 1, key

    report = deployment.status(home)
    assert report["workers"]["worker gpu-1"]["state"] == "stopped"
    assert report["workers"]["worker gpu-2"]["ready"]
