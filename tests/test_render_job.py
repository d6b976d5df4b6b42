"""Rendering a catalogue into image shards: spawn pool, S3 output, skip-existing, quarantine."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassfinder import layout
from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, catalog_asset_key, ingest_manifest
from glassfinder.errors import GlassFinderError
from glassfinder.render.job import quarantine_key, render_catalogue, spec_key
from glassfinder.render.spec import RenderSpec, load_spec
from glassfinder.store import LocalStore
from glassfinder.store.seaweed import SeaweedServer
from glassfinder.store.shards import read_shard
from tests.conftest import new_bucket_store

SPEC = RenderSpec(image_px=96, views_per_asset=3, face_count=50)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[dict]]:
    root = tmp_path_factory.mktemp("render-cat")
    generate_catalog(LocalStore(root / "sample"), 4, seed=8, workers=1)
    store = LocalStore(root / "pipeline")
    report = ingest_manifest(str(root / "sample" / "manifest.parquet"), dest=store)
    return store, report.accepted


def test_render_catalogue_to_s3_skips_existing_and_quarantines_broken(
    catalogue, seaweed: SeaweedServer
) -> None:
    store, rows = catalogue
    broken = rows[1]
    pristine = store.get(catalog_asset_key(broken["asset_sha256"]))
    store.put(catalog_asset_key(broken["asset_sha256"]), b"bit rot")  # the stored asset went bad
    try:
        out = new_bucket_store(seaweed)
        manifest = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
        first = render_catalogue(manifest, SPEC, out, workers=2)
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
        again = render_catalogue(manifest, SPEC, out, workers=1)
        assert (again.rendered, again.skipped, len(again.quarantined)) == (0, 3, 1)
    finally:
        store.put(catalog_asset_key(broken["asset_sha256"]), pristine)


def test_same_spec_same_shard_bytes_in_another_run(catalogue, tmp_path: Path) -> None:
    store, rows = catalogue
    manifest = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    render_catalogue(manifest, SPEC, a, workers=1, limit=2)
    render_catalogue(manifest, SPEC, b, workers=2, limit=2)
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
    catalogue, tmp_path: Path, monkeypatch
) -> None:
    store, _ = catalogue
    monkeypatch.setenv("GLASSFINDER_GL_PLATFORM", "vulkan")  # read by the spawned workers only
    with pytest.raises(GlassFinderError, match=r"render worker could not start: .*must be one of"):
        render_catalogue(
            f"{store.uri}/{CATALOG_MANIFEST_KEY}", SPEC, LocalStore(tmp_path), workers=1, limit=1
        )
