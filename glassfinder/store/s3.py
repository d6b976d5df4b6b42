"""S3 backend of the object store, through boto3: AWS S3 or any S3-compatible server.

Endpoint, region and credentials come from an explicit S3Config or, where it leaves them unset,
from boto3's own chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, profiles, instance roles).

Retries: botocore's "standard" mode retries only transient failures (throttling, 5xx, dropped
connections, timeouts) with jittered exponential backoff; a 4xx answer such as a failed
precondition is never retried. Whole-object reads are also retried when the body stream breaks
part-way, which botocore does not do. A conditional write whose first attempt landed but whose
answer was lost comes back as 412 on the retry; when the object's etag then equals the etag of
our own bytes, the write is reported as the success it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, BinaryIO, TypeVar, cast

import boto3
import botocore.config
import botocore.exceptions

from glassfinder.errors import (
    BucketNotFoundError,
    InvalidStoreURIError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleWriteError,
    StoreAuthError,
    StoreError,
    StoreUnavailableError,
)
from glassfinder.store.base import (
    ObjectInfo,
    ObjectStore,
    Payload,
    as_stream,
    md5_etag_of_parts,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")

_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}
_TRANSIENT_EXCEPTIONS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
)
_MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest allowed part (but the last)


@dataclass(frozen=True)
class S3Config:
    """How to reach S3; None leaves a field to boto3's environment/config-file chain.

    Budgets carry their units in their names. Parts of `multipart_part_bytes` are held in memory
    one at a time, so a 10 GB upload needs only that much memory.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    multipart_threshold_bytes: int = 64 * 1024 * 1024
    multipart_part_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise StoreError(f"S3Config.max_attempts must be >= 1, got {self.max_attempts}")
        if self.multipart_part_bytes < _MIN_PART_BYTES:
            raise StoreError(
                f"S3Config.multipart_part_bytes must be >= {_MIN_PART_BYTES} (S3's minimum part), "
                f"got {self.multipart_part_bytes}"
            )
        if self.multipart_threshold_bytes < self.multipart_part_bytes:
            raise StoreError(
                "S3Config.multipart_threshold_bytes must be >= multipart_part_bytes, got "
                f"{self.multipart_threshold_bytes} < {self.multipart_part_bytes}"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Config:
        """Budgets from GLASSFINDER_S3_<FIELD> variables (e.g. GLASSFINDER_S3_MAX_ATTEMPTS).

        Endpoint and credentials are read here only from GLASSFINDER_S3_* names; the standard
        AWS_* variables keep working through boto3 itself.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"GLASSFINDER_S3_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = raw if f.name in _STR_FIELDS else kind(raw)
            except ValueError:
                raise StoreError(
                    f"GLASSFINDER_S3_{f.name.upper()} must be a {kind.__name__}, got {raw!r}"
                ) from None
        return cls(**values)


_STR_FIELDS = {"endpoint_url", "region", "access_key_id", "secret_access_key", "session_token"}


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _retry_attempts(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


class S3Store(ObjectStore):
    """Objects in an S3 bucket, under an optional key prefix."""

    def __init__(self, bucket: str, prefix: str = "", config: S3Config | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.config = config if config is not None else S3Config.from_env()
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client: Any = None

    # Stores travel to spawned worker processes; boto3 clients do not pickle.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            cfg = self.config
            try:
                session = boto3.session.Session(
                    aws_access_key_id=cfg.access_key_id,
                    aws_secret_access_key=cfg.secret_access_key,
                    aws_session_token=cfg.session_token,
                    region_name=cfg.region,
                )
                self._client = session.client(
                    "s3",
                    endpoint_url=cfg.endpoint_url,
                    region_name=cfg.region or session.region_name or "us-east-1",
                    config=botocore.config.Config(
                        retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
                        connect_timeout=cfg.connect_timeout_s,
                        read_timeout=cfg.read_timeout_s,
                        signature_version="s3v4",
                        s3={"addressing_style": "path"} if cfg.endpoint_url else None,
                        # S3-compatible servers differ in their support of the newer default
                        # trailing checksums; ask for them only where an operation requires it.
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        max_pool_connections=32,
                    ),
                )
            except ValueError as exc:  # e.g. a malformed endpoint URL
                raise InvalidStoreURIError(f"cannot configure S3 client for {self.uri}: {exc}") from exc
        return self._client

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    # --- error translation ---------------------------------------------------------------------
    def _translate(self, exc: Exception, key: str | None, action: str) -> StoreError:
        where = f"{self.uri}/{key}" if key else self.uri
        endpoint = self.config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StoreAuthError(
                f"no S3 credentials found {action} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or a profile / role)"
            )
        if isinstance(exc, _TRANSIENT_EXCEPTIONS):
            return StoreUnavailableError(
                f"S3 at {endpoint} unavailable {action} {where} after "
                f"{self.config.max_attempts} attempts: {exc}"
            )
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _error_code(exc), _http_status(exc)
            if code == "NoSuchBucket":
                return BucketNotFoundError(f"bucket {self.bucket!r} does not exist at {endpoint}")
            if code in ("NoSuchKey", "404") or status == 404:
                return ObjectNotFoundError(f"object {key!r} not found in {self.uri}")
            if code in _AUTH_CODES or status == 403:
                return StoreAuthError(
                    f"S3 at {endpoint} refused the credentials {action} {where} ({code or status})"
                )
            if code == "InvalidBucketName":
                return InvalidStoreURIError(f"invalid bucket name {self.bucket!r} in {self.uri}")
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                return StoreUnavailableError(
                    f"S3 at {endpoint} kept failing {action} {where} after "
                    f"{self.config.max_attempts} attempts ({code or status})"
                )
            return StoreError(f"S3 error {action} {where}: {code or status}: {exc}")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StoreError(f"S3 client error {action} {where}: {exc}")
        raise exc

    def _call(self, key: str | None, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._translate(exc, key, action) from exc

    def _missing_is_bucket(self, err: StoreError) -> StoreError:
        """HEAD answers a bare 404 for a missing bucket too; tell the two apart."""
        if isinstance(err, ObjectNotFoundError) and not self.bucket_exists():
            endpoint = self.config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
            return BucketNotFoundError(f"bucket {self.bucket!r} does not exist at {endpoint}")
        return err

    # --- bucket --------------------------------------------------------------------------------
    def bucket_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _http_status(exc) == 404 or _error_code(exc) in ("NoSuchBucket", "404"):
                return False
            raise self._translate(exc, None, "checking bucket") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._translate(exc, None, "checking bucket") from exc
        return True

    def create_bucket(self) -> None:
        """Create the bucket if missing (for local servers and demos; production buckets are
        provisioned by the platform)."""
        if not self.bucket_exists():
            self._call(None, "creating bucket", lambda: self.client.create_bucket(Bucket=self.bucket))

    # --- writes --------------------------------------------------------------------------------
    def put(
        self, key: str, data: Payload, *, create_only: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        full = self._full_key(key)
        cond: dict[str, str] = {}
        if create_only:
            cond["IfNoneMatch"] = "*"
        if if_match is not None:
            cond["IfMatch"] = f'"{_strip_etag(if_match)}"'
        stream = as_stream(data)
        first = stream.read(self.config.multipart_threshold_bytes)
        if len(first) < self.config.multipart_threshold_bytes:
            expected = hashlib.md5(first).hexdigest()
            resp = self._conditional(
                key,
                cond,
                expected,
                lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=first, **cond),
            )
            return ObjectInfo(key=key, size=len(first), etag=_strip_etag(resp["ETag"]))
        return self._put_multipart(key, full, first, stream, cond)

    def _conditional(self, key: str, cond: dict[str, str], expected_etag: str, fn: Callable[[], Any]) -> Any:
        """Run a (possibly) conditional write and map precondition failures to typed errors."""
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc), _http_status(exc)
            precondition = code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                412,
                409,
            )
            missing_for_cas = "IfMatch" in cond and (code == "NoSuchKey" or status == 404)
            if not (cond and (precondition or missing_for_cas)):
                raise self._translate(exc, key, "writing") from exc
            if precondition and _retry_attempts(exc) > 0:
                with contextlib.suppress(StoreError):
                    current = self.head(key)
                    if current.etag == expected_etag:  # our own earlier attempt landed
                        return {"ETag": current.etag}
            if "IfNoneMatch" in cond:
                raise ObjectExistsError(
                    f"create-only write refused: {key!r} already exists in {self.uri}"
                ) from exc
            found = "the key does not exist" if missing_for_cas else "a different etag"
            with contextlib.suppress(StoreError):
                found = f"etag {self.head(key).etag!r}"
            raise StaleWriteError(
                f"compare-and-swap on {key!r} in {self.uri} expected etag "
                f"{_strip_etag(cond['IfMatch'])!r}, found {found}: someone else wrote it first"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._translate(exc, key, "writing") from exc

    def _put_multipart(
        self, key: str, full: str, first: bytes, stream: BinaryIO, cond: dict[str, str]
    ) -> ObjectInfo:
        part_bytes = self.config.multipart_part_bytes
        upload = self._call(
            key,
            "starting multipart upload",
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=full),
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        digests: list[bytes] = []
        size = 0
        try:
            pending = first
            while True:
                # Keep at least one full part buffered so the last part is never under the minimum.
                while len(pending) < 2 * part_bytes:
                    more = stream.read(part_bytes)
                    if not more:
                        break
                    pending += more
                if not pending:
                    break
                chunk = pending[:part_bytes] if len(pending) >= 2 * part_bytes else pending
                pending = pending[len(chunk) :]
                number = len(parts) + 1
                resp = self._call(
                    key,
                    f"uploading part {number}",
                    lambda c=chunk, n=number: self.client.upload_part(  # type: ignore[misc]
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=c
                    ),
                )
                parts.append({"ETag": resp["ETag"], "PartNumber": number})
                digests.append(hashlib.md5(chunk).digest())
                size += len(chunk)
            expected = md5_etag_of_parts(digests)
            resp = self._conditional(
                key,
                cond,
                expected,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **cond,
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        return ObjectInfo(key=key, size=size, etag=_strip_etag(resp["ETag"]))

    def delete(self, key: str) -> None:
        full = self._full_key(key)
        self._call(key, "deleting", lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    # --- reads ---------------------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo:
        full = self._full_key(key)
        try:
            resp = self._call(
                key, "reading metadata of", lambda: self.client.head_object(Bucket=self.bucket, Key=full)
            )
        except ObjectNotFoundError as err:
            raise self._missing_is_bucket(err) from err
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=_strip_etag(resp["ETag"]))

    def get(self, key: str) -> bytes:
        full = self._full_key(key)
        delay_s = 0.2
        for attempt in range(1, self.config.max_attempts + 1):
            resp = self._call(key, "reading", lambda: self.client.get_object(Bucket=self.bucket, Key=full))
            try:
                return cast(bytes, resp["Body"].read())
            except _TRANSIENT_EXCEPTIONS as exc:
                if attempt == self.config.max_attempts:
                    raise self._translate(exc, key, "reading") from exc
                time.sleep(delay_s * (1 + random.random()))  # noqa: S311 - jitter, not crypto
                delay_s *= 2
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        full = self._full_key(key)
        resp = self._call(key, "reading", lambda: self.client.get_object(Bucket=self.bucket, Key=full))
        body = resp["Body"]
        try:
            yield cast(BinaryIO, io.BufferedReader(body, buffer_size=1024 * 1024))
        finally:
            body.close()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # AWS lists in UTF-8 byte order, but some S3-compatible servers (SeaweedFS among them)
        # walk their directory tree instead; sort so callers see one order on every backend.
        validate_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        found: list[ObjectInfo] = []
        try:
            for page in pages:
                found.extend(
                    ObjectInfo(
                        key=obj["Key"][len(self.prefix) :],
                        size=int(obj["Size"]),
                        etag=_strip_etag(obj["ETag"]),
                    )
                    for obj in page.get("Contents", [])
                )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._translate(exc, prefix or None, "listing") from exc
        found.sort(key=lambda info: info.key.encode())
        yield from found
