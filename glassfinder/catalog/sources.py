"""Where a manifest row's asset may be read from, and how much of it: allowed roots and a byte budget.

A manifest is written by the shop, so its `asset_uri` column is untrusted input. Before this
module, a row could name `/etc/passwd`, `file:///etc/hostname`, a symlink pointing out of the
export folder or `/dev/zero`, and ingestion would read it (the last one until the kernel killed
the process). Now every URI is resolved against an allow-list of roots:

- the export's own folder (a local directory, or the manifest's key prefix in its bucket);
- the roots the operator configures (`--asset-root URI`, `$GLASSFINDER_ASSET_ROOTS`).

A URI that leaves every root, a device, FIFO, socket or directory, or an object over the byte
budget is refused with a reason code *before any byte is read*; reads are streamed in chunks and
stop before passing the budget, so reading an asset costs at most the budget plus one chunk of
memory, whatever a file claims to be (measured in tests/test_hostile_input.py). Local files are
checked twice: by `realpath` before opening (so nothing outside the roots is ever opened), and
by the opened descriptor's own path and `fstat` before reading (so a symlink swapped in between
the two cannot redirect the read).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from glassfinder import settings
from glassfinder.errors import (
    AssetSourceError,
    BadInputError,
    FaultError,
    InvalidKeyError,
    ObjectNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from glassfinder.store.base import ObjectStore, validate_key
from glassfinder.store.local import LocalStore
from glassfinder.store.s3 import S3Store
from glassfinder.store.uri import parse_store_uri

#: Largest asset file read (bytes). A 300,000-triangle GLB with textures is well under 100 MB.
DEFAULT_MAX_ASSET_BYTES = 256 * 1024 * 1024
#: Upper bound an operator may raise the budget to: an asset is held in memory while parsed.
MAX_ASSET_BYTES_LIMIT = 4 * 1024 * 1024 * 1024
#: Chunk in which assets are streamed; the read stops at most one chunk past the budget.
READ_CHUNK_BYTES = 1024 * 1024
ROOTS_ENV = settings.ASSET_ROOTS_ENV
MAX_BYTES_ENV = settings.MAX_ASSET_BYTES_ENV

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def check_max_asset_bytes(value: int) -> int:
    """`value` if it is a usable asset budget, else BadInputError naming the range."""
    if not 1 <= value <= MAX_ASSET_BYTES_LIMIT:
        raise BadInputError(f"max_asset_bytes must be between 1 and {MAX_ASSET_BYTES_LIMIT:,}, got {value:,}")
    return value


def max_asset_bytes_from_env(environ: dict[str, str] | None = None) -> int:
    """The budget from $GLASSFINDER_MAX_ASSET_BYTES, else the default."""
    raw = settings.env(MAX_BYTES_ENV, environ).strip()
    if not raw:
        return DEFAULT_MAX_ASSET_BYTES
    try:
        return check_max_asset_bytes(int(raw))
    except ValueError:
        raise BadInputError(f"{MAX_BYTES_ENV} must be a whole number of bytes, got {raw!r}") from None


def roots_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """Operator roots from $GLASSFINDER_ASSET_ROOTS (comma-separated store URIs)."""
    raw = settings.env(ROOTS_ENV, environ)
    return [part.strip() for part in raw.split(",") if part.strip()]


def _kind_of(mode: int) -> str | None:
    """'a directory', 'a FIFO', ... for anything but a regular file (None for one)."""
    return next((label for test, label in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a file")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class _S3Root:
    store: S3Store
    prefix: str  # key prefix inside `store` ('' or ending in '/')

    @property
    def full_prefix(self) -> str:
        return self.store.prefix + self.prefix

    def describe(self) -> str:
        return f"s3://{self.store.bucket}/{self.full_prefix}"


@dataclass(frozen=True)
class AssetRoots:
    """The allow-list for one manifest: local folders (real paths) and S3 bucket prefixes.

    `home` is the manifest's own folder; relative asset URIs resolve against it.
    """

    home: str | _S3Root
    local: tuple[str, ...]
    s3: tuple[_S3Root, ...]
    max_bytes: int = DEFAULT_MAX_ASSET_BYTES

    @classmethod
    def for_manifest(
        cls,
        store: ObjectStore,
        manifest_key: str,
        extra_roots: Sequence[str] = (),
        *,
        max_bytes: int = DEFAULT_MAX_ASSET_BYTES,
    ) -> AssetRoots:
        """The export's own folder plus the operator's `extra_roots` (store URIs)."""
        folder = manifest_key.rsplit("/", 1)[0] + "/" if "/" in manifest_key else ""
        home = _home_root(store, folder)
        local: list[str] = [home] if isinstance(home, str) else []
        s3: list[_S3Root] = [home] if isinstance(home, _S3Root) else []
        for uri in extra_roots:
            parsed = parse_store_uri(uri)
            if parsed.scheme == "s3":
                s3.append(_S3Root(S3Store(parsed.location, parsed.prefix), ""))
            else:
                local.append(os.path.realpath(parsed.location))
        return cls(home, tuple(local), tuple(s3), check_max_asset_bytes(max_bytes))

    def describe(self) -> str:
        return ", ".join([*self.local, *(r.describe() for r in self.s3)])

    # --- reading -------------------------------------------------------------------------------
    def read(self, asset_uri: str) -> bytes:
        """The asset's bytes, or AssetSourceError (with its reason) before anything is read."""
        parts = urlsplit(asset_uri)
        if parts.scheme and (parts.query or parts.fragment):
            raise AssetSourceError(asset_uri, "bad_uri", "asset URIs must not carry a query or fragment")
        if parts.scheme == "s3":
            return self._read_s3_uri(asset_uri, parts.netloc, parts.path.lstrip("/"))
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise AssetSourceError(asset_uri, "bad_uri", "file URIs must be file:///absolute/path")
            return self._read_local(asset_uri, unquote(parts.path))
        if parts.scheme and "://" in asset_uri:
            raise AssetSourceError(
                asset_uri, "bad_uri", f"unsupported URI scheme {parts.scheme!r}, expected a relative "
                "path, an absolute path, file:// or s3://"
            )  # fmt: skip
        if asset_uri.startswith("/"):
            return self._read_local(asset_uri, asset_uri)
        key = self._relative_key(asset_uri)
        if isinstance(self.home, str):
            return self._read_local(asset_uri, os.path.join(self.home, key))
        return self._read_s3(asset_uri, self.home, self.home.prefix + key)

    def _relative_key(self, asset_uri: str, key: str | None = None) -> str:
        """`key` (default: the URI itself) as a safe key below a root, or AssetSourceError."""
        key = asset_uri if key is None else key
        try:
            return validate_key(key)
        except InvalidKeyError as exc:
            if ".." in key.replace("\\", "/").split("/"):
                raise AssetSourceError(
                    asset_uri, "outside_roots", "a '..' segment leaves the export's folder"
                ) from None
            raise AssetSourceError(asset_uri, "bad_uri", str(exc)) from None

    def _outside(self, asset_uri: str, where: str) -> AssetSourceError:
        return AssetSourceError(
            asset_uri,
            "outside_roots",
            f"resolves to {where}, outside the allowed roots ({self.describe()}); an operator who "
            "trusts it adds its folder with {option:asset_root}",
        )

    # --- local files ---------------------------------------------------------------------------
    def _read_local(self, asset_uri: str, path: str) -> bytes:
        """Check the resolved path, open without following a last symlink, re-check, then read."""
        real = os.path.realpath(path)
        if not any(_within(real, root) for root in self.local):
            raise self._outside(asset_uri, real)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise AssetSourceError(asset_uri, "missing_asset", f"{real} does not exist") from None
        except OSError as exc:
            raise AssetSourceError(asset_uri, "unreadable_asset", f"cannot stat {real}: {exc}") from None
        self._check_regular(asset_uri, real, st)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(real, flags)
        except OSError as exc:
            raise AssetSourceError(asset_uri, "unreadable_asset", f"cannot open {real}: {exc}") from None
        with os.fdopen(fd, "rb", buffering=0) as fh:
            opened = os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else real
            if not any(_within(opened, root) for root in self.local):
                raise self._outside(asset_uri, opened)  # swapped for a symlink after the check
            self._check_regular(asset_uri, opened, os.fstat(fd))
            return self._read_bounded(asset_uri, fh, real)

    def _check_regular(self, asset_uri: str, path: str, st: os.stat_result) -> None:
        kind = _kind_of(st.st_mode)
        if kind is not None:
            raise AssetSourceError(asset_uri, "not_a_file", f"{path} is {kind}, expected a regular file")
        self._check_size(asset_uri, path, st.st_size)

    def _check_size(self, asset_uri: str, where: str, size: int) -> None:
        if size > self.max_bytes:
            raise AssetSourceError(
                asset_uri,
                "too_large",
                f"{where} has {size:,} bytes, more than the asset budget of {self.max_bytes:,} bytes "
                "({option:max_asset_bytes})",
            )

    def _read_bounded(self, asset_uri: str, fh: BinaryIO, where: str) -> bytes:
        """Read `fh` to its end in chunks, refusing (not truncating) once past the budget.

        The size was checked before; this is what holds when a file grows meanwhile or a
        stream does not know its size.
        """
        buf = io.BytesIO()  # getvalue() hands over its buffer: no second copy of the asset
        while chunk := fh.read(READ_CHUNK_BYTES):
            if buf.tell() + len(chunk) > self.max_bytes:
                raise AssetSourceError(
                    asset_uri,
                    "too_large",
                    f"{where} goes on past the asset budget of {self.max_bytes:,} bytes "
                    "({option:max_asset_bytes}); stopped reading",
                )
            buf.write(chunk)
        return buf.getvalue()

    # --- S3 ------------------------------------------------------------------------------------
    def _read_s3_uri(self, asset_uri: str, bucket: str, full_key: str) -> bytes:
        for root in self.s3:
            if root.store.bucket == bucket and full_key.startswith(root.full_prefix):
                key = full_key[len(root.full_prefix) :]
                return self._read_s3(asset_uri, root, root.prefix + self._relative_key(asset_uri, key))
        raise self._outside(asset_uri, f"s3://{bucket}/{full_key}")

    def _read_s3(self, asset_uri: str, root: _S3Root, key: str) -> bytes:
        where = f"s3://{root.store.bucket}/{root.store.prefix}{key}"
        try:
            self._check_size(asset_uri, where, root.store.head(key).size)
            with root.store.open_read(key) as fh:
                return self._read_bounded(asset_uri, fh, where)
        except ObjectNotFoundError:
            raise AssetSourceError(asset_uri, "missing_asset", f"{where} does not exist") from None
        except StoreUnavailableError:
            raise  # the store's fault, not the asset's: the ingest stops, the catalogue stays as it was
        except StoreError as exc:
            raise AssetSourceError(asset_uri, "unreadable_asset", f"cannot read {where}: {exc}") from exc


def _home_root(store: ObjectStore, folder: str) -> str | _S3Root:
    if isinstance(store, LocalStore):
        return os.path.realpath(store.root / folder) if folder else os.path.realpath(store.root)
    if isinstance(store, S3Store):
        return _S3Root(store, folder)
    raise FaultError(f"cannot read assets from a {type(store).__name__}, expected a local or S3 store")
