"""The one error family of GlassFinder: every expected failure is a GlassFinderError.

Messages say what was expected and what came, and name the file, key or field involved, so the
CLI can print them as one line and an operator can act on them without a traceback.
"""

from __future__ import annotations

import re
from typing import Literal

Audience = Literal["cli", "dag"]

#: How each option a message may point at is spelt where the user is: a CLI flag, or a param of
#: the DAG's trigger form. A message writes `{option:NAME}`; the CLI and the DAG tasks each render
#: it in their own words, so the library never guesses who called it.
OPTIONS: dict[str, dict[Audience, str]] = {
    "force": {"cli": "--force with --reason", "dag": "the force_reason param"},
    "batch_size": {"cli": "--batch-size", "dag": "the batch_size param"},
    "resume": {"cli": "--resume", "dag": "a retry of the task (it resumes by itself)"},
    "work_dir": {"cli": "another --work-dir", "dag": "another train_seed"},
    "epochs": {"cli": "--epochs", "dag": "the epochs param"},
    "asset_root": {
        "cli": "--asset-root (or $GLASSFINDER_ASSET_ROOTS)",
        "dag": "$GLASSFINDER_ASSET_ROOTS in the workers' environment",
    },
    "max_asset_bytes": {
        "cli": "--max-asset-bytes (or $GLASSFINDER_MAX_ASSET_BYTES)",
        "dag": "$GLASSFINDER_MAX_ASSET_BYTES in the workers' environment",
    },
    "allow_shrink": {
        "cli": "--allow-shrink with --reason (the reason is recorded)",
        "dag": "an operator's `glassfinder catalog ingest --allow-shrink --reason R` (recorded)",
    },
    "max_shrink": {
        "cli": "--max-shrink (or $GLASSFINDER_MAX_CATALOGUE_SHRINK)",
        "dag": "$GLASSFINDER_MAX_CATALOGUE_SHRINK in the workers' environment",
    },
}
_OPTION = re.compile(r"\{option:(\w+)\}")


class GlassFinderError(Exception):
    """Base of every error GlassFinder raises on purpose."""

    def speak(self, audience: Audience) -> str:
        """The message with every `{option:NAME}` named as `audience` knows it."""
        text = super().__str__()
        return _OPTION.sub(lambda m: OPTIONS[m[1]][audience] if m[1] in OPTIONS else m[1], text)

    def __str__(self) -> str:
        return self.speak("cli")


# --- what to do about it ------------------------------------------------------------------------
# Each class below says what its caller should do; the Airflow retry policy
# (glassfinder.pipeline.tasks), the render quarantine (glassfinder.render.job) and HTTP statuses
# (http_status below) are derived from these classes, nowhere else. Every other class descends
# from exactly one of the verdicts RetryableError, BadInputError, BadAssetError, NotFoundError and
# FaultError; StoreError and IndexStoreError are categories (where it failed, not what to do),
# and each of their subclasses takes its verdict from its second base.
class RetryableError(GlassFinderError):
    """Another attempt may succeed (an outage, a lost compare-and-swap race): retry, never quarantine."""


class BadInputError(GlassFinderError):
    """What the caller gave is wrong (a name, a param, a field): refuse it; a retry cannot help."""


class RefusedError(BadInputError):
    """An upload the product will not search (not an image, no face, no glasses): refuse it with
    a stable `reason` code and a message for the shopper. HTTP: 413 too large, 415 unreadable,
    422 otherwise (see http_status)."""

    reason: str = "refused"
    #: Reason codes of uploads that are not a readable image of an accepted format (HTTP 415).
    UNREADABLE = frozenset({"not_an_image", "unsupported_format"})
    TOO_LARGE = frozenset({"too_many_pixels", "upload_too_large"})


class ImageRefusedError(RefusedError):
    """Bytes the one image decoder (glassfinder.face.decode) will not turn into pixels: not an
    image, a format not accepted, truncated, or past the pixel or memory budget. `reason` is
    one of RefusedError.UNREADABLE or TOO_LARGE; `detail` names the file and what came."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class NotFoundError(GlassFinderError):
    """What was asked for does not exist (a key, a version): a 404, not an outage."""


class FaultError(GlassFinderError):
    """Something an operator must fix (a deployment, a corrupt or missing file the product itself
    wrote, a missing published model, a bug): neither a retry nor a quarantine helps; fail loudly."""


class PointerConflictError(RetryableError):
    """A CURRENT pointer moved between reading and swapping it: re-read and try again."""


# --- object store -------------------------------------------------------------------------------
class StoreError(GlassFinderError):
    """A problem talking to or living in the object store. A category: each subclass's other
    base says what to do."""


class InvalidStoreURIError(StoreError, FaultError):
    """The store URI cannot be parsed or names an unsupported scheme."""


class InvalidKeyError(StoreError, BadInputError):
    """An object key is empty, absolute, or escapes the store root."""


class BucketNotFoundError(StoreError, FaultError):
    """The S3 bucket named by the URI does not exist."""


class StoreAuthError(StoreError, FaultError):
    """The credentials were rejected or lack permission."""


class ObjectNotFoundError(StoreError, NotFoundError):
    """The key does not exist."""


class ObjectExistsError(StoreError, FaultError):
    """A create-only write found the key already present (callers that expect it skip; one that
    escapes is a fault)."""


class StaleWriteError(StoreError, RetryableError):
    """A compare-and-swap write found a different version than expected."""


class StoreUnavailableError(StoreError, RetryableError):
    """The store kept failing with transient errors after every retry."""


class StoreFaultError(StoreError, FaultError):
    """The store misbehaves in a way a retry will not fix (a server that will not start, a
    response that makes no sense, a guarantee it ignores, a full disk): an operator must look."""


class StoreConfigError(StoreError, FaultError):
    """The store client's settings (S3Config, the GLASSFINDER_S3_* variables) are out of range or
    cannot be parsed: fix the deployment's configuration."""


# --- assets -------------------------------------------------------------------------------------
class BadAssetError(GlassFinderError):
    """An asset's bytes cannot be used (unparseable, parts missing, cannot be fitted): quarantine
    it for good, since the same bytes fail the same way every night."""


# --- Parquet shards -----------------------------------------------------------------------------
class ShardError(FaultError):
    """A Parquet shard cannot be written or read (the product wrote it: a fault, except that the
    embed job quarantines an unreadable image shard and tries it again next run)."""


class ShardSchemaError(ShardError):
    """A shard lacks a column or has one of the wrong type."""


class ShardCorruptError(ShardError):
    """A shard's bytes are not a readable Parquet file (truncated, overwritten, not Parquet)."""


# --- index --------------------------------------------------------------------------------------
class IndexStoreError(GlassFinderError):
    """An index cannot be built, published, promoted or read. A category: each subclass's other
    base says what to do."""


class PublishConflictError(IndexStoreError, RetryableError):
    """Another publisher took the version number or moved CURRENT first."""


class VersionNotFoundError(IndexStoreError, NotFoundError):
    """The index version was never published (or only partly)."""


class GateRefusedError(IndexStoreError, BadInputError):
    """The quality gate refused to promote a candidate that evaluates worse than CURRENT."""


class IndexCorruptError(IndexStoreError, FaultError):
    """A version's file does not match the sha256 or size its manifest records."""


class IndexBuildError(IndexStoreError, FaultError):
    """An index cannot be built or read because a step before it has not run (no CURRENT version
    yet, no published model, no feature shards): an operator runs that step; a retry cannot help."""


class IndexRequestError(IndexStoreError, BadInputError):
    """A request about an index that cannot be done as asked (remove products it does not hold,
    roll back with no version to go to, publish a first version without a model): change it."""


# --- catalogue ----------------------------------------------------------------------------------
class AssetSourceError(BadInputError):
    """A manifest row's asset is refused before or while it is read (never parsed).

    `reason` is the short code the quarantine report carries (outside_roots, not_a_file,
    too_large, bad_uri, missing_asset, unreadable_asset).
    """

    def __init__(self, uri: str, reason: str, message: str) -> None:
        super().__init__(f"asset {uri!r}: {message}")
        self.reason = reason


class CatalogShrinkError(BadInputError):
    """An ingest would empty the catalogue or remove more of it than allowed; nothing changed.

    Bad input, not an outage: retrying the same export cannot help, an operator must look."""

    #: The refused export's ingest report (its quarantine says why the rows were bad).
    report: object | None = None


class StoreStateError(FaultError):
    """A file the serving side reads from the store is unreadable, corrupt or not a plain file
    (a broken CURRENT, a manifest missing a field, junk inside a Parquet table, a symlink): the
    message names the file and the fix; never retried (the same bytes fail the same way) and
    never reported as a refusal of the shopper's photo."""


class CorruptStoreFileError(StoreStateError):
    """One named file (the catalogue table, an index file) cannot be read as what it should be."""


class CorruptIndexFileError(CorruptStoreFileError, IndexCorruptError):
    """A file of an index version, or its CURRENT, is corrupt although its checksum may match."""


class NotAPlainFileError(StoreError, StoreStateError):
    """A key of the local store is a symlink or not a regular file: refused, never followed."""


# --- index signing ------------------------------------------------------------------------------
class IndexSignatureError(IndexStoreError, FaultError):
    """A version's manifest is unsigned or its HMAC does not match the readers' key."""


def http_status(exc: GlassFinderError) -> int:
    """The HTTP status that answers a request which failed with `exc`."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, RetryableError):
        return 503
    if isinstance(exc, StoreAuthError | BucketNotFoundError | InvalidStoreURIError):
        return 502  # the server's own store is misconfigured: not the client's fault
    if isinstance(exc, RefusedError):
        if exc.reason in RefusedError.TOO_LARGE:
            return 413
        return 415 if exc.reason in RefusedError.UNREADABLE else 422
    if isinstance(exc, BadInputError):
        return 400
    return 500


# --- the catalogue -----------------------------------------------------------------------------------
class ManifestError(BadInputError):
    """The manifest file as a whole cannot be read (a bad row is quarantined instead)."""


# --- manifest cells ----------------------------------------------------------------------------------
class CellError(BadInputError):
    """A cell breaks its column's rule; `expected` says what the rule wants."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


# --- asset budgets -----------------------------------------------------------------------------------
class BudgetError(BadAssetError):
    """An asset's declared geometry breaks a budget (or its JSON cannot be read); `reason` is the
    quarantine code. The loader turns it into its AssetError."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- assets ------------------------------------------------------------------------------------------
class AssetError(BadAssetError):
    """An asset cannot be used; `reason` is a short code for the quarantine report."""

    def __init__(self, name: str, reason: str, message: str) -> None:
        super().__init__(f"asset {name}: {message}")
        self.reason = reason


# --- networks and packaged models --------------------------------------------------------------------
class PretrainedWeightsError(FaultError):
    """ImageNet weights are missing, unreadable, or do not fit the network."""


# --- packaged models ---------------------------------------------------------------------------------
class PackagedModelError(FaultError):
    """A packaged model's files are missing, unreadable or do not match their card."""


# --- photos ------------------------------------------------------------------------------------------
class PhotoError(BadInputError):
    """A photo cannot be used; `reason` is a short code for the quarantine report."""

    def __init__(self, name: str, reason: str, message: str) -> None:
        super().__init__(f"photo {name}: {message}")
        self.reason = reason


# --- rendering ---------------------------------------------------------------------------------------
class AssetUnavailableError(RetryableError):
    """The asset's bytes could not be fetched or do not match the manifest: worth a retry later."""


class RenderWorkerError(FaultError):
    """A render worker could not start or died: a fault of the machine, not of an asset."""


# --- run params --------------------------------------------------------------------------------------
class ParamError(BadInputError):
    """A run param is missing, of the wrong type or out of range."""


# --- pipeline runs -----------------------------------------------------------------------------------
class PipelineStageError(FaultError):
    """A stage of the run failed (its own log says why); the summary names which."""


# --- pipeline tasks ----------------------------------------------------------------------------------
class NoModelError(FaultError):
    """No embedding model is published under the configured name yet."""


# --- searches ----------------------------------------------------------------------------------------
#: What the shopper is told whenever a photo is refused (the reference system's words).
REFUSAL_MESSAGE = "Please use a photo of a face wearing glasses or sunglasses."


class QueryRefusedError(RefusedError):
    """A photo that cannot be searched: `reason` is a stable code, the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{detail}. {REFUSAL_MESSAGE}")
        self.reason = reason
        self.detail = detail


class ImageTooLargeError(QueryRefusedError):
    """More pixels than the limit (a decompression bomb, or just too big)."""


# --- the search service ------------------------------------------------------------------------------
class Overloaded(RetryableError):
    """Every worker is busy and the queue is full (or the wait ran out): retry after a moment."""


# --- local services ----------------------------------------------------------------------------------
class ServiceError(FaultError):
    """A broker or database binary is missing or would not initialise."""


# --- the local deployment ----------------------------------------------------------------------------
class DeploymentError(FaultError):
    """The local Airflow deployment could not be started, checked or stopped."""


# --- the cluster -------------------------------------------------------------------------------------
class ClusterConfigError(BadInputError):
    """A --workers value that names an unknown queue or a bad count."""
