"""The Airflow DAGs, run for real with dag.test() against SeaweedFS on a tiny catalogue.

Nightly re-index (twice: the second night renders nothing and publishes nothing), onboarding
(inline products, and catching up with a changed export), training data (render, train,
announce the model), a corrupt asset quarantined in a successful run, and the DagBag's health.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from glassfinder import layout
from glassfinder.catalog.generate import generate_catalog
from glassfinder.embed.model import ModelConfig, build_model
from glassfinder.embed.registry import current_sha, publish_model
from glassfinder.index.versions import list_versions, read_current, read_ids, read_manifest
from glassfinder.store import LocalStore, S3Store
from glassfinder.store.base import ObjectStore

DAG_IDS = {"glassfinder_catalog_reindex", "glassfinder_product_onboarding", "glassfinder_training_data"}
CATALOG_SPEC = {"image_px": 96, "views_per_asset": 3, "fit_jitter": 0.5}
QUERY_SPEC = {"image_px": 96, "views_per_asset": 1, "face_first": 900, "face_count": 100, "seed": 1}
SOURCE_KEY = "incoming/manifest.json"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[dict[str, Any]]]:
    """7 generated products (the first 5 are the shop's first export) and their assets."""
    root = tmp_path_factory.mktemp("sample")
    store = LocalStore(root)
    generate_catalog(store, 7, seed=3, workers=1)
    return store, pq.read_table(root / "manifest.parquet").to_pylist()


def _export(store: ObjectStore, sample: tuple[LocalStore, list[dict[str, Any]]], rows: list[dict]) -> None:
    """Upload rows' assets and write them as the shop's export (JSON, minimal columns)."""
    src, _ = sample
    for r in rows:
        if r.get("asset_uri", "").startswith("assets/") and not r.get("_corrupt"):
            store.put(f"incoming/{r['asset_uri']}", src.get(r["asset_uri"]))
    manifest = [
        {k: r[k] for k in ("product_id", "asset_uri", "kind", "lens_style", "lens_rgba")} for r in rows
    ]
    store.put(SOURCE_KEY, json.dumps(manifest).encode())


def _conf(store: ObjectStore, **extra: Any) -> dict[str, Any]:
    return {
        "store": store.uri,
        "source_manifest": f"{store.uri}/{SOURCE_KEY}",
        "catalog_spec": json.dumps(CATALOG_SPEC),
        "query_spec": json.dumps(QUERY_SPEC),
        "assets_per_batch": 3,
        "render_workers": 2,
        **extra,
    }


@pytest.fixture(scope="module")
def bag(airflow_home: Path) -> Any:
    from glassfinder import airflow_local

    return airflow_local.load_dags()


def _run(bag: Any, dag_id: str, conf: dict[str, Any]) -> Any:
    from glassfinder import airflow_local

    result = airflow_local.run_dag(dag_id, conf)
    assert result.state == "success", (result.task_states, result.summary)
    assert result.summary is not None and result.summary["ok"], result.summary
    return result


def test_dagbag_has_the_three_dags_and_no_import_errors_or_warnings(
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from glassfinder import airflow_local, settings

    # Parsing must not touch the store: point it at a server that does not exist.
    monkeypatch.setenv("GLASSFINDER_STORE_URI", "s3://nowhere-at-all/gf")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    bag = DagBag(dag_folder=str(airflow_local.DAGS_DIR), known_pools=set(airflow_local.POOLS))
    assert bag.import_errors == {}
    assert not bag.dag_warnings
    assert set(bag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert dag.doc_md and dag.max_active_runs == 1 and "glassfinder" in dag.tags
        for name, param in dag.params.items():
            assert param.schema.get("title") and param.description, name
        for t in dag.tasks:
            assert t.retries >= 1 and t.retry_exponential_backoff, t.task_id
            # The first pause is the deployment's (core.default_task_retry_delay), not the DAG's.
            assert t.retry_delay.total_seconds() == settings.DEFAULT_TASK_RETRY_DELAY_S, t.task_id
        gpu = {t.task_id for t in dag.tasks if t.queue == settings.GPU_QUEUE}
        assert gpu == {t.task_id for t in dag.tasks if t.pool == settings.GPU_POOL}
        assert gpu == ({"train"} if dag_id == "glassfinder_training_data" else {"embed"})
        # Everything else (rendering above all) on the CPU workers' queue: routing is declared.
        assert {t.queue for t in dag.tasks if t.task_id not in gpu} == {settings.DEFAULT_QUEUE}
        mapped = {t.task_id for t in dag.tasks if t.is_mapped}
        assert mapped == ({"render"} if dag_id == "glassfinder_training_data" else {"render", "embed"})
    nightly = bag.get_dag("glassfinder_catalog_reindex")
    assert nightly.timetable.timetable.expression == "0 2 * * *"
    assert [a.name for a in nightly.timetable.asset_condition.objects] == ["glassfinder_model_glasses"]
    onboarding = bag.get_dag("glassfinder_product_onboarding")
    (source,) = onboarding.timetable.asset_condition.objects
    assert source.name == "glassfinder_catalog_source"
    assert [w.trigger.source_uri for w in source.watchers] == [
        "s3://nowhere-at-all/gf/incoming/manifest.parquet"
    ]
    train = bag.get_dag("glassfinder_training_data").get_task("train")
    assert [a.name for a in train.outlets] == ["glassfinder_model_glasses"]


def test_params_are_validated_before_anything_runs(bag: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = bag.get_dag("glassfinder_catalog_reindex")
    with pytest.raises(ParamValidationError, match="assets_per_batch"):
        dag.test(run_conf={"assets_per_batch": 0})
    with pytest.raises(ParamValidationError, match="max_batches"):
        dag.test(run_conf={"max_batches": 5000})  # above Airflow's max_map_length
    with pytest.raises(ParamValidationError, match="model"):
        dag.test(run_conf={"model": "Not A Name"})


def test_nightly_reindex_quiet_night_onboarding_and_catching_up(bag: Any, s3_env: S3Store, sample) -> None:
    store = s3_env
    _, rows = sample
    corrupt = {
        "product_id": "broken-1",
        "asset_uri": "assets/broken-1.glb",
        "kind": "optical",
        "lens_style": "clear",
        "lens_rgba": None,
        "_corrupt": True,
    }
    store.put("incoming/assets/broken-1.glb", b"glTF\x02\x00\x00\x00 this is not a mesh")
    _export(store, sample, [*rows[:5], corrupt])
    publish_model(
        store, "glasses", build_model(ModelConfig(), seed=0).eval(), {"note": "untrained, for tests"}
    )

    # Night 1: everything is new; the corrupt asset is quarantined and the run succeeds.
    first = _run(bag, "glassfinder_catalog_reindex", _conf(store))
    s = first.summary
    assert s["catalogue"]["products"] == 5 and s["assets"] == 5 and s["reused"] == 0
    assert s["rendered"] == 10 and s["views_rendered"] == 5 * 3 + 5 * 1 and s["embedded"] == 5
    assert s["packshots"] == 5 and s["packshot_seconds"] > 0  # front and three-quarter of each asset
    assert [(q["stage"], q["product_id"], q["reason"]) for q in s["quarantine"]] == [
        ("ingest", "broken-1", "unparseable")
    ]
    assert s["index"]["published"] and s["index"]["version"] == 1 and s["index"]["evaluation"]["queries"] == 5
    assert list_versions(store, "catalog") == {1: True}
    ids = read_ids(store, "catalog", 1)
    assert sorted(set(ids.column("product_id").to_pylist())) == sorted(r["product_id"] for r in rows[:5])
    assert ids.num_rows == 15
    metrics = json.loads(store.get(layout.run_record_key(first.dag_id, first.run_id, "metrics.json")))
    assert metrics["state"] == "success" and metrics["tasks_by_state"]["success"] == len(first.task_states)

    # Night 2: nothing changed: nothing rendered or embedded, no duplicate version.
    second = _run(bag, "glassfinder_catalog_reindex", _conf(store))
    s = second.summary
    assert (s["rendered"], s["embedded"], s["reused"], s["packshots"]) == (0, 0, 5, 0)
    assert s["index"] == {**s["index"], "published": False, "reason": "unchanged", "version": 1}
    assert second.task_states["render"] == "skipped" and second.task_states["embed"] == "skipped"
    assert list_versions(store, "catalog") == {1: True}

    # Onboarding one new product, given inline: a child of v1 with exactly that product added.
    new = rows[5]
    store.put(f"new/{new['asset_uri']}", sample[0].get(new["asset_uri"]))
    product = {
        "product_id": new["product_id"],
        "asset_uri": f"new/{new['asset_uri']}",
        "kind": new["kind"],
        "lens_style": new["lens_style"],
        "lens_rgba": new["lens_rgba"],
    }
    onboarded = _run(bag, "glassfinder_product_onboarding", _conf(store, products=[product]))
    s = onboarded.summary
    assert s["catalogue"]["changed"] == [new["product_id"]] and s["catalogue"]["products"] == 6
    assert (s["assets"], s["rendered"], s["embedded"], s["packshots"]) == (1, 2, 1, 1)
    assert s["index"]["published"] and s["index"]["kind"] == "incremental" and s["index"]["parent"] == 1
    v2 = read_ids(store, "catalog", 2)
    before = set(zip(ids.column("view_key").to_pylist(), ids.column("product_id").to_pylist(), strict=True))
    after = set(zip(v2.column("view_key").to_pylist(), v2.column("product_id").to_pylist(), strict=True))
    assert (
        before < after and {p for _, p in after - before} == {new["product_id"]} and len(after - before) == 3
    )
    current, _ = read_current(store, "catalog")
    assert current is not None and current["version"] == 2

    # The shop's next export lists the new product too: the nightly finds nothing to do.
    _export(store, sample, rows[:6])
    third = _run(bag, "glassfinder_catalog_reindex", _conf(store))
    assert (third.summary["rendered"], third.summary["embedded"]) == (0, 0)
    assert third.summary["index"]["reason"] == "unchanged" and third.summary["index"]["version"] == 2

    # An export with one more product, run as the Asset event would (no conf products): caught up.
    _export(store, sample, rows[:7])
    caught_up = _run(bag, "glassfinder_product_onboarding", _conf(store))
    s = caught_up.summary
    assert s["catalogue"]["changed"] == [rows[6]["product_id"]] and s["index"]["version"] == 3
    manifest = read_manifest(store, "catalog", 3)
    assert manifest["counts"]["products"] == 7 and manifest["parent"] == 2
    assert manifest["model_sha"] == current_sha(store, "glasses")[0]


def test_training_data_renders_trains_and_announces_the_model(bag: Any, s3_env: S3Store, sample) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from glassfinder.catalog.ingest import ingest_manifest

    store = s3_env
    _, rows = sample
    _export(store, sample, rows[:6])
    ingest_manifest(f"{store.uri}/{SOURCE_KEY}", dest=store)
    conf = {
        "store": store.uri,
        "image_px": 96,
        "views_per_asset": 4,
        "yaw_deg": [-20, 20],
        "lens_palette": [["tinted", [0.1, 0.1, 0.1, 0.8]]],
        "seed": 7,
        "spec_overrides": {"split_fractions": [0.7, 0.3, 0.0]},
        "train": True,
        "epochs": 1,
        "batch_size": 8,
        "assets_per_batch": 4,
    }
    latest_model_event = (
        select(AssetEvent.id)
        .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        .where(AssetModel.name == "glassfinder_model_glasses")
        .order_by(AssetEvent.id.desc())
        .limit(1)
    )
    with create_session() as session:
        events_before = session.scalar(latest_model_event)
    first = _run(bag, "glassfinder_training_data", conf)
    s = first.summary
    assert (s["assets"], s["rendered"], s["views_rendered"]) == (6, 6, 24)
    assert s["model"]["model_sha"] == current_sha(store, "glasses")[0]
    (spec_hash,) = {k.key.split("/")[1] for k in store.list("renders/") if k.key.endswith(".parquet")}
    spec = json.loads(store.get(f"renders/{spec_hash}/spec.json"))
    assert (
        spec["yaw_deg"] == [-20, 20]
        and spec["seed"] == 7
        and spec["lens_palette"] == [["tinted", [0.1, 0.1, 0.1, 0.8]]]
    )
    with create_session() as session:
        latest = session.scalar(latest_model_event)
    assert latest is not None and latest != events_before  # the re-index is told about the model

    again = _run(bag, "glassfinder_training_data", {**conf, "train": False})
    assert (again.summary["rendered"], again.summary["reused"]) == (0, 6)
    assert again.task_states["train"] == "skipped" and again.summary["model"] is None
    assert again.summary["skipped_stages"] == {"render": "nothing to do", "train": "not requested"}

    # Retraining with unchanged render settings: nothing to render, and training still runs.
    retrain = _run(bag, "glassfinder_training_data", {**conf, "train_seed": 1})
    assert retrain.task_states["render"] == "skipped" and retrain.task_states["train"] == "success"
    assert retrain.summary["ok"] and retrain.summary["skipped_stages"] == {"render": "nothing to do"}
    assert retrain.summary["model"]["model_sha"] == current_sha(store, "glasses")[0]


def test_a_night_before_any_model_waits_for_one_instead_of_failing(bag: Any, s3_env: S3Store, sample) -> None:
    from glassfinder import airflow_local

    store = s3_env
    _export(store, sample, sample[1][:2])
    result = airflow_local.run_dag("glassfinder_catalog_reindex", _conf(store, model="nothing-yet"))
    assert result.state == "success"
    assert result.task_states["plan"] == "success" and result.task_states["render"] == "skipped"
    s = result.summary
    assert s["ok"] is True and s["failed_stages"] == []
    assert s["skipped_stages"] == {"render": "nothing to do", "embed": "nothing to do"}
    assert s["index"]["published"] is False and s["index"]["reason"] == "no model yet"
    assert "glassfinder_training_data" in s["index"]["message"]
    metrics = json.loads(store.get(layout.run_record_key(result.dag_id, result.run_id, "metrics.json")))
    assert metrics["state"] == "success"
    assert list_versions(store, "catalog") == {}


def test_an_installed_package_carries_the_dags_and_plugins_it_deploys(tmp_path: Path) -> None:
    """A worker on another host installs the package, not the checkout: the wheel must hold the
    same DAG and plugin files the checkout has, where `airflow up` and the workers look for them."""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("glassfinder-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for folder in ("dags", "plugins"):
            files = sorted((repo / folder).glob("*.py"))
            assert files
            for path in files:
                assert zf.read(f"glassfinder/{folder}/{path.name}") == path.read_bytes(), path
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    # -S: no .pth files, so the editable install's finder does not answer for `glassfinder`;
    # its dependencies still come from this environment's site-packages.
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "from glassfinder import airflow_local as a; print(a.DAGS_DIR, a.PLUGINS_DIR)",
        ],
        env={"PYTHONPATH": f"{target}:{site_packages}", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # not the checkout: `-c` puts the working directory first on the path
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    dags_dir, plugins_dir = (Path(p) for p in probe.stdout.split())
    assert dags_dir == (target / "glassfinder" / "dags").resolve()
    assert sorted(p.name for p in dags_dir.glob("*.py")) == sorted(
        p.name for p in (repo / "dags").glob("*.py")
    )
    assert (plugins_dir / "glassfinder_plugin.py").is_file()
