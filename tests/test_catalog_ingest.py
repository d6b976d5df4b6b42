"""Asset ingestion: round trip through the loader, normalisation, and the bad-asset corpus."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh

from glassfinder.catalog.build import export_glb
from glassfinder.catalog.convention import REQUIRED_PARTS, part_of
from glassfinder.catalog.generate import build_family
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, catalog_asset_key, ingest_manifest, resolve_asset
from glassfinder.catalog.loader import import_glb, load_asset
from glassfinder.errors import AssetError, ManifestError
from glassfinder.store import LocalStore, ObjectStore


@pytest.fixture(scope="module")
def family() -> list[tuple[dict, bytes]]:
    return build_family(21, 5, 3)  # aviators: metal, nose pads, double bridge


def _scene(glb: bytes) -> trimesh.Scene:
    return import_glb(glb)


def _transformed(glb: bytes, matrix: np.ndarray, file_type: str = "glb") -> bytes:
    scene = _scene(glb)
    scene.apply_transform(matrix)
    out = scene.export(file_type=file_type)
    if isinstance(out, str):
        return out.encode()
    if isinstance(out, bytes):
        return out
    buf = io.BytesIO()
    scene.export(buf, file_type=file_type)
    return buf.getvalue()


def test_generated_asset_round_trips_unchanged(family: list[tuple[dict, bytes]]) -> None:
    _, glb = family[0]
    asset = load_asset(glb, "a.glb")
    assert asset.unit == "m" and asset.notes == []
    np.testing.assert_allclose(asset.scene.bounds, _scene(glb).bounds, atol=1e-6)
    roles = {part_of(n) for n in asset.scene.graph.nodes_geometry}
    assert roles == {part_of(n) for n in _scene(glb).graph.nodes_geometry}
    assert set(REQUIRED_PARTS) | {"temple_left", "temple_right"} <= roles
    again = load_asset(asset.glb, "b.glb")
    assert again.sha256 == asset.sha256  # normalising a normalised asset changes nothing


@pytest.mark.parametrize(
    ("label", "scale", "axis", "angle", "file_type"),
    [
        ("rotated 90 degrees about X", 1.0, [1, 0, 0], np.pi / 2, "glb"),
        ("rotated 90 degrees about Y, millimetres", 1000.0, [0, 1, 0], np.pi / 2, "glb"),
        ("upside down", 1.0, [0, 0, 1], np.pi, "glb"),
        ("OBJ in centimetres, temples forward", 100.0, [0, 1, 0], np.pi, "obj"),
    ],
)
def test_misoriented_and_rescaled_assets_are_normalised(family, label, scale, axis, angle, file_type) -> None:
    _, glb = family[1]
    matrix = trimesh.transformations.rotation_matrix(angle, axis)
    matrix[:3, :3] *= scale
    asset = load_asset(_transformed(glb, matrix, file_type), f"x.{file_type}")
    np.testing.assert_allclose(asset.scene.bounds, _scene(glb).bounds, atol=2e-4, err_msg=label)
    lens_left = [n for n in asset.scene.graph.nodes_geometry if part_of(n) == "lens_left"]
    assert asset.scene.geometry[lens_left[0]].vertices[:, 0].mean() > 0
    if scale != 1.0:
        assert asset.notes[0].startswith("scaled from")


def _nan_asset(glb: bytes) -> bytes:
    scene = _scene(glb)
    geom = next(iter(scene.geometry.values()))
    geom.vertices[3] = [np.nan, 0, 0]
    return export_glb(scene)


def _oversized(glb: bytes) -> bytes:
    scene = _scene(glb)
    name = next(iter(scene.geometry))
    big = scene.geometry[name].subdivide().subdivide().subdivide()
    scene.geometry[name] = big
    return export_glb(scene)


def _empty() -> bytes:
    scene = trimesh.Scene()
    scene.add_geometry(
        trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=np.zeros((0, 3), int)), node_name="frame"
    )
    return export_glb(scene)


@pytest.mark.parametrize(
    ("case", "reason", "message"),
    [
        ("truncated", "unparseable", "cannot be parsed as GLB"),
        ("garbage", "unparseable", "cannot be parsed as GLB"),
        ("empty_file", "unparseable", "file is empty"),
        ("empty_mesh", "empty", "has no triangles"),
        ("nan", "non_finite", "NaN or infinite vertex coordinates"),
        ("oversized", "too_many_triangles", "triangles, the budget is 30,000"),
        ("giant", "bad_scale", "fits no unit"),
        ("no_lenses", "missing_parts", "has no lens_left, lens_right part"),
        ("wrong_type", "unsupported_format", "unsupported file type 'fbx'"),
    ],
)
def test_bad_assets_fail_with_reason(family, case: str, reason: str, message: str) -> None:
    _, glb = family[0]
    name = "bad.fbx" if case == "wrong_type" else "bad.glb"
    data = {
        "truncated": glb[: len(glb) // 3],
        "garbage": b"glTF" + b"\x00" * 40,
        "empty_file": b"",
        "empty_mesh": _empty() if case == "empty_mesh" else b"",
        "nan": _nan_asset(glb) if case == "nan" else b"",
        "oversized": _oversized(glb) if case == "oversized" else b"",
        "giant": _transformed(glb, np.diag([1e5, 1e5, 1e5, 1.0])) if case == "giant" else b"",
        "no_lenses": export_glb(_without_lenses(glb)) if case == "no_lenses" else b"",
        "wrong_type": glb,
    }[case]
    with pytest.raises(AssetError, match=message) as info:
        load_asset(data, name, max_triangles=30_000 if case == "oversized" else 300_000)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"asset {name}:")


def _without_lenses(glb: bytes) -> trimesh.Scene:
    scene = _scene(glb)
    out = trimesh.Scene()
    for node in scene.graph.nodes_geometry:
        if not node.startswith("lens"):
            out.add_geometry(scene.geometry[scene.graph[node][1]], node_name=node)
    return out


def _put_catalog(store: ObjectStore, family: list[tuple[dict, bytes]]) -> list[dict]:
    rows = []
    for row, glb in family:
        store.put(row["asset_uri"], glb)
        rows.append({"product_id": row["product_id"], "asset_uri": row["asset_uri"], "kind": row["kind"]})
    return rows


def test_manifest_ingestion_quarantines_bad_rows_and_keeps_the_rest(family, tmp_path) -> None:
    src = LocalStore(tmp_path / "src")
    rows = _put_catalog(src, family)
    src.put("assets/broken.glb", family[0][1][:500])
    rows += [
        {"product_id": rows[0]["product_id"], "asset_uri": rows[1]["asset_uri"], "kind": "optical"},
        {"product_id": "missing-asset", "asset_uri": "assets/nowhere.glb", "kind": "optical"},
        {"product_id": "broken", "asset_uri": "assets/broken.glb", "kind": "optical"},
        {"product_id": "bad-kind", "asset_uri": rows[1]["asset_uri"], "kind": "goggles"},
        {"product_id": "", "asset_uri": rows[1]["asset_uri"], "kind": "optical"},
    ]
    header = "product_id,asset_uri,kind\n"
    src.put(
        "manifest.csv",
        (header + "".join(f"{r['product_id']},{r['asset_uri']},{r['kind']}\n" for r in rows)).encode(),
    )
    dest = LocalStore(tmp_path / "dest")
    report = ingest_manifest(str(tmp_path / "src" / "manifest.csv"), dest=dest)
    assert len(report.accepted) == 3
    assert [(q.row, q.reason) for q in report.quarantined] == [
        (0, "duplicate_id"),  # the last valid row of an id wins
        (4, "missing_asset"),
        (5, "unparseable"),
        (6, "bad_field"),
        (7, "missing_product_id"),
    ]
    assert "also given by row 3, a later valid row, which wins" in report.quarantined[0].message
    assert report.duplicates == {rows[0]["product_id"]: 3}
    table = pq.read_table(io.BytesIO(dest.get(CATALOG_MANIFEST_KEY))).to_pylist()
    assert [r["product_id"] for r in table] == [r["product_id"] for r, _ in family]
    for r in table:
        assert dest.exists(catalog_asset_key(r["asset_sha256"]))
        store, key = resolve_asset(dest, CATALOG_MANIFEST_KEY, r["asset_uri"])  # relative to the manifest
        assert key == catalog_asset_key(r["asset_sha256"]) and store is dest
    summary = json.loads(report.to_json())
    assert summary["reasons"] == {
        "duplicate_id": 1,
        "missing_asset": 1,
        "unparseable": 1,
        "bad_field": 1,
        "missing_product_id": 1,
    }


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_manifest_formats(family, tmp_path, fmt: str) -> None:
    src = LocalStore(tmp_path)
    rows = _put_catalog(src, family)
    if fmt == "json":
        src.put("m.json", json.dumps(rows).encode())
    elif fmt == "jsonl":
        src.put("m.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    else:
        import pyarrow as pa

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        src.put("m.parquet", buf.getvalue())
    report = ingest_manifest(str(tmp_path / f"m.{fmt}"))
    assert len(report.accepted) == 3 and report.quarantined == []


def test_unreadable_manifest_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "m.csv").write_text("sku,file\n1,a.glb\n")
    with pytest.raises(ManifestError, match=r"missing required column\(s\) \['product_id', 'asset_uri'\]"):
        ingest_manifest(str(tmp_path / "m.csv"))
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot be parsed"):
        ingest_manifest(str(tmp_path / "m.json"))


def test_gltf_with_embedded_buffers_loads_and_external_buffers_are_named(family) -> None:
    from trimesh.exchange.gltf import export_gltf

    _, glb = family[0]
    embedded = export_gltf(import_glb(glb), embed_buffers=True)["model.gltf"]
    assert load_asset(embedded, "a.gltf").sha256 == load_asset(glb, "a.glb").sha256
    external = export_gltf(import_glb(glb), embed_buffers=False)["model.gltf"]
    with pytest.raises(AssetError, match=r"glTF references external file 'gltf_buffer_0\.bin'") as info:
        load_asset(external, "b.gltf")
    assert info.value.reason == "external_file"
