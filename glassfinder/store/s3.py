"""S3 backend of the object store, through boto3: AWS S3 or any S3-compatible server.

Endpoint, region and credentials come from an explicit S3Config or, where it leaves them unset,
from boto3's own chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, profiles, instance roles).

Retries: botocore's "standard" mode retries only transient failures (throttling, 5xx, dropped
connections, timeouts) with jittered exponential backoff; a 4xx answer such as a failed
precondition is never retried. Whole-object reads are also retried when the body stream breaks
part-way, which botocore does not do. A conditional write whose first attempt landed but whose
answer was lost comes back as 412 on the retry; when the object's etag then equals the etag of
our own bytes, the write is reported as the success it was.

Deadlines: socket timeouts bound one attempt, not an operation (5 attempts x a 60 s read timeout
once made a paused server look like a five-minute hang). Every call therefore runs under a total
deadline, `deadline_s` plus `nbytes / slow_transfer_bytes_per_s` for calls that move a body,
after which it fails with StoreUnavailableError; the attempt still in flight is told to stop
before any further retry. Each retry is logged with its cause. The call runs in a short-lived
daemon thread that the caller stops waiting for at the deadline; a request that had already
reached the server may still complete there, exactly as when an answer is lost (writes stay
all-or-nothing, and conditional writes stay safe to repeat).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, BinaryIO, TypeVar, cast

import boto3
import botocore.config
import botocore.exceptions

from glassfinder import settings
from glassfinder.errors import (
    BucketNotFoundError,
    InvalidStoreURIError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleWriteError,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreFaultError,
    StoreUnavailableError,
)
from glassfinder.store.base import (
    PROGRESS_EVERY_S,
    ObjectInfo,
    ObjectStore,
    Payload,
    as_stream,
    md5_etag_of_parts,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

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
    read_timeout_s: float = 15.0
    multipart_threshold_bytes: int = 64 * 1024 * 1024
    multipart_part_bytes: int = 16 * 1024 * 1024
    #: Total time one call may take, every attempt and backoff included (for a small object).
    deadline_s: float = 20.0
    #: Slowest transfer still considered alive: a call moving n bytes gets n / this on top.
    slow_transfer_bytes_per_s: int = 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise StoreConfigError(f"S3Config.max_attempts must be between 1 and 20, got {self.max_attempts}")
        for name in ("connect_timeout_s", "read_timeout_s", "deadline_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise StoreConfigError(
                    f"S3Config.{name} must be above 0 and at most 3600 seconds, got {value}"
                )
        if self.slow_transfer_bytes_per_s < 1:
            raise StoreConfigError(
                f"S3Config.slow_transfer_bytes_per_s must be >= 1, got {self.slow_transfer_bytes_per_s}"
            )
        if self.multipart_part_bytes < _MIN_PART_BYTES:
            raise StoreConfigError(
                f"S3Config.multipart_part_bytes must be >= {_MIN_PART_BYTES} (S3's minimum part), "
                f"got {self.multipart_part_bytes}"
            )
        if self.multipart_threshold_bytes < self.multipart_part_bytes:
            raise StoreConfigError(
                "S3Config.multipart_threshold_bytes must be >= multipart_part_bytes, got "
                f"{self.multipart_threshold_bytes} < {self.multipart_part_bytes}"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Config:
        """Budgets from GLASSFINDER_S3_<FIELD> variables (e.g. GLASSFINDER_S3_MAX_ATTEMPTS).

        Endpoint and credentials are read here only from GLASSFINDER_S3_* names; the standard
        AWS_* variables keep working through boto3 itself.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = settings.env(f"{settings.S3_PREFIX}{f.name.upper()}", environ)
            if raw == "":
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = raw if f.name in _STR_FIELDS else kind(raw)
            except ValueError:
                raise StoreConfigError(
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


class _CallAbandoned(Exception):
    """Raised inside a call its caller stopped waiting for, so botocore makes no further attempt."""


@dataclass
class _CallState:
    """What the caller and the thread running one call share."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    attempts: int = 0
    last_error: str = ""


_current = threading.local()


def _note_retry_cause(caught_exception: Exception | None = None, response: Any = None, **_: Any) -> None:
    """needs-retry hook: remember why an attempt failed, for the retry's log line."""
    state: _CallState | None = getattr(_current, "state", None)
    if state is None:
        return
    if caught_exception is not None:
        state.last_error = f"{type(caught_exception).__name__}: {caught_exception}"
    elif response is not None:
        meta = response[1].get("ResponseMetadata", {}) if isinstance(response, tuple) else {}
        code = response[1].get("Error", {}).get("Code", "") if isinstance(response, tuple) else ""
        state.last_error = f"HTTP {meta.get('HTTPStatusCode', '?')} {code}".strip()


def _before_send(request: Any = None, **_: Any) -> None:
    """before-send hook: stop an abandoned call, count attempts and log every retry."""
    state: _CallState | None = getattr(_current, "state", None)
    if state is None:
        return
    if state.cancelled.is_set():
        raise _CallAbandoned("the caller's deadline passed")
    attempt = int(((getattr(request, "context", None) or {}).get("retries") or {}).get("attempt", 1))
    state.attempts = max(state.attempts, attempt)
    if attempt > 1:
        log.warning(
            "S3 %s %s: retry (attempt %d) after %s",
            getattr(request, "method", "?"),
            getattr(request, "url", "?"),
            attempt,
            state.last_error or "a transient error",
        )


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
            self._client.meta.events.register_first("needs-retry.s3", _note_retry_cause)
            self._client.meta.events.register("before-send.s3", _before_send)
        return self._client

    @property
    def endpoint(self) -> str:
        return self.config.endpoint_url or settings.env("AWS_ENDPOINT_URL") or "AWS S3"

    def deadline_for(self, nbytes: int = 0) -> float:
        """Seconds a call moving `nbytes` may take in all (see the module docstring)."""
        return self.config.deadline_s + nbytes / self.config.slow_transfer_bytes_per_s

    def _bounded(self, key: str | None, action: str, fn: Callable[[], T], *, nbytes: int = 0) -> T:
        """fn() under the call's total deadline; StoreUnavailableError once it passes.

        botocore errors come out unchanged (callers translate them); the client is created here,
        in the caller's thread, so configuration errors are not delayed.
        """
        self.client  # noqa: B018 - build (and validate) the client before timing anything
        deadline = self.deadline_for(nbytes)
        state = _CallState()
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            _current.state = state
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the waiting caller
                box["error"] = exc
            finally:
                done.set()

        start = time.monotonic()
        threading.Thread(target=run, name=f"glassfinder-s3 {action}", daemon=True).start()
        if not done.wait(deadline):
            state.cancelled.set()
            where = f"{self.uri}/{key}" if key else self.uri
            cause = f"; last error: {state.last_error}" if state.last_error else ""
            raise StoreUnavailableError(
                f"S3 at {self.endpoint} did not complete {action} {where} within its deadline of "
                f"{deadline:.1f} s ({max(state.attempts, 1)} attempt(s) in {time.monotonic() - start:.1f} s"
                f"{cause}); raise GLASSFINDER_S3_DEADLINE_S if the store is just slow"
            )
        if "error" in box:
            raise box["error"]
        return cast(T, box["value"])

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    # --- error translation ---------------------------------------------------------------------
    def _translate(self, exc: Exception, key: str | None, action: str) -> StoreError:
        where = f"{self.uri}/{key}" if key else self.uri
        endpoint = self.endpoint
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
            return StoreFaultError(f"S3 error {action} {where}: {code or status}: {exc}")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StoreFaultError(f"S3 client error {action} {where}: {exc}")
        raise exc

    def _call(self, key: str | None, action: str, fn: Callable[[], T], *, nbytes: int = 0) -> T:
        try:
            return self._bounded(key, action, fn, nbytes=nbytes)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._translate(exc, key, action) from exc

    def _missing_is_bucket(self, err: StoreError) -> StoreError:
        """HEAD answers a bare 404 for a missing bucket too; tell the two apart."""
        if isinstance(err, ObjectNotFoundError) and not self.bucket_exists():
            return BucketNotFoundError(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
        return err

    # --- bucket --------------------------------------------------------------------------------
    def bucket_exists(self) -> bool:
        try:
            self._bounded(None, "checking bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
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
                nbytes=len(first),
            )
            return ObjectInfo(key=key, size=len(first), etag=_strip_etag(resp["ETag"]))
        return self._put_multipart(key, full, first, stream, cond)

    def _conditional(
        self, key: str, cond: dict[str, str], expected_etag: str, fn: Callable[[], Any], *, nbytes: int = 0
    ) -> Any:
        """Run a (possibly) conditional write and map precondition failures to typed errors."""
        try:
            return self._bounded(key, "writing", fn, nbytes=nbytes)
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
        reported = time.monotonic()
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
                    nbytes=len(chunk),
                )
                parts.append({"ETag": resp["ETag"], "PartNumber": number})
                digests.append(hashlib.md5(chunk).digest())
                size += len(chunk)
                if time.monotonic() - reported >= PROGRESS_EVERY_S:
                    reported = time.monotonic()
                    log.info(
                        "S3 upload %s/%s: %d parts, %.0f MiB so far", self.uri, key, number, size / 2**20
                    )
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
                self._bounded(
                    key,
                    "aborting multipart upload",
                    lambda: self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id
                    ),
                )
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
            body = resp["Body"]
            try:
                return self._bounded(
                    key, "reading the body of", body.read, nbytes=int(resp.get("ContentLength") or 0)
                )
            except _TRANSIENT_EXCEPTIONS as exc:
                if attempt == self.config.max_attempts:
                    raise self._translate(exc, key, "reading") from exc
                log.warning(
                    "S3 get %s/%s: body broke off (%s); retry (attempt %d)", self.uri, key, exc, attempt + 1
                )
                time.sleep(delay_s * (1 + random.random()))  # noqa: S311 - jitter, not crypto
                delay_s *= 2
            except StoreUnavailableError:
                body.close()
                raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        full = self._full_key(key)
        resp = self._call(key, "reading", lambda: self.client.get_object(Bucket=self.bucket, Key=full))
        body = resp["Body"]
        try:
            stream = io.BufferedReader(_TranslatingBody(self, key, body), buffer_size=1024 * 1024)
            yield cast(BinaryIO, stream)
        finally:
            body.close()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # AWS lists in UTF-8 byte order, but some S3-compatible servers (SeaweedFS among them)
        # walk their directory tree instead; sort so callers see one order on every backend.
        validate_prefix(prefix)
        found: list[ObjectInfo] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:  # one deadline per page, so a long listing is not cut off as a whole
            page = self._call(
                prefix or None,
                "listing",
                lambda a=dict(args): self.client.list_objects_v2(**a),  # type: ignore[misc]
            )
            found.extend(
                ObjectInfo(
                    key=obj["Key"][len(self.prefix) :],
                    size=int(obj["Size"]),
                    etag=_strip_etag(obj["ETag"]),
                )
                for obj in page.get("Contents", [])
            )
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                break
            args["ContinuationToken"] = page["NextContinuationToken"]
        found.sort(key=lambda info: info.key.encode())
        yield from found


class _TranslatingBody(io.RawIOBase):
    """A streamed object body whose failures (a read timeout on a stalled server, a dropped
    connection) are StoreUnavailableError like every other store failure, not botocore's own."""

    def __init__(self, store: S3Store, key: str, body: Any) -> None:
        self._store, self._key, self._body = store, key, body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._store._translate(exc, self._key, "reading") from exc
        buffer[: len(data)] = data
        return len(data)
