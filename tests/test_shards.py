"""Feature and image shards: round trips over both stores, and clear errors on bad shards."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glassfinder import layout
from glassfinder.errors import ObjectExistsError, ShardCorruptError, ShardError, ShardSchemaError
from glassfinder.store import ObjectStore
from glassfinder.store.shards import (
    IMAGE_SCHEMA,
    ImageColumns,
    ViewColumns,
    embeddings_of,
    feature_schema,
    feature_table,
    image_table,
    read_shard,
    write_shard,
)

ASSET, SPEC, MODEL = "a" * 64, "b" * 16, "c" * 16


def views(n: int) -> ViewColumns:
    rng = np.random.default_rng(1)
    return ViewColumns(
        view_key=[layout.view_key(ASSET, SPEC, f"head-{i % 3:04d}", i) for i in range(n)],
        product_id=[f"p{i % 2}" for i in range(n)],
        asset_sha256=[ASSET] * n,
        spec_hash=[SPEC] * n,
        face_id=[f"head-{i % 3:04d}" for i in range(n)],
        view_index=np.arange(n),
        pose_deg=rng.uniform(-30, 30, (n, 3)),
        lens_rgba=rng.uniform(0, 1, (n, 4)),
        lens_style=["clear", "tinted", "gradient", "mirrored"][:1] * n,
    )


def test_feature_shard_round_trip(store: ObjectStore) -> None:
    n, dim = 50, 256
    emb = np.random.default_rng(2).standard_normal((n, dim)).astype(np.float32)
    v = views(n)
    key = layout.feature_shard_key(MODEL, SPEC, ASSET)
    size = write_shard(store, key, feature_table(v, model_sha=MODEL, embeddings=emb), "feature")
    assert store.head(key).size == size
    table = read_shard(store, key, "feature", dim=dim)
    assert table.num_rows == n
    np.testing.assert_array_equal(embeddings_of(table), emb)
    assert table.column("view_key").to_pylist() == list(v.view_key)
    assert table.column("model_sha").to_pylist() == [MODEL] * n
    np.testing.assert_allclose(table.column("yaw_deg").to_numpy(), v.pose_deg[:, 0].astype(np.float32))
    assert table.schema.metadata[b"glassfinder.shard_kind"] == b"feature"


def test_image_shard_round_trip_with_ragged_landmarks(store: ObjectStore) -> None:
    n = 4
    landmarks = [np.arange(2 * k, dtype=np.float32).reshape(k, 2) for k in (5, 68, 0, 5)]
    images = ImageColumns(
        image=[bytes([i]) * (100 + i) for i in range(n)],
        image_format=["png"] * n,
        width=[256] * n,
        height=[256] * n,
        eyes_xy=np.array([[[100, 120], [156, 120]]] * n, dtype=np.float32),
        landmarks_xy=landmarks,
        glasses_box_xyxy=np.array([[60, 90, 196, 150]] * n, dtype=np.float32),
        split=["train", "train", "val", "test"],
    )
    key = layout.render_shard_key(SPEC, ASSET)
    write_shard(store, key, image_table(views(n), images), "image")
    table = read_shard(store, key, "image")
    assert table.column("image").to_pylist() == list(images.image)
    got = table.column("landmarks_xy").to_pylist()
    assert [len(g) for g in got] == [5, 68, 0, 5]
    np.testing.assert_array_equal(np.array(got[1], dtype=np.float32), landmarks[1])
    assert table.column("eye_right_xy").to_pylist()[0] == [156.0, 120.0]
    assert table.column("split").to_pylist() == ["train", "train", "val", "test"]


def test_read_limited_columns(store: ObjectStore) -> None:
    key = "features/few.parquet"
    write_shard(
        store,
        key,
        feature_table(views(3), model_sha=MODEL, embeddings=np.ones((3, 8), np.float32)),
        "feature",
    )
    table = read_shard(store, key, "feature", columns=["product_id", "embedding"])
    assert table.column_names == ["product_id", "embedding"]


def _raw_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_missing_column_names_shard_and_column(store: ObjectStore) -> None:
    table = feature_table(views(3), model_sha=MODEL, embeddings=np.ones((3, 8), np.float32))
    store.put("features/old.parquet", _raw_parquet(table.drop_columns(["spec_hash"])))
    with pytest.raises(ShardSchemaError, match=r"features/old\.parquet: missing column 'spec_hash'"):
        read_shard(store, "features/old.parquet", "feature")


def test_wrong_column_type_names_shard_and_column(store: ObjectStore) -> None:
    table = feature_table(views(3), model_sha=MODEL, embeddings=np.ones((3, 8), np.float32))
    as_doubles = pa.array([[1.0] * 8] * 3, type=pa.list_(pa.float64()))
    bad = table.set_column(table.schema.get_field_index("embedding"), "embedding", as_doubles)
    store.put("features/doubles.parquet", _raw_parquet(bad))
    with pytest.raises(
        ShardSchemaError,
        match=r"doubles\.parquet: column 'embedding' has type list<element: double>, "
        r"expected fixed_size_list<item: float>\[dim\]",
    ):
        read_shard(store, "features/doubles.parquet", "feature")


def test_wrong_dimension_is_refused(store: ObjectStore) -> None:
    write_shard(
        store,
        "f.parquet",
        feature_table(views(2), model_sha=MODEL, embeddings=np.ones((2, 8), np.float32)),
        "feature",
    )
    with pytest.raises(ShardSchemaError, match="fixed_size_list<item: float>\\[256\\]"):
        read_shard(store, "f.parquet", "feature", dim=256)


def test_image_shard_read_as_feature_is_refused(store: ObjectStore) -> None:
    n = 1
    images = ImageColumns(
        [b"x"], ["png"], [1], [1], np.zeros((1, 2, 2)), [np.zeros((0, 2))], np.zeros((1, 4)), ["train"]
    )
    write_shard(store, "img.parquet", image_table(views(n), images), "image")
    with pytest.raises(ShardSchemaError, match="missing column 'model_sha'"):
        read_shard(store, "img.parquet", "feature")


@pytest.mark.parametrize("keep", [0, 10, 0.5, -8])
def test_truncated_shard_is_corrupt(store: ObjectStore, keep: float) -> None:
    table = feature_table(views(20), model_sha=MODEL, embeddings=np.ones((20, 64), np.float32))
    data = _raw_parquet(table)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    store.put("features/cut.parquet", data[:cut])
    with pytest.raises(ShardCorruptError, match=r"features/cut\.parquet is not a readable Parquet file"):
        read_shard(store, "features/cut.parquet", "feature")


def test_not_parquet_is_corrupt(store: ObjectStore) -> None:
    store.put("x.parquet", b"PK\x03\x04 this is a zip, not parquet" * 10)
    with pytest.raises(ShardCorruptError, match=r"x\.parquet"):
        read_shard(store, "x.parquet", "image")


def test_create_only_shard_write_keeps_first(store: ObjectStore) -> None:
    key = layout.feature_shard_key(MODEL, SPEC, ASSET)
    first = feature_table(views(2), model_sha=MODEL, embeddings=np.zeros((2, 4), np.float32))
    write_shard(store, key, first, "feature", create_only=True)
    with pytest.raises(ObjectExistsError):
        write_shard(
            store,
            key,
            feature_table(views(2), model_sha=MODEL, embeddings=np.ones((2, 4), np.float32)),
            "feature",
            create_only=True,
        )
    assert embeddings_of(read_shard(store, key, "feature")).sum() == 0


def test_writer_refuses_mismatched_table(store: ObjectStore) -> None:
    table = feature_table(views(2), model_sha=MODEL, embeddings=np.zeros((2, 4), np.float32))
    with pytest.raises(ShardSchemaError, match="missing column 'image'"):
        write_shard(store, "bad.parquet", table, "image")
    assert not store.exists("bad.parquet")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pose_deg": np.zeros((3, 2))}, "pose_deg' must have shape \\(3, 3\\)"),
        ({"lens_rgba": np.full((3, 4), np.nan)}, "lens_rgba' contains NaN"),
        ({"product_id": ["a"]}, "'product_id' has 1 values, expected 3"),
    ],
)
def test_bad_columns_are_refused(change: dict, message: str) -> None:
    v = views(3)
    for k, val in change.items():
        setattr(v, k, val)
    with pytest.raises(ShardError, match=message):
        feature_table(v, model_sha=MODEL, embeddings=np.zeros((3, 4), np.float32))


def test_nan_embeddings_are_refused() -> None:
    emb = np.zeros((3, 4), np.float32)
    emb[1, 2] = np.nan
    with pytest.raises(ShardError, match="'embedding' contains NaN"):
        feature_table(views(3), model_sha=MODEL, embeddings=emb)


def test_schemas_are_single_sourced() -> None:
    assert feature_schema(256).field("embedding").type == pa.list_(pa.float32(), 256)
    shared = [f.name for f in feature_schema(8)][:11]
    assert shared == [f.name for f in IMAGE_SCHEMA][:11]


@pytest.mark.parametrize("keep", [0, 10, 0.5, -8])
def test_truncated_feature_shard_is_corrupt(store: ObjectStore, keep: float) -> None:
    key = layout.feature_shard_key(MODEL, SPEC, ASSET)
    write_shard(
        store,
        key,
        feature_table(views(20), model_sha=MODEL, embeddings=np.ones((20, 64), np.float32)),
        "feature",
    )
    data = store.get(key)
    assert data.startswith(b"ARROW1")  # feature shards are Arrow IPC files
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    store.put(key, data[:cut])
    with pytest.raises(ShardCorruptError, match=r"is not a readable (Arrow IPC|Parquet) file"):
        read_shard(store, key, "feature")


def test_repetitive_feature_columns_are_stored_once_and_read_back_as_strings(store: ObjectStore) -> None:
    n, dim = 2000, 8
    emb = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    table = feature_table(views(n), model_sha=MODEL, embeddings=emb)
    key = layout.feature_shard_key(MODEL, SPEC, ASSET)
    size = write_shard(store, key, table, "feature")
    # Vectors, view keys, the numeric columns and a 4-byte index per dictionary column, plus
    # headers: the 64-, 16- and 16-character hashes repeated on every row (192 kB) are not there.
    keys = sum(len(k) + 4 for k in views(n).view_key)
    assert size < emb.nbytes + keys + n * (4 + 12 + 16) + n * 6 * 4 + 20_000, size
    got = read_shard(store, key, "feature", dim=dim)
    for name in ("product_id", "asset_sha256", "spec_hash", "face_id", "lens_style", "model_sha"):
        assert got.schema.field(name).type == pa.string(), name
    assert got.column("asset_sha256").to_pylist() == [ASSET] * n
    assert got.column("face_id").to_pylist() == list(views(n).face_id)
    np.testing.assert_array_equal(embeddings_of(got), emb)
