"""The pipeline library under the DAGs: params, planning and batching, catalogue diffs and caches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from glassfinder import layout
from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import (
    CATALOG_MANIFEST_KEY,
    catalog_etag,
    ingest_manifest,
    write_catalog_manifest,
)
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.catalog.snapshot import CatalogSnapshot, pin_rows
from glassfinder.errors import ParamError, StaleWriteError
from glassfinder.layout import render_quarantine_key as asset_quarantine_key
from glassfinder.pipeline.artefacts import Batch, EmbedTarget, RunPlan
from glassfinder.pipeline.catalog import diff_rows
from glassfinder.pipeline.config import PipelineConfig, param_specs
from glassfinder.pipeline.plan import batch_size_for, plan_work
from glassfinder.pipeline.training import training_spec
from glassfinder.render.job import known_quarantine, render_catalog
from glassfinder.render.spec import RenderSpec, load_spec
from glassfinder.store import LocalStore


@pytest.mark.parametrize(
    ("count", "per_batch", "most", "size", "batches"),
    [(0, 32, 256, 32, 0), (200, 32, 256, 32, 7), (3200, 32, 256, 32, 100), (100_000, 32, 256, 391, 256)],
)
def test_batches_never_exceed_the_mapping_limit(
    count: int, per_batch: int, most: int, size: int, batches: int
) -> None:
    assert batch_size_for(count, per_batch, most) == size
    assert -(-count // size) == batches <= most


def _fake_catalog(store: LocalStore, n: int) -> CatalogSnapshot:
    rows = [
        {"product_id": f"P{i:05d}", "asset_uri": f"assets/{i}.glb", "asset_sha256": f"{i:064x}"}
        for i in range(n)
    ]
    rows.append({"product_id": "shared-asset", "asset_uri": "assets/0.glb", "asset_sha256": f"{0:064x}"})
    data = json.dumps(rows).encode()
    store.put("catalog/manifest.json", data)
    return CatalogSnapshot(f"{store.uri}/catalog/manifest.json", hashlib.sha256(data).hexdigest(), len(rows))


def test_plan_covers_every_missing_asset_once_within_the_batch_limit(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    manifest = _fake_catalog(store, 1000)
    spec, queries = RenderSpec(image_px=64), RenderSpec(image_px=64, seed=1)
    done = f"{7:064x}"
    store.put(layout.render_shard_key(spec.spec_hash, done), b"x")
    store.put(layout.render_shard_key(queries.spec_hash, done), b"x")
    store.put(layout.feature_shard_key("ab" * 8, spec.spec_hash, done), b"x")
    broken = f"{9:064x}"
    store.put(
        asset_quarantine_key(spec.spec_hash, broken),
        json.dumps({"asset_sha256": broken, "reason": "X", "retry": False}).encode(),
    )
    plan = plan_work(
        store,
        manifest,
        [spec, queries],
        embed=EmbedTarget("glasses", "ab" * 8, spec.spec_hash),
        assets_per_batch=10,
        max_batches=7,
    ).to_json()
    assert RunPlan.from_json(plan).to_json() == plan  # what the next task gets is what this one made
    assets = [a for b in plan["batches"] for a in b["assets"]]
    assert len(plan["batches"]) == 7 and len(assets) == len(set(assets)) == 999  # 1000 minus the finished one
    assert done not in assets and broken in assets  # still lacks its query view
    assert (plan["assets"], plan["reused"], plan["to_embed"]) == (1000, 1, 998)
    assert plan["to_render"] == {spec.spec_hash: 998, queries.spec_hash: 999}
    assert [(q["asset_sha256"], q["products"]) for q in plan["known_quarantined"]] == [(broken, ["P00009"])]
    assert plan["products"] == 1001  # two products share asset 0: rendered once
    batch = plan["batches"][0]
    assert batch["embed"] == {"model": "glasses", "sha": "ab" * 8, "spec_hash": spec.spec_hash}
    assert Batch.from_json(batch).embed.ref == f"glasses@{'ab' * 8}"  # type: ignore[union-attr]
    assert json.loads(store.get(f"renders/{queries.spec_hash}/spec.json")) == json.loads(
        queries.canonical_json()
    )
    only = plan_work(
        store, manifest, [spec], product_ids=["P00003", "shared-asset"], assets_per_batch=10, max_batches=7
    )
    assert [b.assets for b in only.batches] == [(f"{3:064x}", f"{0:064x}")]


def test_params_are_parsed_once_with_errors_naming_the_param(tmp_path: Path) -> None:
    cfg = PipelineConfig.from_params(
        {"store": str(tmp_path / "s"), "catalog_spec": '{"image_px": 96}', "query_spec": None}
    )
    assert cfg.store == str((tmp_path / "s").resolve()) and cfg.query_spec is None
    assert cfg.catalog_spec == RenderSpec(image_px=96) and cfg.specs == [cfg.catalog_spec]
    assert cfg.source_manifest == f"{cfg.store}/incoming/manifest.parquet"
    assert PipelineConfig.from_params({}).catalog_spec == load_spec("catalog")
    with pytest.raises(ParamError, match=r"unknown param\(s\) \['stor'\]"):
        PipelineConfig.from_params({"stor": "x"})
    with pytest.raises(ParamError, match=r"param 'catalog_spec': render spec 'nope' not found"):
        PipelineConfig.from_params({"catalog_spec": "nope"})
    with pytest.raises(ParamError, match=r"param 'query_spec': .*image_px must be 32\.\.2048, got 8"):
        PipelineConfig.from_params({"query_spec": '{"image_px": 8}'})
    with pytest.raises(ParamError, match="param 'index'"):
        PipelineConfig.from_params({"index": "Bad Name"})
    with pytest.raises(ParamError, match=r"param 'max_top1_drop': 2 is greater than the maximum of 1"):
        PipelineConfig.from_params({"max_top1_drop": 2})
    for dag in ("reindex", "onboarding", "training"):
        for name, spec in param_specs(dag).items():
            assert {"default", "type", "title", "description"} <= set(spec), (dag, name)


def test_training_spec_comes_from_the_params() -> None:
    spec = training_spec(
        {"views_per_asset": 12, "yaw_deg": [-50, 50], "seed": 4, "spec_overrides": {"fit_jitter": 1.0}}
    )
    assert (spec.views_per_asset, spec.yaw_deg, spec.seed, spec.fit_jitter) == (12, (-50, 50), 4, 1.0)
    assert spec.image_px == load_spec("catalog").image_px
    assert training_spec({}) == load_spec("catalog")  # the catalogue's renders double as training data
    with pytest.raises(ParamError, match=r"repeats \['seed'\]"):
        training_spec({"spec_overrides": {"seed": 2}})
    with pytest.raises(ParamError, match=r"invalid: .*unknown field"):
        training_spec({"spec_overrides": {"colour": "red"}})
    # The trigger form's own bounds, checked before any spec is built.
    with pytest.raises(ParamError, match=r"param 'views_per_asset': 0 is less than the minimum of 1"):
        training_spec({"views_per_asset": 0})
    with pytest.raises(ParamError, match=r"param 'spec_overrides': 3 is not of type 'object'"):
        training_spec({"spec_overrides": 3})


def test_catalog_diff_sees_pixels_not_metadata() -> None:
    row = {
        "product_id": "A",
        "asset_sha256": "1" * 64,
        "lens_policy": "fixed",
        "lens_style": "tinted",
        "lens_rgba": [0.1, 0.2, 0.3, 0.8],
        "display_name": "A",
    }
    stored = {
        **row,
        "lens_rgba": [0.10000000149011612, 0.20000000298023224, 0.30000001192092896, 0.800000011920929],
    }
    assert diff_rows([stored], [{**row, "display_name": "renamed"}]) == ([], [])
    assert diff_rows([stored], [{**row, "lens_rgba": [0.1, 0.2, 0.3, 0.9]}]) == (["A"], [])
    assert diff_rows([stored], [{**row, "asset_sha256": "2" * 64}]) == (["A"], [])
    assert diff_rows([stored], [{**row, "product_id": "B"}]) == (["B"], ["A"])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("src")
    store = LocalStore(root)
    generate_catalog(store, 3, seed=2, workers=1)
    store.put("assets/broken.glb", b"not a mesh at all")
    rows = read_manifest_rows(store, "manifest.parquet")
    rows.append({"product_id": "broken", "asset_uri": "assets/broken.glb"})
    store.put(
        "manifest.json", json.dumps([{k: r[k] for k in ("product_id", "asset_uri")} for r in rows]).encode()
    )
    return store, rows


def test_ingest_reuses_earlier_outcomes_and_rewrites_the_catalog_only_on_change(
    source, tmp_path: Path
) -> None:
    src, _ = source
    dest = LocalStore(tmp_path / "dest")
    first = ingest_manifest(f"{src.uri}/manifest.json", dest=dest)
    assert (len(first.accepted), first.reused, first.manifest_changed) == (3, 0, True)
    etag = catalog_etag(dest)
    again = ingest_manifest(f"{src.uri}/manifest.json", dest=dest)
    assert (len(again.accepted), again.reused, again.manifest_changed) == (3, 3, False)
    assert catalog_etag(dest) == etag  # not rewritten
    assert [(q.product_id, q.reason) for q in again.quarantined] == [
        ("broken", "unparseable")
    ]  # cached, same reason
    assert again.quarantined[0].message == first.quarantined[0].message
    assert again.accepted == first.accepted
    # A writer holding an old etag loses instead of dropping what another writer added.
    assert write_catalog_manifest(dest, first.accepted[:2], expected_etag=etag)
    with pytest.raises(StaleWriteError, match="changed while it was being updated"):
        write_catalog_manifest(dest, first.accepted, expected_etag=etag)
    assert len(read_manifest_rows(dest, CATALOG_MANIFEST_KEY)) == 2


def test_render_failures_of_the_content_are_final_and_of_the_store_are_retried(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    spec = RenderSpec(image_px=64, views_per_asset=1)
    garbage = b"checksum matches, but this is no GLB"
    final = hashlib.sha256(garbage).hexdigest()
    store.put(f"catalog/assets/{final}.glb", garbage)
    rotten = "b" * 64  # the stored bytes do not match the manifest: the store's fault, not the asset's
    store.put(f"catalog/assets/{rotten}.glb", b"bit rot")
    rows = [
        {"product_id": "garbage", "asset_uri": f"assets/{final}.glb", "asset_sha256": final},
        {"product_id": "rotten", "asset_uri": f"assets/{rotten}.glb", "asset_sha256": rotten},
    ]
    store.put("catalog/manifest.json", json.dumps(rows).encode())
    manifest = f"{store.uri}/catalog/manifest.json"
    first = render_catalog(manifest, spec, store, workers=1)
    assert first.rendered == 0 and sorted(q["product_id"] for q in first.quarantined) == ["garbage", "rotten"]
    records = {
        sha: json.loads(store.get(asset_quarantine_key(spec.spec_hash, sha))) for sha in (final, rotten)
    }
    assert (records[final]["retry"], records[rotten]["retry"]) == (False, True)
    assert set(known_quarantine(store, spec.spec_hash)) == {final}
    again = render_catalog(manifest, spec, store, workers=1)
    by_product = {q["product_id"]: q for q in again.quarantined}
    assert by_product["garbage"].get("known") is True  # not tried again
    assert (
        "known" not in by_product["rotten"]
        and "differs from the manifest's" in by_product["rotten"]["message"]
    )


def test_training_params_default_to_the_training_recipe_and_fine_tune_the_packaged_model(
    tmp_path: Path,
) -> None:
    from glassfinder.embed.train import TrainConfig
    from glassfinder.pipeline.training import train_config
    from glassfinder.store import LocalStore

    recipe = TrainConfig(spec_hashes=("0" * 16,))
    specs = param_specs("training")
    assert (specs["batch_size"]["default"], specs["lr"]["default"]) == (recipe.batch_size, recipe.lr)
    config = train_config({}, "0" * 16, LocalStore(tmp_path))
    assert config.init_from.startswith("glasses@") and config.model == recipe.model
    assert train_config({"init": "imagenet"}, "0" * 16, LocalStore(tmp_path)).init_from == ""
    assert specs["imprint"]["default"] is recipe.imprint is config.imprint is False
    assert train_config({"imprint": True}, "0" * 16, LocalStore(tmp_path)).imprint is True


def test_onboarding_with_nothing_changed_before_the_first_index_publishes_nothing(tmp_path: Path) -> None:
    """The export watcher may fire while the first re-index is still embedding: no error."""
    from glassfinder.pipeline.publish import publish_incremental

    cfg = PipelineConfig.from_params({"store": str(tmp_path)})
    plan = plan_work(
        LocalStore(tmp_path), pin_rows(LocalStore(tmp_path), []), [], assets_per_batch=1, max_batches=1
    )
    result = publish_incremental(cfg, plan, {"changed": [], "removed": []})
    assert result == {"published": False, "reason": "no changes", "version": None}
