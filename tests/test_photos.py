"""The photo bank on public-domain photos shipped in scikit-image and matplotlib: detection,
landmarks, pose, caching, quarantine, and glasses rendered onto the photos."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
from PIL import Image

from glassfinder import layout
from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
from glassfinder.errors import GlassFinderError, PhotoError
from glassfinder.heads import photos as photos_mod
from glassfinder.heads.photos import PhotoBank, analyse_photo
from glassfinder.layout import render_quarantine_report_key as quarantine_key
from glassfinder.render.job import render_catalog
from glassfinder.render.spec import RenderSpec, plan_view
from glassfinder.store import LocalStore
from glassfinder.store.shards import read_shard


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


UNSEEN_FACE = _png(skimage.data.astronaut())
TRAINING_FACE = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()


@pytest.fixture(scope="module")
def bank_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    store = LocalStore(tmp_path_factory.mktemp("photos"))
    store.put("astronaut.png", UNSEEN_FACE)
    store.put("grace_hopper.jpg", TRAINING_FACE)
    store.put("coffee.png", _png(skimage.data.coffee()))
    store.put("cat.png", _png(skimage.data.chelsea()))
    store.put("corrupt.jpg", TRAINING_FACE[:2000])
    store.put("tiny.png", _png(np.full((30, 30, 3), 128, np.uint8)))
    store.put("notes.txt", b"not a photo, ignored")
    return store


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
def test_public_domain_faces_are_found_with_plausible_pose(name: str) -> None:
    data = UNSEEN_FACE if name.startswith("astronaut") else TRAINING_FACE
    face, crop = analyse_photo(data, name)
    assert crop.shape == (512, 512, 3)
    left, right = np.array(face.eye_left_xy), np.array(face.eye_right_xy)
    assert left[0] > right[0]  # the subject's left eye is on the image's right
    assert 60 < np.linalg.norm(left - right) < 160  # eyes a plausible distance apart in the crop
    assert abs(left[1] - right[1]) < 20
    assert abs(face.yaw_deg) < 20 and abs(face.roll_deg) < 15 and abs(face.pitch_deg) < 30
    assert face.detection_score >= 0.5
    assert face.face_id.startswith("photo-")


def test_bank_analyses_once_and_quarantines_unusable_photos(
    bank_store: LocalStore, tmp_path: Path, monkeypatch
) -> None:
    cache = LocalStore(tmp_path / "cache")
    usable, bad = PhotoBank(bank_store, "", cache).scan()
    assert [f.source for f, _ in usable] == ["astronaut.png", "grace_hopper.jpg"]
    assert {b["photo"]: b["reason"] for b in bad} == {
        "cat.png": "no_face",
        "coffee.png": "no_face",
        "corrupt.jpg": "unreadable",
        "tiny.png": "too_small",
    }
    assert all(b["message"].startswith(f"photo {b['photo']}:") for b in bad)

    def no_more_analysis(*args, **kwargs):
        raise AssertionError("photo analysed twice")

    monkeypatch.setattr(photos_mod, "analyse_photo", no_more_analysis)
    again, bad_again = PhotoBank(bank_store, "", cache).scan()  # everything comes from the cache
    assert [f for f, _ in again] == [f for f, _ in usable] and bad_again == bad


def test_unreadable_photo_error() -> None:
    with pytest.raises(PhotoError, match=r"photo x\.jpg: is not a readable image") as info:
        analyse_photo(b"\xff\xd8garbage", "x.jpg")
    assert info.value.reason == "unreadable"


def test_glasses_render_onto_photos_over_the_eyes(bank_store: LocalStore, tmp_path: Path) -> None:
    from glassfinder.catalog.generate import build_family
    from glassfinder.catalog.loader import import_glb
    from glassfinder.render.tryon import AssetMeshes, PhotoRenderer, TryOnRenderer

    _, glb = build_family(2, 5, 1)[0]
    usable, _ = PhotoBank(bank_store, "", LocalStore(tmp_path)).scan()
    renderer = TryOnRenderer(256)
    try:
        pr = PhotoRenderer(renderer)
        for face, crop_key in usable:
            crop = PhotoBank(bank_store, "", LocalStore(tmp_path)).crop(crop_key)
            view = dataclasses.replace(
                plan_view(
                    RenderSpec(image_px=256), "ab" * 32, 0, fixed_lens=("tinted", (0.03, 0.03, 0.03, 0.8))
                ),
                slide_m=0.0,
                tilt_deg=0.0,
            )
            out = pr.render(AssetMeshes(import_glb(glb)), face, crop, view)
            x0, y0, x1, y1 = out.glasses_box_xyxy
            for ex, ey in out.eyes_xy:
                assert x0 < ex < x1 and y0 < ey < y1  # the frame sits over both eyes
                cov = out.alpha[int(ey) - 2 : int(ey) + 3, int(ex) - 2 : int(ex) + 3]
                assert abs(float(np.median(cov)) - 0.8) < 0.05  # the lens covers the eye
            bare = np.asarray(Image.fromarray(crop).resize((256, 256), Image.Resampling.LANCZOS), float)
            ex, ey = out.eyes_xy[0].astype(int)
            eye = (slice(ey - 4, ey + 5), slice(ex - 8, ex + 9))
            assert out.rgb[eye].astype(float).std() < 0.45 * bare[eye].std()  # sunglasses hide the eye
    finally:
        renderer.close()


def test_render_job_on_a_photo_bank(bank_store: LocalStore, tmp_path: Path) -> None:
    generate_catalog(LocalStore(tmp_path / "sample"), 2, seed=5, workers=1)
    out = LocalStore(tmp_path / "pipeline")
    ingest_manifest(str(tmp_path / "sample" / "manifest.parquet"), dest=out)
    spec = RenderSpec(image_px=96, views_per_asset=2, face_source=f"photos:{bank_store.uri}")
    report = render_catalog(f"{out.uri}/{CATALOG_MANIFEST_KEY}", spec, out, workers=1)
    assert (report.rendered, report.views) == (2, 4)
    assert sorted(q["reason"] for q in report.quarantined) == [
        "no_face",
        "no_face",
        "too_small",
        "unreadable",
    ]
    assert len(json.loads(out.get(quarantine_key(spec.spec_hash)))) == 4
    shard_keys = [i.key for i in out.list(f"renders/{spec.spec_hash}/") if i.key.endswith(".parquet")]
    table = read_shard(out, shard_keys[0], "image")
    assert all(f.startswith("photo-") for f in table.column("face_id").to_pylist())
    assert layout.render_shard_key(spec.spec_hash, table.column("asset_sha256")[0].as_py()) == shard_keys[0]


def test_a_bank_kept_in_the_output_store_renders_as_the_same_bank_elsewhere(
    bank_store: LocalStore, tmp_path: Path
) -> None:
    """A spec may name its bank by key prefix in the store it renders into: the same photos give
    the same pixels as when named by the bank store's URI, and no folder of this machine enters
    the spec (so its hash is the same in any work folder)."""
    from glassfinder.render.spec import OUTPUT_STORE_BANK

    generate_catalog(LocalStore(tmp_path / "sample"), 1, seed=5, workers=1)
    out = LocalStore(tmp_path / "pipeline")
    ingest_manifest(str(tmp_path / "sample" / "manifest.parquet"), dest=out)
    for info in bank_store.list(""):
        out.put(f"banks/mine/{info.key}", bank_store.get(info.key))
    by_uri = RenderSpec(image_px=96, views_per_asset=2, face_source=f"photos:{bank_store.uri}")
    in_out = dataclasses.replace(by_uri, face_source=f"{OUTPUT_STORE_BANK}banks/mine/")
    assert bank_store.uri in by_uri.canonical_json()
    assert not any(where in in_out.canonical_json() for where in (bank_store.uri, str(tmp_path), "/tmp"))
    images = []
    for spec in (by_uri, in_out):
        report = render_catalog(f"{out.uri}/{CATALOG_MANIFEST_KEY}", spec, out, workers=1)
        assert (report.rendered, report.views) == (1, 2)
        assert len(report.quarantined) == 4  # the bank's unusable photos, named, in both forms
        (key,) = [i.key for i in out.list(f"renders/{spec.spec_hash}/") if i.key.endswith(".parquet")]
        images.append(read_shard(out, key, "image").column("image").to_pylist())
    assert images[0] == images[1]
    for bad in ("", "/abs/", "banks/../../etc/"):
        with pytest.raises(GlassFinderError, match="key prefix inside the output store"):
            dataclasses.replace(by_uri, face_source=f"{OUTPUT_STORE_BANK}{bad}")


def test_a_glasses_layer_over_its_own_face_is_the_render(bank_store: LocalStore, tmp_path: Path) -> None:
    """A glasses-layer spec stores the glasses alone (premultiplied RGB + alpha); put back over
    the face it was fitted to, with the renderer's own over-operator, it gives the composited
    render of the same view, so training that swaps the face changes nothing else."""
    from glassfinder.embed.composite import over
    from glassfinder.embed.data import decode_image, decode_layer

    generate_catalog(LocalStore(tmp_path / "sample"), 1, seed=5, workers=1)
    out = LocalStore(tmp_path / "pipeline")
    ingest_manifest(str(tmp_path / "sample" / "manifest.parquet"), dest=out)
    whole = RenderSpec(image_px=96, views_per_asset=3, face_source=f"photos:{bank_store.uri}")
    layer = dataclasses.replace(whole, glasses_layer=True)
    assert whole.spec_hash != layer.spec_hash and "glasses_layer" not in whole.canonical_json()
    tables = []
    for spec in (whole, layer):
        render_catalog(f"{out.uri}/{CATALOG_MANIFEST_KEY}", spec, out, workers=1)
        (key,) = [i.key for i in out.list(f"renders/{spec.spec_hash}/") if i.key.endswith(".parquet")]
        tables.append(read_shard(out, key, "image"))
    faces = {
        face.face_id: PhotoBank(out, "", out).crop(k) for face, k in PhotoBank(bank_store, "", out).scan()[0]
    }
    rows = zip(
        *(t.column("image").to_pylist() for t in tables), tables[1].column("face_id").to_pylist(), strict=True
    )
    for rendered, layered, face_id in rows:
        rgba = decode_layer(layered, "layer")
        assert 0.005 < (rgba[..., 3] > 0).mean() < 0.5  # the glasses, not the face or nothing
        assert not rgba[..., :3][rgba[..., 3] == 0].any()  # premultiplied: no colour where no cover
        face = np.asarray(Image.fromarray(faces[face_id]).resize((96, 96), Image.Resampling.LANCZOS))
        again = over(rgba[..., :3], rgba[..., 3], face).astype(int)
        assert np.abs(again - decode_image(rendered, "render").astype(int)).max() <= 2
    with pytest.raises(GlassFinderError, match="glasses_layer needs face_source"):
        RenderSpec(glasses_layer=True)
