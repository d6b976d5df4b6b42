"""Rendering a catalogue into image shards: spawn pool, S3 output, skip-existing, quarantine."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassfinder import layout
from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, catalog_asset_key, ingest_manifest
from glassfinder.catalog.manifest import read_manifest_rows, write_manifest
from glassfinder.errors import GlassFinderError, RenderWorkerError, StoreUnavailableError
from glassfinder.layout import render_quarantine_prefix as asset_quarantine_prefix
from glassfinder.layout import render_quarantine_report_key as quarantine_key
from glassfinder.layout import render_spec_key as spec_key
from glassfinder.render.job import render_catalog
from glassfinder.render.spec import RenderSpec, load_spec
from glassfinder.store import LocalStore
from glassfinder.store.seaweed import SeaweedServer
from glassfinder.store.shards import read_shard
from tests.conftest import new_bucket_store
from tests.flaky_proxy import flaky_proxy

SPEC = RenderSpec(image_px=96, views_per_asset=3, face_count=50)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[dict]]:
    root = tmp_path_factory.mktemp("render-cat")
    generate_catalog(LocalStore(root / "sample"), 4, seed=8, workers=1)
    store = LocalStore(root / "pipeline")
    report = ingest_manifest(str(root / "sample" / "manifest.parquet"), dest=store)
    return store, report.accepted


def test_render_catalog_to_s3_skips_existing_and_quarantines_broken(catalog, seaweed: SeaweedServer) -> None:
    store, rows = catalog
    broken = rows[1]
    pristine = store.get(catalog_asset_key(broken["asset_sha256"]))
    store.put(catalog_asset_key(broken["asset_sha256"]), b"bit rot")  # the stored asset went bad
    try:
        out = new_bucket_store(seaweed)
        manifest = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
        first = render_catalog(manifest, SPEC, out, workers=2)
        assert (first.assets, first.rendered, first.skipped, first.views) == (4, 3, 0, 9)
        assert [q["product_id"] for q in first.quarantined] == [broken["product_id"]]
        assert "differs from the manifest's" in first.quarantined[0]["message"]
        assert json.loads(out.get(quarantine_key(SPEC.spec_hash)))[0]["product_id"] == broken["product_id"]
        assert json.loads(out.get(spec_key(SPEC.spec_hash))) == json.loads(SPEC.canonical_json())
        for row in rows:
            key = layout.render_shard_key(SPEC.spec_hash, row["asset_sha256"])
            if row is broken:
                assert not out.exists(key)
                continue
            table = read_shard(out, key, "image")
            assert table.num_rows == 3
            assert set(table.column("product_id").to_pylist()) == {row["product_id"]}
            assert len(set(table.column("split").to_pylist())) == 1  # split by product
            img = Image.open(io.BytesIO(table.column("image")[0].as_py()))
            assert img.size == (96, 96)
            eyes = np.array(table.column("eye_left_xy").to_pylist())
            assert ((eyes > 0) & (eyes < 96)).all()
        again = render_catalog(manifest, SPEC, out, workers=1)
        assert (again.rendered, again.skipped, len(again.quarantined)) == (0, 3, 1)
    finally:
        store.put(catalog_asset_key(broken["asset_sha256"]), pristine)


def test_same_spec_same_shard_bytes_in_another_run(catalog, tmp_path: Path) -> None:
    store, rows = catalog
    manifest = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    render_catalog(manifest, SPEC, a, workers=1, limit=2)
    render_catalog(manifest, SPEC, b, workers=2, limit=2)
    for row in rows[:2]:
        key = layout.render_shard_key(SPEC.spec_hash, row["asset_sha256"])
        images_a = read_shard(a, key, "image", columns=["image"]).column("image").to_pylist()
        images_b = read_shard(b, key, "image", columns=["image"]).column("image").to_pylist()
        assert images_a == images_b


def test_spec_hash_follows_every_knob(tmp_path: Path) -> None:
    base = RenderSpec()
    assert RenderSpec().spec_hash == base.spec_hash
    assert RenderSpec(yaw_deg=(-30.0, 30.0)).spec_hash != base.spec_hash
    assert RenderSpec(seed=1).spec_hash != base.spec_hash
    path = tmp_path / "spec.json"
    path.write_text(base.canonical_json())
    assert load_spec(str(path)) == base
    path.write_text('{"image_px": 128, "yaw": [0, 1]}')
    with pytest.raises(GlassFinderError, match=r"unknown field\(s\) \['yaw'\]"):
        load_spec(str(path))
    with pytest.raises(GlassFinderError, match=r"image_px must be 32\.\.2048, got 8"):
        RenderSpec(image_px=8)


def test_a_worker_that_cannot_start_fails_the_run_instead_of_hanging(
    catalog, tmp_path: Path, monkeypatch
) -> None:
    store, _ = catalog
    monkeypatch.setenv("GLASSFINDER_GL_PLATFORM", "vulkan")  # read by the spawned workers only
    with pytest.raises(RenderWorkerError, match=r"render worker could not start: .*must be one of"):
        render_catalog(f"{store.uri}/{CATALOG_MANIFEST_KEY}", SPEC, LocalStore(tmp_path), workers=2, limit=2)


def _pool_workers(pid: int) -> list[int]:
    """Spawned pool workers of a process (not its resource tracker or other children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def test_a_pool_whose_worker_dies_fails_at_once_instead_of_replacing_it(catalog, tmp_path: Path) -> None:
    store, _ = catalog
    slow = RenderSpec(image_px=256, views_per_asset=40, face_count=50)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            render_catalog(f"{store.uri}/{CATALOG_MANIFEST_KEY}", slow, LocalStore(tmp_path), workers=2)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while len(workers := _pool_workers(os.getpid())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2, "the pool never started two worker processes"
    time.sleep(2)  # let them start rendering
    os.kill(workers[0], signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the render hung after a worker died"
    assert len(errors) == 1 and isinstance(errors[0], RenderWorkerError)
    # Which death the pool reports first is a race (the killed worker's -9, or -15 from a sibling
    # the pool stopped on its way down): what a user relies on is that the job fails at once and
    # says a worker died, with a signal exit code.
    message = str(errors[0])
    assert "render worker process died" in message and ("-9" in message or "-15" in message), message


def test_workers_of_a_killed_render_job_exit_instead_of_lingering(catalog, tmp_path: Path) -> None:
    """A scheduler that kills a render task (SIGKILL, no cleanup) must not leave its spawned
    workers holding memory and a GL context."""
    import subprocess
    import sys

    store, _ = catalog
    script = (
        "import sys; from glassfinder.render.job import render_catalog; "
        "from glassfinder.render.spec import RenderSpec; from glassfinder.store import LocalStore; "
        "render_catalog(sys.argv[1], RenderSpec(image_px=256, views_per_asset=40, face_count=50), "
        "LocalStore(sys.argv[2]), workers=2)"
    )
    job = subprocess.Popen(
        [sys.executable, "-c", script, f"{store.uri}/{CATALOG_MANIFEST_KEY}", str(tmp_path / "out")],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers := _pool_workers(job.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) >= 2, "the job never started two worker processes"
    finally:
        job.kill()
        job.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 20
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    lingering = [w for w in workers if alive(w)]
    for w in lingering:  # do not leave them to the next test either
        os.kill(w, signal.SIGKILL)
    assert not lingering, f"render workers {lingering} outlived their killed job"


def test_one_worker_renders_in_process(catalog, tmp_path: Path) -> None:
    store, _ = catalog
    report = render_catalog(
        f"{store.uri}/{CATALOG_MANIFEST_KEY}", SPEC, LocalStore(tmp_path), workers=1, limit=2
    )
    assert report.rendered == 2 and report.worker_pids == {os.getpid()}
    report = render_catalog(
        f"{store.uri}/{CATALOG_MANIFEST_KEY}", SPEC, LocalStore(tmp_path / "two"), workers=2, limit=2
    )
    # Rendered in the pool, not here. Which of the two workers takes each asset is the pool's
    # choice: on a loaded machine one can take both before the other has started.
    assert report.rendered == 2 and 1 <= len(report.worker_pids) <= 2
    assert os.getpid() not in report.worker_pids


def test_a_store_outage_fails_the_render_and_quarantines_nothing_then_a_retry_completes(
    catalog, seaweed: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, rows = catalog
    remote = new_bucket_store(seaweed)
    for row in rows:
        key = catalog_asset_key(row["asset_sha256"])
        remote.put(key, local.get(key))
    remote.put(CATALOG_MANIFEST_KEY, local.get(CATALOG_MANIFEST_KEY))
    out = LocalStore(tmp_path)
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("GLASSFINDER_S3_MAX_ATTEMPTS", "2")
        proxy.only_paths_containing = "/catalog/assets/"
        proxy.fail_with_503 = 1000  # the assets' store is down
        with pytest.raises(StoreUnavailableError):
            render_catalog(f"{remote.uri}/{CATALOG_MANIFEST_KEY}", SPEC, out, workers=1, limit=2)
        assert not list(out.list(asset_quarantine_prefix(SPEC.spec_hash)))  # nothing quarantined
        proxy.fail_with_503 = 0  # back up: the retry renders everything
        report = render_catalog(f"{remote.uri}/{CATALOG_MANIFEST_KEY}", SPEC, out, workers=1, limit=2)
    assert (report.rendered, report.quarantined) == (2, [])


def test_a_corrupt_asset_is_quarantined_once_for_good(catalog, tmp_path: Path) -> None:
    store, rows = catalog
    broken = rows[2]
    key = catalog_asset_key(broken["asset_sha256"])
    pristine = store.get(key)
    assert str(rows[2]["asset_uri"]).startswith("assets/")
    root = tmp_path / "cat"
    copy = LocalStore(root)
    for info in store.list(""):
        copy.put(info.key, store.get(info.key))
    # Bytes that match the manifest's sha256 but are no GLB: the asset itself is bad.
    manifest = read_manifest_rows(copy, CATALOG_MANIFEST_KEY)
    bad = b"glTF this is not a mesh"
    for row in manifest:
        if row["product_id"] == broken["product_id"]:
            row["asset_sha256"] = hashlib.sha256(bad).hexdigest()
            copy.put(f"catalog/{row['asset_uri']}", bad)  # asset URIs are relative to the manifest
    write_manifest(copy, CATALOG_MANIFEST_KEY, manifest)
    out = LocalStore(tmp_path / "out")
    first = render_catalog(f"{copy.uri}/{CATALOG_MANIFEST_KEY}", SPEC, out, workers=1)
    (q,) = first.quarantined
    assert q["product_id"] == broken["product_id"] and q["reason"] == "BadAssetError" and q["retry"] is False
    again = render_catalog(f"{copy.uri}/{CATALOG_MANIFEST_KEY}", SPEC, out, workers=1)
    (known,) = again.quarantined
    assert known.get("known") is True and again.rendered == 0  # not tried again
    assert pristine  # the original catalogue is untouched
