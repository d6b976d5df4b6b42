"""Object storage for every GlassFinder artefact, and the Parquet shards kept in it.

`open_store(uri)` is the only way modules obtain a store; they never touch boto3 or the
filesystem for artefacts directly, so every stage runs unchanged on a laptop directory or S3.
"""

from __future__ import annotations

from glassfinder.store.base import ObjectInfo, ObjectStore
from glassfinder.store.local import LocalStore
from glassfinder.store.s3 import S3Config, S3Store
from glassfinder.store.uri import StoreURI, parse_store_uri, split_object_uri


def open_store(uri: str, *, s3_config: S3Config | None = None) -> ObjectStore:
    """The store a URI names (see glassfinder.store.uri for the accepted forms)."""
    parsed = parse_store_uri(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.location, parsed.prefix, config=s3_config)
    return LocalStore(parsed.location)


def open_object(uri: str) -> tuple[ObjectStore, str]:
    """(store, key) of an object URI (glassfinder.store.uri.split_object_uri)."""
    store_uri, key = split_object_uri(uri)
    return open_store(store_uri), key


__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Config",
    "S3Store",
    "StoreURI",
    "open_object",
    "open_store",
    "parse_store_uri",
    "split_object_uri",
]
