"""Property-based fuzzing of a shop's export (issue 30): generated manifests (types, encodings,
ids, duplicates, missing columns) and mutated GLB/glTF bytes.

Properties: nothing but the project's error family escapes; no product with a valid row is lost;
every refused row is in the quarantine with its reason. The default profile runs a few dozen
examples (seconds); `-m slow` runs the long profile.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glassfinder.catalog.columns import PRODUCT_ID_PATTERN
from glassfinder.catalog.generate import build_family
from glassfinder.catalog.ingest import ingest_manifest
from glassfinder.catalog.loader import load_asset
from glassfinder.errors import AssetError, GlassFinderError

# Derandomised (the same examples every run: a CI failure reproduces) and no example database.
FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
LONG = settings(FAST, max_examples=400)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """Two good assets and one that no row can load (a GLB of garbage)."""
    root = tmp_path_factory.mktemp("fuzz-export")
    (root / "assets").mkdir()
    for i, (_, glb) in enumerate(build_family(3, 2, 2)):
        (root / "assets" / f"good-{i}.glb").write_bytes(glb)
    (root / "assets" / "bad.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    return root


@functools.cache
def glb() -> bytes:
    """A generated asset to mutate (not a fixture: hypothesis would print all of it on a failure)."""
    return build_family(5, 1, 1)[0][1]


# --- manifests ---------------------------------------------------------------------------------
ids = st.one_of(
    st.from_regex(PRODUCT_ID_PATTERN, fullmatch=True).map(lambda s: s[:12]),
    st.sampled_from(["A", "B", "dup", "a/b", "x\x00", "\u202eP", "  C ", "", "-z", "x" * 70]),
    st.text(max_size=8),
    st.integers(-5, 10**6),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
)
assets = st.sampled_from(["assets/good-0.glb", "assets/good-1.glb", "assets/bad.glb", "assets/none.glb", ""])
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.floats(0, 1), max_size=5),
    st.sampled_from(["optical", "sunglasses", "fixed", "palette", "clear", "tinted", "[0.1,0.2,0.3,0.4]"]),
)
OPTIONAL = ["kind", "lens_policy", "lens_style", "lens_rgba", "display_name", "colour_name", "lens_width_mm",
            "temple_mm", "asset_sha256", "unknown column"]  # fmt: skip
rows_strategy = st.lists(
    st.fixed_dictionaries(
        {"product_id": ids, "asset_uri": assets},
        optional={name: anything for name in OPTIONAL},
    ),
    max_size=8,
)


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _write(folder: Path, rows: list[dict], fmt: str, drop_column: str | None) -> str:
    if drop_column:
        rows = [{k: v for k, v in r.items() if k != drop_column} for r in rows]
    path = folder / f"fuzz.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows, default=str))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r, default=str) for r in rows))
    elif fmt == "csv":
        names = sorted({k for r in rows for k in r}) or ["product_id", "asset_uri"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, names)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        path.write_bytes(buf.getvalue().encode("utf-8", errors="surrogatepass"))
    else:  # parquet: each column typed from its values where Arrow can, else text
        columns = sorted({k for r in rows for k in r})
        arrays = {}
        for c in columns:
            values = [r.get(c) for r in rows]
            try:
                arrays[c] = pa.array(values)
            except (pa.ArrowException, OverflowError):
                arrays[c] = pa.array([None if v is None else repr(v) for v in values])
        pq.write_table(
            pa.table(arrays) if arrays else pa.table({"product_id": pa.array([], pa.string())}), path
        )
    return str(path)


def _valid_id(value: object) -> str | None:
    from glassfinder.catalog.columns import product_id
    from glassfinder.errors import CellError

    try:
        return product_id(value)
    except CellError:
        return None


def check_manifest(folder: Path, rows: list[dict], fmt: str, drop_column: str | None) -> None:
    uri = _write(folder, rows, fmt, drop_column)
    try:
        report = ingest_manifest(uri)
    except GlassFinderError:
        return  # a whole-manifest refusal (missing required column, unparseable file): in the family
    # Every row is either behind an accepted product or quarantined with a reason, exactly once.
    quarantined_rows = [q.row for q in report.quarantined]
    assert len(quarantined_rows) == len(set(quarantined_rows))
    assert all(q.reason and q.stage == "ingest" for q in report.quarantined)
    assert len(report.accepted) + len(report.quarantined) == report.rows
    accepted = {r["product_id"] for r in report.accepted}
    assert len(accepted) == len(report.accepted)  # one row per product
    # No product with a valid row is lost: a row with a valid id and a loadable asset (and cells
    # that pass) is accepted or superseded by a later valid row of the same id.
    for q in report.quarantined:
        if q.reason == "duplicate_id":
            assert q.product_id in accepted
    for pid in report.refused_products:
        assert pid not in accepted


@given(rows=rows_strategy, fmt=st.sampled_from(["json", "jsonl", "csv", "parquet"]),
       drop=st.sampled_from([None, None, "asset_uri", "kind"]))  # fmt: skip
@FAST
def test_generated_manifests_quarantine_rows_and_lose_no_product(export: Path, rows, fmt, drop) -> None:
    check_manifest(export, rows, fmt, drop)


@pytest.mark.slow
@given(rows=rows_strategy, fmt=st.sampled_from(["json", "jsonl", "csv", "parquet"]),
       drop=st.sampled_from([None, None, "asset_uri", "kind"]))  # fmt: skip
@LONG
def test_generated_manifests_long(export: Path, rows, fmt, drop) -> None:
    check_manifest(export, rows, fmt, drop)


@given(raw=st.binary(max_size=400), fmt=st.sampled_from(["json", "jsonl", "csv"]))
@FAST
def test_manifest_bytes_of_any_encoding_raise_only_the_family(export: Path, raw: bytes, fmt: str) -> None:
    header = b"product_id,asset_uri\n" if fmt == "csv" else b""
    (export / f"raw.{fmt}").write_bytes(header + raw)
    try:
        report = ingest_manifest(str(export / f"raw.{fmt}"))
    except GlassFinderError:
        return
    assert len(report.accepted) + len(report.quarantined) == report.rows


def test_a_valid_row_is_never_lost_among_bad_duplicates(export: Path) -> None:
    rows = [
        {"product_id": "K", "asset_uri": "assets/bad.glb"},
        {"product_id": "K", "asset_uri": "assets/good-0.glb", "lens_rgba": "red"},
        {"product_id": "K", "asset_uri": "assets/good-1.glb"},
        {"product_id": "K", "asset_uri": "assets/none.glb"},
    ]
    report = ingest_manifest(_write(export, rows, "json", None))
    assert [r["product_id"] for r in report.accepted] == ["K"]
    assert [(q.row, q.reason) for q in report.quarantined] == [
        (0, "unparseable"),
        (1, "bad_field"),
        (3, "missing_asset"),
    ]


# --- asset bytes ---------------------------------------------------------------------------------
def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, byte in edits:
        out[pos % len(out)] = byte
    return bytes(out[:cut] if cut is not None else out)


def check_asset(data: bytes, name: str) -> None:
    try:
        load_asset(data, name, max_triangles=50_000)
    except AssetError as exc:
        assert exc.reason
    except GlassFinderError:
        pass


@given(edits=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4000)))  # fmt: skip
@FAST
def test_mutated_glb_bytes_raise_only_asset_errors(edits, cut) -> None:
    # Mutations land in the header and JSON chunk most of the time (where parsers trip), not only
    # in the vertex data.
    data = glb()
    edits = [(pos % min(len(data), 2048) if pos % 2 else pos, byte) for pos, byte in edits]
    check_asset(_mutate(data, edits, cut), "m.glb")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(), st.text(max_size=4)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    nodes=st.lists(json_values, max_size=5),
    meshes=st.lists(json_values, max_size=3),
    accessors=st.lists(json_values, max_size=3),
    extra=st.dictionaries(
        st.sampled_from(["scenes", "scene", "buffers", "bufferViews", "images"]), json_values
    ),
)
@FAST
def test_mutated_gltf_documents_raise_only_asset_errors(nodes, meshes, accessors, extra) -> None:
    doc = {"asset": {"version": "2.0"}, "nodes": nodes, "meshes": meshes, "accessors": accessors, **extra}
    check_asset(json.dumps(doc).encode(), "m.gltf")
