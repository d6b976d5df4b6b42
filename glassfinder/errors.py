"""The one error family of GlassFinder: every expected failure is a GlassFinderError.

Messages say what was expected and what came, and name the file, key or field involved, so the
CLI can print them as one line and an operator can act on them without a traceback.
"""

from __future__ import annotations


class GlassFinderError(Exception):
    """Base of every error GlassFinder raises on purpose."""


# --- object store -------------------------------------------------------------------------------
class StoreError(GlassFinderError):
    """A problem talking to or living in the object store."""


class InvalidStoreURIError(StoreError):
    """The store URI cannot be parsed or names an unsupported scheme."""


class InvalidKeyError(StoreError):
    """An object key is empty, absolute, or escapes the store root."""


class BucketNotFoundError(StoreError):
    """The S3 bucket named by the URI does not exist."""


class StoreAuthError(StoreError):
    """The credentials were rejected or lack permission."""


class ObjectNotFoundError(StoreError):
    """The key does not exist."""


class ObjectExistsError(StoreError):
    """A create-only write found the key already present."""


class StaleWriteError(StoreError):
    """A compare-and-swap write found a different version than expected."""


class StoreUnavailableError(StoreError):
    """The store kept failing with transient errors after every retry."""


# --- Parquet shards -----------------------------------------------------------------------------
class ShardError(GlassFinderError):
    """A Parquet shard cannot be written or read."""


class ShardSchemaError(ShardError):
    """A shard lacks a column or has one of the wrong type."""


class ShardCorruptError(ShardError):
    """A shard's bytes are not a readable Parquet file (truncated, overwritten, not Parquet)."""


# --- index --------------------------------------------------------------------------------------
class IndexStoreError(GlassFinderError):
    """An index cannot be built, published, promoted or read."""


class PublishConflictError(IndexStoreError):
    """Another publisher took the version number or moved CURRENT first."""


class GateRefusedError(IndexStoreError):
    """The quality gate refused to promote a candidate that evaluates worse than CURRENT."""


class IndexCorruptError(IndexStoreError):
    """A version's file does not match the sha256 or size its manifest records."""
