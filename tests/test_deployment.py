"""A real single-machine deployment, driven as a data engineer would: not dag.test().

`glassfinder airflow up` starts api-server, scheduler, dag-processor and triggerer on 127.0.0.1
with the LocalExecutor on PostgreSQL (started here on a free loopback port), the plugin and its
listener loaded. Everything is driven through the REST API: training data with training, the
re-index the model Asset starts, onboarding one product, retraining with unchanged render
settings, and a run that fails. After every run the scheduler must still be alive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from glassfinder import layout
from glassfinder.ops import deployment
from glassfinder.store import LocalStore
from glassfinder.store.seaweed import free_ports
from tests.pg_server import PostgresServer

CATALOG_SPEC = {"image_px": 96, "views_per_asset": 2, "fit_jitter": 0.5}
QUERY_SPEC = {"image_px": 96, "views_per_asset": 1, "face_first": 900, "face_count": 100, "seed": 1}
TRAINING = {
    "image_px": 96,
    "views_per_asset": 4,
    "seed": 7,
    "spec_overrides": {"split_fractions": [0.7, 0.3, 0.0]},
    "train": True,
    "epochs": 1,
    "batch_size": 8,
    "assets_per_batch": 6,
    "render_workers": 2,
    "limit_products": 6,  # the same products when retraining after onboarding
}
MODEL = "deploytest"
RUN_BOUND_S = 420  # one run, on a loaded 2-core CI machine
#: Every DAG, for real, one after another: about 5 minutes on 2 idle cores, far more when loaded.
pytestmark = pytest.mark.timeout(1800)
DAGS = ("glassfinder_training_data", "glassfinder_catalog_reindex", "glassfinder_product_onboarding")


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Api:
    """The Airflow REST API v2 with a token for the deployment's admin."""

    def __init__(self, url: str, password: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        resp = self.client.post("/auth/token", json={"username": deployment.USER, "password": password})
        assert resp.status_code in (200, 201), resp.text
        self.client.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        resp = self.client.get(path, params=params)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        resp = self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns", order_by="run_after", limit=100)["dag_runs"])

    def wait(self, dag_id: str, run_id: str, home: Path) -> str:
        deadline = time.monotonic() + RUN_BOUND_S
        while time.monotonic() < deadline:
            state = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return str(state)
            _assert_scheduler_alive(home)
            time.sleep(2)
        tasks = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        raise AssertionError(
            f"{dag_id} {run_id} did not end within {RUN_BOUND_S} s: "
            f"{[(t['task_id'], t['map_index'], t['state']) for t in tasks]}"
        )


def _assert_scheduler_alive(home: Path) -> None:
    report = deployment.status(home)
    assert report["components"]["scheduler"] == "running", _log_tail(home, "scheduler")
    assert "scheduler" not in report["unhealthy"], report["health"]


def _log_tail(home: Path, component: str) -> str:
    return (home / "logs" / f"{component}.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("deploy")
    store, home = root / "store", root / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "GLASSFINDER_"))}
    env |= {
        "GLASSFINDER_CATALOG_SPEC": json.dumps(CATALOG_SPEC),
        "GLASSFINDER_QUERY_SPEC": json.dumps(QUERY_SPEC),
        "GLASSFINDER_STORE_URI": str(store),
        # A model name with no packaged default: the first runs wait for the model this test
        # trains, and the re-index it starts publishes v1 with it.
        "GLASSFINDER_MODEL_NAME": MODEL,
    }
    # The shop's export, then the catalogue (README's start-up order: export -> ingest -> train).
    made = _cli("catalog", "generate", "--count", "7", "--seed", "5", "--out", str(root / "shop"), env=env)
    assert made.returncode == 0, made.stderr
    shop = LocalStore(root / "shop")
    rows = pq.read_table(root / "shop" / "manifest.parquet")
    shutil.copytree(root / "shop" / "assets", store / "incoming" / "assets")
    pq.write_table(rows.slice(0, 6), store / "incoming" / "manifest.parquet")
    ingested = _cli(
        "catalog", "ingest", str(store / "incoming" / "manifest.parquet"), "--store", str(store), env=env
    )
    assert ingested.returncode == 0, ingested.stderr
    (port,) = free_ports(1)
    up = _cli("airflow", "up", "--home", str(home), "--port", str(port), "--db-url", postgres.url, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}/" in up.stdout and "log in as admin" in up.stdout
        yield {
            "home": home,
            "store": LocalStore(store),
            "store_root": store,
            "shop": shop,
            "rows": rows,
            "env": env,
            "up": up.stdout,
        }
    finally:
        down = _cli("airflow", "down", "--home", str(home), env=env, timeout=120)
        assert down.returncode == 0, down.stderr


def _summary(store: LocalStore, dag_id: str, run_id: str) -> dict[str, Any]:
    return dict(json.loads(store.get(layout.run_record_key(dag_id, run_id, "summary.json"))))


def test_real_deployment_runs_every_dag_and_survives_every_run_end(deployed: dict[str, Any]) -> None:
    home, store = deployed["home"], deployed["store"]
    state = deployment.read_state(home)
    assert state is not None and set(state["components"]) == set(deployment.COMPONENTS)
    api = Api(state["url"], deployment.password(home))

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dags = {d["dag_id"] for d in api.get("/api/v2/dags")["dags"]}
        if set(DAGS) <= dags:
            break
        time.sleep(2)
    assert set(DAGS) <= dags, _log_tail(home, "dag-processor")
    assert api.get("/api/v2/pools/gpu")["slots"] == 1  # created by `up`
    assert api.get("/api/v2/importErrors")["total_entries"] == 0
    plugins = {p["name"] for p in api.get("/api/v2/plugins")["plugins"]}
    assert "glassfinder" in plugins
    for dag_id in DAGS:
        resp = api.client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        assert resp.status_code == 200, resp.text

    # Training data with training: rendered by two worker processes; the model is announced.
    train_id = api.trigger("glassfinder_training_data", TRAINING)
    assert api.wait("glassfinder_training_data", train_id, home) == "success"
    trained = _summary(store, "glassfinder_training_data", train_id)
    assert trained["ok"] and trained["rendered"] == 6 and trained["render_worker_processes"] == 2
    model_sha = trained["model"]["model_sha"]
    metrics = json.loads(
        store.get(layout.run_record_key("glassfinder_training_data", train_id, "metrics.json"))
    )
    assert metrics["state"] == "success" and metrics["tasks_by_state"].get("success", 0) >= 4

    # ... which starts the re-index (an Asset-triggered run) that publishes v1 with that model.
    deadline = time.monotonic() + 120
    reindex: list[dict[str, Any]] = []
    while not reindex and time.monotonic() < deadline:
        reindex = [r for r in api.runs("glassfinder_catalog_reindex") if r["run_type"] == "asset_triggered"]
        time.sleep(2)
    assert reindex, "the model Asset did not start the re-index"
    reindex_id = reindex[0]["dag_run_id"]
    assert api.wait("glassfinder_catalog_reindex", reindex_id, home) == "success"
    night = _summary(store, "glassfinder_catalog_reindex", reindex_id)
    assert night["index"]["published"] and night["index"]["version"] == 1, night["index"]
    assert night["catalogue"]["products"] == 6 and night["embedded"] == 6
    v1 = json.loads(store.get(layout.index_version_prefix("catalog", 1) + "manifest.json"))
    assert v1["model_sha"] == model_sha  # the model this run trained, announced by its Asset

    # Onboarding one product from the shop's folder.
    new = deployed["rows"].slice(6, 1).to_pylist()[0]
    store.put(f"new/{new['asset_uri']}", deployed["shop"].get(new["asset_uri"]))
    product = {k: new[k] for k in ("product_id", "kind", "lens_style", "lens_rgba")}
    onboard_id = api.trigger(
        "glassfinder_product_onboarding", {"products": [{**product, "asset_uri": f"new/{new['asset_uri']}"}]}
    )
    assert api.wait("glassfinder_product_onboarding", onboard_id, home) == "success"
    onboarded = _summary(store, "glassfinder_product_onboarding", onboard_id)
    assert onboarded["index"]["published"] and onboarded["index"]["version"] == 2
    assert onboarded["catalogue"]["changed"] == [new["product_id"]]

    # The shop's next export lists the new product too: the nightly keeps it (an export is the
    # whole catalogue) and the watcher's catch-up finds nothing to change.
    pq.write_table(deployed["rows"], deployed["store_root"] / "incoming" / "manifest.parquet")

    # Retraining with unchanged render settings: nothing to render, training still runs. (The
    # same training config too, so the re-index it starts finds the same model: "unchanged".)
    retrain_id = api.trigger("glassfinder_training_data", TRAINING)
    assert api.wait("glassfinder_training_data", retrain_id, home) == "success"
    retrained = _summary(store, "glassfinder_training_data", retrain_id)
    assert (
        retrained["ok"]
        and retrained["rendered"] == 0
        and retrained["skipped_stages"] == {"render": "nothing to do"}
    )
    assert retrained["model"]["model_sha"]  # trained and published (same config: same weights)

    # A run that fails (a delta manifest that does not exist) fails at once, and says so in the
    # form's own words; the scheduler lives on.
    failing_id = api.trigger("glassfinder_product_onboarding", {"manifest_delta": str(home / "missing.csv")})
    assert api.wait("glassfinder_product_onboarding", failing_id, home) == "failed"
    failed = _summary(store, "glassfinder_product_onboarding", failing_id)
    assert not failed["ok"] and failed["failed_stages"][:1] == ["catalogue"]
    tis = api.get(f"/api/v2/dags/glassfinder_product_onboarding/dagRuns/{failing_id}/taskInstances")
    (merge,) = [t for t in tis["task_instances"] if t["task_id"] == "merge_products"]
    assert merge["state"] == "failed" and merge["try_number"] == 1  # no retries on a bad param

    # Every other run (today's nightly slot on unpausing, the export watcher's onboarding, the
    # re-index the second model started) ends in success, and the scheduler is alive.
    for dag_id in DAGS:
        for run in api.runs(dag_id):
            if run["dag_run_id"] != failing_id:
                assert api.wait(dag_id, run["dag_run_id"], home) == "success", (dag_id, run)
    _assert_scheduler_alive(home)
    assert "UNEXPECTED COMMIT" not in _log_tail(home, "scheduler")

    # The plugin's page (behind the Airflow login) lists both versions.
    assert api.client.get("/glassfinder/api/indexes/catalog/versions").status_code == 200
    versions = api.get("/glassfinder/api/indexes/catalog/versions")
    listed = {v["version"] for v in (versions["versions"] if isinstance(versions, dict) else versions)}
    assert {1, 2} <= listed
    page = api.client.get("/glassfinder/")
    assert page.status_code == 200 and "v2" in page.text
    assert httpx.get(f"{state['url']}/glassfinder/api/indexes/catalog/versions").status_code in (401, 403)


def test_status_names_the_running_components_and_up_refuses_a_second_start(deployed: dict[str, Any]) -> None:
    home, env = deployed["home"], deployed["env"]
    status = _cli("airflow", "status", "--home", str(home), "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["running"] and set(report["components"].values()) == {"running"}
    again = _cli("airflow", "up", "--home", str(home), env=env)
    assert again.returncode == 1 and "already running" in again.stderr
