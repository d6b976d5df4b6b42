"""A run's catalogue, pinned: the manifest's bytes stored under their sha256 and read back verified.

The live manifest (`catalog/manifest.parquet`) moves whenever a sync or an onboarding run lands.
A run that read it at each stage (plan, every render batch, publish) could plan one catalogue and
publish another. So the catalogue stage pins the rows it wrote, and every later stage reads that
snapshot, whose name is its content's hash: the same bytes for the whole run, checked on read.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from glassfinder import layout
from glassfinder.catalog.manifest import manifest_bytes, parse_manifest
from glassfinder.errors import BadInputError, CorruptStoreFileError, ObjectExistsError
from glassfinder.store import open_object
from glassfinder.store.base import ObjectStore


@dataclass(frozen=True)
class CatalogSnapshot:
    """The catalogue one run works on: where its bytes are, their sha256, how many products."""

    uri: str
    sha256: str
    products: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> CatalogSnapshot:
        """Checked: a result from another version of the pipeline fails naming the field."""
        if not isinstance(data, dict):
            raise BadInputError(f"{where}: expected a catalogue snapshot object, got {type(data).__name__}")
        uri, sha, products = data.get("uri"), data.get("sha256"), data.get("products")
        if not isinstance(uri, str) or not uri:
            raise BadInputError(f"{where}.uri: expected a store URI and key, got {uri!r}")
        if not isinstance(sha, str) or len(sha) != 64:
            raise BadInputError(f"{where}.sha256: expected 64 hex digits, got {sha!r}")
        if not isinstance(products, int) or products < 0:
            raise BadInputError(f"{where}.products: expected a count >= 0, got {products!r}")
        return cls(uri, sha, products)


def _pin(store: ObjectStore, data: bytes, products: int) -> CatalogSnapshot:
    """Store manifest bytes under their sha256 beside the live manifest (create-only)."""
    sha = hashlib.sha256(data).hexdigest()
    key = layout.catalog_snapshot_key(sha)
    with contextlib.suppress(ObjectExistsError):
        store.put(key, data, create_only=True)
    return CatalogSnapshot(f"{store.uri}/{key}", sha, products)


def pin_rows(store: ObjectStore, rows: list[dict[str, Any]]) -> CatalogSnapshot:
    """Snapshot `rows` (as the catalogue manifest stores them)."""
    return _pin(store, manifest_bytes(rows), len(rows))


def pin_live(store: ObjectStore) -> CatalogSnapshot:
    """Snapshot the live manifest's own bytes as they are now: one read of it for the whole run."""
    uri = f"{store.uri}/{layout.CATALOG_MANIFEST_KEY}"
    data = store.get(layout.CATALOG_MANIFEST_KEY)
    return _pin(store, data, len(parse_manifest(data, where=uri)))


def read_catalog_rows(manifest_uri: str) -> tuple[list[dict[str, Any]], str]:
    """(rows, sha256 of the bytes) of a manifest; a snapshot whose bytes are not the ones its
    name hashes is refused (a corrupt or overwritten object), never used."""
    store, key = open_object(manifest_uri)
    data = store.get(key)
    sha = hashlib.sha256(data).hexdigest()
    pinned = layout.catalog_snapshot_sha(manifest_uri)
    if pinned is not None and pinned != sha:
        raise CorruptStoreFileError(
            f"catalogue snapshot {manifest_uri} holds bytes with sha256 {sha}, not the {pinned} its name "
            "records: it was overwritten or corrupted; run the catalogue stage again"
        )
    return parse_manifest(data, where=manifest_uri), sha
