"""A careless shop export (issue 30): a bad cell costs at most its row, ids follow one rule, a
duplicate never loses a product, a too-big asset is refused from its JSON, and every stage's
refusals are the one quarantine record. Each test reproduces one finding on the old ingest."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from glassfinder.catalog.generate import build_family
from glassfinder.catalog.ingest import ingest_manifest
from glassfinder.catalog.loader import load_asset
from glassfinder.errors import AssetError
from glassfinder.store import LocalStore


@pytest.fixture(scope="module")
def family() -> list[tuple[dict, bytes]]:
    return build_family(7, 4, 4)


@pytest.fixture
def export(tmp_path: Path, family) -> Path:
    """An export folder with four good assets (reused by many products: ingest caches nothing
    without a destination, so each row still reads and normalises its asset)."""
    root = tmp_path / "export"
    (root / "assets").mkdir(parents=True)
    for i, (_, glb) in enumerate(family):
        (root / "assets" / f"good-{i}.glb").write_bytes(glb)
    return root


def _rows(n: int) -> list[dict]:
    return [{"product_id": f"P{i:02d}", "asset_uri": f"assets/good-{i % 4}.glb"} for i in range(n)]


def _manifest(folder: Path, rows: list[dict], name: str = "manifest.json") -> str:
    (folder / name).write_text(json.dumps(rows))
    return str(folder / name)


def separate_triangles_glb(n: int) -> bytes:
    """A GLB of `n` triangles that share no vertex (9 floats + 3 indices each): 48 bytes a triangle."""
    rng = np.random.default_rng(0)
    positions = rng.uniform(-0.07, 0.07, (3 * n, 3)).astype(np.float32)
    indices = np.arange(3 * n, dtype=np.uint32)
    binary = positions.tobytes() + indices.tobytes()
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "frame"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": positions.nbytes},
            {"buffer": 0, "byteOffset": positions.nbytes, "byteLength": indices.nbytes},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3 * n, "type": "VEC3",
             "min": positions.min(0).tolist(), "max": positions.max(0).tolist()},
            {"bufferView": 1, "componentType": 5125, "count": 3 * n, "type": "SCALAR"},
        ],
    }  # fmt: skip
    return glb_from(doc, binary)


def glb_from(doc: dict, binary: bytes) -> bytes:
    """A GLB container around a glTF JSON document and its binary chunk (glTF 2.0, section 4.4)."""
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\x00" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (
        struct.pack("<4sII", b"glTF", 2, total)
        + struct.pack("<II", len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(binary), 0x004E4942)
        + binary
    )


# --- 1. one bad optional cell aborted the whole ingest -------------------------------------------
def test_bad_optional_cells_drop_only_their_field_and_every_product_lands(export: Path) -> None:
    rows = _rows(20)
    rows[3]["colour_name"] = 42  # was an ArrowTypeError for the whole manifest
    rows[7]["lens_width_mm"] = "abc"  # was a ValueError
    rows[9]["temple_mm"] = float("inf")
    rows[11]["display_name"] = "Ray\u202eban"  # a bidi override would reorder what an operator reads
    rows[12]["colour_name"] = "tortoise"
    rows[12]["lens_width_mm"] = "52.5"
    report = ingest_manifest(_manifest(export, rows))
    assert len(report.accepted) == 20 and report.quarantined == []
    dropped = {(d.row, d.field): d for d in report.dropped}
    assert sorted(dropped) == [
        (3, "colour_name"),
        (7, "lens_width_mm"),
        (9, "temple_mm"),
        (11, "display_name"),
    ]
    width = dropped[(7, "lens_width_mm")]
    assert (width.product_id, width.got, width.reason) == ("P07", "'abc'", "dropped_field")
    assert "number of millimetres" in (width.expected or "") and width.stage == "ingest" and width.at
    by_id = {r["product_id"]: r for r in report.accepted}
    assert by_id["P03"]["colour_name"] is None and by_id["P07"]["lens_width_mm"] is None
    assert by_id["P11"]["display_name"] == "P11"  # the default
    assert (by_id["P12"]["colour_name"], by_id["P12"]["lens_width_mm"]) == ("tortoise", 52.5)
    assert json.loads(report.to_json())["dropped_fields"] == 4


def test_a_bad_cell_that_decides_pixels_quarantines_only_its_row(export: Path) -> None:
    rows = _rows(6)
    rows[1]["lens_rgba"] = "red"
    rows[2]["kind"] = 7
    rows[3]["lens_style"] = "holographic"
    rows[4]["lens_rgba"] = [0.1, 0.2, 2.0, 1.0]
    report = ingest_manifest(_manifest(export, rows))
    assert [r["product_id"] for r in report.accepted] == ["P00", "P05"]
    assert [(q.row, q.reason, q.field, q.got) for q in report.quarantined] == [
        (1, "bad_field", "lens_rgba", "'red'"),
        (2, "bad_field", "kind", "7"),
        (3, "bad_field", "lens_style", "'holographic'"),
        (4, "bad_field", "lens_rgba", "[0.1, 0.2, 2.0, 1.0]"),
    ]
    assert report.quarantined[1].expected == "one of optical, sunglasses"


def test_a_csv_with_a_bad_byte_loses_only_the_cells_it_sits_in(export: Path) -> None:
    text = "product_id,asset_uri,colour_name\nP0,assets/good-0.glb,bl\xe9u\nP\xff1,assets/good-1.glb,red\n"
    (export / "m.csv").write_bytes(text.encode("latin-1"))
    report = ingest_manifest(str(export / "m.csv"))
    assert [r["product_id"] for r in report.accepted] == ["P0"]
    assert [(q.row, q.reason) for q in report.quarantined] == [(1, "bad_product_id")]
    assert [(d.row, d.field) for d in report.dropped] == [(0, "colour_name")]


# --- 2. ids and duplicates ------------------------------------------------------------------------
BAD_IDS = [
    "a/b",
    "a\x00b",
    "P1\nFAKE 99 rows: 99 accepted",
    "\u202eP1",
    "x" * 300,
    "..",
    "-x",
    "a b",
    True,
    1.5,
]


def test_product_ids_follow_one_rule(export: Path) -> None:
    rows = [{"product_id": pid, "asset_uri": "assets/good-0.glb"} for pid in BAD_IDS]
    rows += [
        {"product_id": "  \uff21\uff22-1 ", "asset_uri": "assets/good-1.glb"},  # full-width: NFKC -> AB-1
        {"product_id": 1234, "asset_uri": "assets/good-2.glb"},
        {"product_id": "x" * 64, "asset_uri": "assets/good-3.glb"},
    ]
    report = ingest_manifest(_manifest(export, rows))
    assert [r["product_id"] for r in report.accepted] == ["AB-1", "1234", "x" * 64]
    assert [(q.row, q.reason, q.product_id) for q in report.quarantined] == [
        (i, "bad_product_id", None) for i in range(len(BAD_IDS))
    ]
    assert all("\n" not in q.message and "\u202e" not in q.message for q in report.quarantined)
    assert report.quarantined[2].got == repr(BAD_IDS[2])


def test_a_duplicate_whose_first_row_is_bad_keeps_the_product(export: Path) -> None:
    rows = [
        {"product_id": "A", "asset_uri": "assets/nowhere.glb"},  # bad first row
        {"product_id": "A", "asset_uri": "assets/good-0.glb"},
        {"product_id": "B", "asset_uri": "assets/good-1.glb"},
        {"product_id": "B", "asset_uri": "assets/good-2.glb", "display_name": "B, corrected"},
        {"product_id": "C", "asset_uri": "assets/nowhere.glb"},
        {"product_id": "C", "asset_uri": "assets/good-3.glb", "kind": "goggles"},
    ]
    report = ingest_manifest(_manifest(export, rows))
    by_id = {r["product_id"]: r for r in report.accepted}
    assert list(by_id) == ["A", "B"]
    assert by_id["B"]["display_name"] == "B, corrected"  # the last valid row wins
    assert [(q.row, q.product_id, q.reason) for q in report.quarantined] == [
        (0, "A", "missing_asset"),
        (2, "B", "duplicate_id"),
        (4, "C", "missing_asset"),
        (5, "C", "bad_field"),
    ]
    summary = report.summary()
    assert summary["duplicate_ids"] == 1 and report.duplicates == {"B": 3}
    assert (summary["refused_products"], summary["refused_products_sample"]) == (1, ["C"])


# --- 3. cheap rejects -----------------------------------------------------------------------------
def test_a_glb_over_the_triangle_budget_is_refused_from_its_json(tmp_path: Path) -> None:
    data = separate_triangles_glb(200_000)  # 9.6 MB; trimesh would decode ~60 MB of arrays
    tracemalloc.start()
    try:
        with pytest.raises(AssetError, match="declares 200,000 triangles, the budget is 30,000") as info:
            load_asset(data, "big.glb", max_triangles=30_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_many_triangles"
    assert peak < 2_000_000, f"refusing took {peak:,} bytes of Python allocations"


@pytest.mark.parametrize(
    ("doc", "reason", "message"),
    [
        ({"nodes": [{} for _ in range(5000)]}, "too_many_nodes", "has 5,000 nodes, the budget is 4,096"),
        ({"nodes": [{"children": [i + 1]} for i in range(40)] + [{}]}, "too_deep", "nests nodes 33 deep"),
        ({"nodes": [{"children": [1]}, {"children": [0]}]}, "unparseable", "two parents|cycle"),
        ({"nodes": [{"mesh": 3}]}, "unparseable", "mesh index 3 is out of range"),
        (
            {"meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}], "accessors": [{"count": -1}]},
            "unparseable",
            "accessor count -1",
        ),
    ],
)
def test_broken_or_oversized_node_trees_are_refused_before_decoding(
    doc: dict, reason: str, message: str
) -> None:
    with pytest.raises(AssetError, match=message) as info:
        load_asset(glb_from({"asset": {"version": "2.0"}, **doc}, b""), "x.glb")
    assert info.value.reason == reason
    gltf = json.dumps({"asset": {"version": "2.0"}, **doc}).encode()
    with pytest.raises(AssetError, match=message):
        load_asset(gltf, "x.gltf")


# --- 4. one quarantine record, one reader --------------------------------------------------------
def test_every_stage_writes_the_one_record_and_the_cli_lists_it_unforged(
    export: Path, tmp_path: Path, capsys
) -> None:
    from glassfinder import layout
    from glassfinder.cli import main
    from glassfinder.embed.job import _quarantine as embed_quarantine
    from glassfinder.index.pipeline import _not_indexed, write_not_indexed
    from glassfinder.quarantine import QuarantineRecord, read_quarantine

    store = LocalStore(tmp_path / "store")
    rows = [*_rows(4), {"product_id": "Q1", "asset_uri": "assets/nowhere.glb"}]
    rows.append({"product_id": "P1\nFAKE 0 quarantine record(s)\u202e", "asset_uri": "assets/good-0.glb"})
    ingest_manifest(_manifest(export, rows), dest=store)
    assert main(["catalog", "ingest", _manifest(export, rows, "m2.json"), "--store", store.uri]) == 0
    capsys.readouterr()
    # A render failure and an embed failure as those stages write them, and an index's.
    spec, model, sha = "a" * 16, "b" * 16, "c" * 64
    render = QuarantineRecord("render", "BadAssetError", "cannot fit", "P01", asset_sha256=sha, retry=False)
    store.put(layout.render_quarantine_key(spec, sha), json.dumps(render.to_dict()).encode())
    embed_quarantine(store, model, spec, layout.render_shard_key(spec, sha), ValueError("not Parquet"))
    write_not_indexed(store, "catalog", [_not_indexed({"product_id": "P02"}, "empty", "no rows")])
    records = read_quarantine(store)
    assert [(r.stage, r.product_id, r.reason) for r in records] == [
        ("ingest", "Q1", "missing_asset"),
        ("ingest", None, "bad_product_id"),
        ("render", "P01", "BadAssetError"),
        ("embed", None, "ValueError"),
        ("index", "P02", "empty"),
    ]
    assert all(r.at for r in records) and records[1].field == "product_id"
    assert main(["catalog", "quarantine", "--store", store.uri]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 5 and not any(line.startswith("FAKE") for line in lines)
    assert "\u202e" not in out.out and "\\u202e" in lines[1] and "5 quarantine record(s)" in out.err
    assert main(["catalog", "quarantine", "--store", store.uri, "--stage", "embed", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["source"] == layout.render_shard_key(spec, sha)
