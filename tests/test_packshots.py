"""Packshots: the frame alone on white, front and three-quarter, made by the pipeline for new or
changed products only, content-addressed by asset and packshot spec."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassfinder import layout
from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.catalog.snapshot import pin_live
from glassfinder.errors import GlassFinderError
from glassfinder.pipeline.batches import render_batch
from glassfinder.pipeline.plan import plan_work
from glassfinder.render.packshot import PACKSHOT_SPEC, PackshotSpec
from glassfinder.render.spec import RenderSpec
from glassfinder.store import LocalStore

#: Try-on renders as small as they go: these tests are about the packshots beside them.
TRYON = RenderSpec(image_px=64, views_per_asset=1)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, LocalStore]:
    """A shop export of 4 products (the store ingests the first 3) and the store."""
    root = tmp_path_factory.mktemp("packshots")
    source = LocalStore(root / "export")
    generate_catalog(source, 4, seed=5, workers=1)
    return source, LocalStore(root / "store")


def _night(store: LocalStore, product_ids: list[str] | None = None) -> dict:
    plan = plan_work(
        store, pin_live(store), [TRYON], product_ids=product_ids, assets_per_batch=8, max_batches=4,
        render_workers=1, packshot=PACKSHOT_SPEC,
    )  # fmt: skip
    made = [render_batch(b)["render"] for b in plan.batches]
    return {"plan": plan.to_json(), "packshots": sum(m["packshots"] for m in made), "made": made}


def test_a_second_night_makes_no_packshot_and_a_new_product_gets_exactly_its_own(catalog) -> None:
    source, store = catalog
    rows = read_manifest_rows(source, "manifest.parquet")
    source.put("first.json", __import__("json").dumps(
        [{k: r[k] for k in ("product_id", "asset_uri", "kind", "lens_style", "lens_rgba")} for r in rows[:3]]
    ).encode())  # fmt: skip
    ingest_manifest(f"{source.uri}/first.json", dest=store)

    first = _night(store)
    assert first["plan"]["to_packshot"] == 3 and first["packshots"] == 3
    assert first["made"][0]["packshot_seconds"] > 0
    clean = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    for row in clean:
        for view in PACKSHOT_SPEC.view_names:
            img = Image.open(
                io.BytesIO(store.get(layout.packshot_key(PACKSHOT_SPEC.spec_hash, row["asset_sha256"], view)))
            )
            assert img.size == (512, 512) and img.mode == "RGB"
            rgb = np.asarray(img)
            assert (rgb[:8, :8] == 255).all(), "the background is white"
            assert (rgb.min(axis=2) < 200).mean() > 0.01, "the frame is there"
    before = {i.key: i.etag for i in store.list(layout.PACKSHOT_DIR)}

    second = _night(store)  # nothing changed: nothing planned, nothing rendered, nothing rewritten
    assert second["plan"]["to_packshot"] == 0 and second["plan"]["batches"] == [] and second["packshots"] == 0
    assert {i.key: i.etag for i in store.list(layout.PACKSHOT_DIR)} == before

    # The shop adds a product: only its asset gets packshots.
    source.put("second.json", __import__("json").dumps(
        [{k: r[k] for k in ("product_id", "asset_uri", "kind", "lens_style", "lens_rgba")} for r in rows]
    ).encode())  # fmt: skip
    ingest_manifest(f"{source.uri}/second.json", dest=store)
    third = _night(store)
    assert third["plan"]["to_packshot"] == 1 and third["packshots"] == 1
    assert len({i.key for i in store.list(layout.PACKSHOT_DIR)} - set(before)) == len(
        PACKSHOT_SPEC.view_names
    )


def test_packshot_spec_is_content_addressed_and_checked() -> None:
    assert PackshotSpec().spec_hash == PACKSHOT_SPEC.spec_hash
    assert PackshotSpec(image_px=256).spec_hash != PACKSHOT_SPEC.spec_hash
    assert PackshotSpec.from_json(PACKSHOT_SPEC.canonical_json()) == PACKSHOT_SPEC
    with pytest.raises(GlassFinderError, match=r"image_px must be 64\.\.2048, got 8"):
        PackshotSpec(image_px=8)
    with pytest.raises(GlassFinderError, match="views must be named uniquely"):
        PackshotSpec(views=(("front", 0.0, 0.0), ("front", 30.0, 0.0)))
    with pytest.raises(GlassFinderError, match="packshot view must be"):
        PackshotSpec(views=(("../up", 0.0, 0.0),))


def test_packshots_are_the_same_bytes_when_rendered_again(catalog, tmp_path: Path) -> None:
    from glassfinder.render.packshot import packshot_asset
    from glassfinder.render.tryon import TryOnRenderer

    source, _ = catalog
    row = read_manifest_rows(source, "manifest.parquet")[0]
    data = source.get(row["asset_uri"])
    renderer = TryOnRenderer(PACKSHOT_SPEC.image_px)
    try:
        a, _ = packshot_asset(data, renderer, PACKSHOT_SPEC, fixed_lens=None, where="a")
        b, _ = packshot_asset(data, renderer, PACKSHOT_SPEC, fixed_lens=None, where="a")
    finally:
        renderer.close()
    assert a == b and set(a) == {"front", "three_quarter"}


def test_catalog_sheet_of_packshots_takes_the_stored_ones(catalog, tmp_path: Path, capsys) -> None:
    """After a night: every catalogue product's packshots come from the store, none is rendered."""
    from glassfinder.cli import main

    source, store = catalog
    if not store.exists(CATALOG_MANIFEST_KEY):  # run alone: the catalogue and its nights first
        ingest_manifest(f"{source.uri}/manifest.parquet", dest=store)
    _night(store)
    products = len(read_manifest_rows(store, CATALOG_MANIFEST_KEY))
    out = tmp_path / "sheet.png"
    argv = ["catalog", "sheet", "--packshots", "--store", str(store.root), "--out", str(out)]
    argv += ["--tile-px", "96", "--columns", "2"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert f"packshots of {products} products, {products} from" in said and "0 rendered" in said
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (-(-products // 2) * (96 + 18), 2 * 2 * 96, 3)
    assert (sheet.min(axis=2) < 200).mean() > 0.01
