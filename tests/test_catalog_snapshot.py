"""A run's catalogue is pinned once: later stages read the same bytes however the live one moves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from glassfinder import layout
from glassfinder.catalog.manifest import manifest_bytes, parse_manifest
from glassfinder.catalog.snapshot import CatalogSnapshot, pin_live, pin_rows, read_catalog_rows
from glassfinder.errors import BadInputError, CorruptStoreFileError
from glassfinder.index.pipeline import catalog_rows
from glassfinder.store import LocalStore


def _rows(n: int) -> list[dict]:
    return [
        {
            "product_id": f"P{i}",
            "asset_uri": f"assets/{i:064x}.glb",
            "asset_sha256": f"{i:064x}",
            "kind": "optical",
            "lens_policy": "catalog",
            "lens_style": "clear",
            "lens_rgba": [1.0, 1.0, 1.0, 0.1],
            "display_name": f"Frame {i}",
        }
        for i in range(n)
    ]


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path)


def test_a_snapshot_keeps_its_rows_when_the_live_catalog_moves(store: LocalStore) -> None:
    rows = _rows(3)
    store.put(layout.CATALOG_MANIFEST_KEY, manifest_bytes(rows))
    pinned = pin_live(store)
    assert pinned.products == 3 and pinned.uri.endswith(layout.catalog_snapshot_key(pinned.sha256))
    store.put(layout.CATALOG_MANIFEST_KEY, manifest_bytes(_rows(5)))  # onboarding lands mid-run
    got, sha = read_catalog_rows(pinned.uri)
    assert [r["product_id"] for r in got] == ["P0", "P1", "P2"] and sha == pinned.sha256
    # Rows name assets relative to the manifest's folder: the snapshot sits beside it.
    assert pinned.uri.rsplit("/", 1)[0] == f"{store.uri}/{layout.CATALOG_DIR.rstrip('/')}"
    assert pin_rows(store, rows) == pinned  # same rows, same snapshot


def test_a_snapshot_whose_bytes_changed_is_refused(store: LocalStore) -> None:
    pinned = pin_rows(store, _rows(2))
    key = layout.catalog_snapshot_key(pinned.sha256)
    store.put(key, manifest_bytes(_rows(4)))  # overwritten by hand: no longer what its name hashes
    with pytest.raises(CorruptStoreFileError, match=pinned.sha256):
        read_catalog_rows(pinned.uri)


def test_rows_and_digest_come_from_one_read(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the publish step read the manifest twice: a sync landing between the reads gave
    rows of one catalogue with the digest of another."""
    versions = [manifest_bytes(_rows(2)), manifest_bytes(_rows(3))]
    store.put(layout.CATALOG_MANIFEST_KEY, versions[0])
    real_get = LocalStore.get

    def get_then_move(self: LocalStore, key: str) -> bytes:
        data = real_get(self, key)
        if key == layout.CATALOG_MANIFEST_KEY:
            self.put(key, versions[1])  # the next read would see another catalogue
        return data

    monkeypatch.setattr(LocalStore, "get", get_then_move)
    rows, digest = catalog_rows(f"{store.uri}/{layout.CATALOG_MANIFEST_KEY}")
    assert len(rows) == 2 and digest == hashlib.sha256(versions[0]).hexdigest()


def test_a_snapshot_from_another_pipeline_version_names_the_field() -> None:
    with pytest.raises(BadInputError, match=r"catalog\.sha256"):
        CatalogSnapshot.from_json(
            {"uri": "s3://b/catalog/m.parquet", "sha256": "x", "products": 1}, where="catalog"
        )
    assert parse_manifest(b"[]", where="x.json") == []
