"""Local-directory backend of the object store: the default for one-machine runs and tests.

Every write goes to a temporary file under `<root>/.gf-tmp/` (same filesystem, so the final
rename is atomic), is fsynced, then committed under a per-key lock: `os.replace` for plain and
compare-and-swap writes, `os.link` (fails if the name exists) for create-only writes. A crash at
any point leaves either the old object or the new one under the final name, never a part.

The etag is derived from the file's inode, size and modification time; the commit stamps a
modification time whose low bits are random, so two successive versions of a key never share an
etag even when written within the same clock tick.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from glassfinder.errors import (
    InvalidStoreURIError,
    NotAPlainFileError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleWriteError,
    StoreAuthError,
    StoreFaultError,
)
from glassfinder.store.base import (
    COPY_CHUNK_BYTES,
    ObjectInfo,
    ObjectStore,
    Payload,
    as_stream,
    validate_key,
    validate_prefix,
)

_TMP_DIR = ".gf-tmp"
_LOCK_DIR = ".gf-locks"
_RANDOM_NS_BITS = 20  # ~1 ms of jitter in the stamped modification time


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStore(ObjectStore):
    """Objects as files under a root directory; keys map to relative paths."""

    has_local_files = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidStoreURIError(f"local store root must be a directory, but {self.root} is a file")

    # --- helpers -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _tmp_path(self) -> Path:
        tmp_dir = self.root / _TMP_DIR
        tmp_dir.mkdir(parents=True, exist_ok=True)
        return tmp_dir / f"{uuid.uuid4().hex}.part"

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        lock_dir = self.root / _LOCK_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        with open(lock_dir / name, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _os_errors(self, key: str, action: str) -> Iterator[None]:
        try:
            yield
        except PermissionError as exc:
            raise StoreAuthError(f"permission denied {action} {key!r} in {self.uri}: {exc}") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFaultError(f"no space left {action} {key!r} in {self.uri}") from exc
            raise

    def _commit(self, tmp: Path, key: str, *, create_only: bool, if_match: str | None) -> ObjectInfo:
        """Make the fsynced temporary file `tmp` the object `key`, honouring the condition."""
        final = self._path(key)
        now = time.time_ns()
        stamp = (now >> _RANDOM_NS_BITS << _RANDOM_NS_BITS) | secrets.randbits(_RANDOM_NS_BITS)
        os.utime(tmp, ns=(now, stamp))
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._key_lock(key):
                if create_only:
                    try:
                        os.link(tmp, final)
                    except FileExistsError:
                        raise ObjectExistsError(
                            f"create-only write refused: {key!r} already exists in {self.uri}"
                        ) from None
                else:
                    if if_match is not None:
                        try:
                            current = _etag(os.stat(final))
                        except FileNotFoundError:
                            raise StaleWriteError(
                                f"compare-and-swap on {key!r} in {self.uri} expected etag "
                                f"{if_match!r}, but the key does not exist"
                            ) from None
                        if current != if_match:
                            raise StaleWriteError(
                                f"compare-and-swap on {key!r} in {self.uri} expected etag "
                                f"{if_match!r}, found {current!r}: someone else wrote it first"
                            )
                    os.replace(tmp, final)
                st = os.stat(final)
                info = ObjectInfo(key=key, size=st.st_size, etag=_etag(st))
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return info
        finally:
            tmp.unlink(missing_ok=True)

    # --- writes --------------------------------------------------------------------------------
    def put(
        self, key: str, data: Payload, *, create_only: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        validate_key(key)
        with self._os_errors(key, "writing"):
            tmp = self._tmp_path()
            try:
                with open(tmp, "wb") as dst:
                    src = as_stream(data)
                    while chunk := src.read(COPY_CHUNK_BYTES):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return self._commit(tmp, key, create_only=create_only, if_match=if_match)

    @contextlib.contextmanager
    def writer(
        self, key: str, *, create_only: bool = False, if_match: str | None = None
    ) -> Iterator[BinaryIO]:
        with self.writer_path(key, create_only=create_only, if_match=if_match) as tmp, open(tmp, "wb") as fh:
            yield fh

    @contextlib.contextmanager
    def writer_path(
        self, key: str, *, create_only: bool = False, if_match: str | None = None
    ) -> Iterator[Path]:
        validate_key(key)
        with self._os_errors(key, "writing"):
            tmp = self._tmp_path()
            try:
                yield tmp
                fd = os.open(tmp, os.O_RDONLY)  # the writer closed its own handle: fsync by another
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._commit(tmp, key, create_only=create_only, if_match=if_match)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._os_errors(key, "deleting"), self._key_lock(key), contextlib.suppress(FileNotFoundError):
            path.unlink()

    # --- reads ---------------------------------------------------------------------------------
    def _plain(self, key: str, path: Path) -> None:
        """Refuse a key reached through a symlink (itself or a folder on its way): keys are read as
        plain files under the root, so a CURRENT linked to /etc/passwd is never opened."""
        real_root = os.path.realpath(self.root)
        if os.path.realpath(path) != os.path.join(real_root, *key.split("/")):
            raise NotAPlainFileError(
                f"{self.uri}/{key} is a symlink (or lies under one): the local store reads keys only as "
                "plain files; replace it with the file itself"
            )

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"object {key!r} not found in {self.uri}") from None
        self._plain(key, path)
        if stat.S_ISDIR(st.st_mode):
            raise ObjectNotFoundError(f"object {key!r} not found in {self.uri} (it is a directory)")
        if not stat.S_ISREG(st.st_mode):
            raise NotAPlainFileError(f"{self.uri}/{key} is not a regular file (a device, FIFO or socket)")
        return ObjectInfo(key=key, size=st.st_size, etag=_etag(st))

    def get(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            # O_NOFOLLOW: a symlink is refused, not followed; O_NONBLOCK: a FIFO does not hang open().
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"object {key!r} not found in {self.uri}") from None
        except PermissionError as exc:
            raise StoreAuthError(f"permission denied reading {key!r} in {self.uri}") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotAPlainFileError(
                    f"{self.uri}/{key} is a symlink: the local store reads keys only as plain files; "
                    "replace it with the file itself"
                ) from None
            raise
        fh = os.fdopen(fd, "rb")
        with fh:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise ObjectNotFoundError(f"object {key!r} not found in {self.uri} (it is a directory)")
            if not stat.S_ISREG(mode):
                raise NotAPlainFileError(f"{self.uri}/{key} is not a regular file (a device, FIFO or socket)")
            self._plain(key, path)
            os.set_blocking(fd, True)
            yield fh

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        self.head(key)
        yield self._path(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if not d.startswith(".gf-")]
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # deleted while listing
                    continue
                found.append(ObjectInfo(key=key, size=st.st_size, etag=_etag(st)))
        found.sort(key=lambda info: info.key.encode())
        yield from found
