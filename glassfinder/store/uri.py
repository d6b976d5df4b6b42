"""Store URIs: which backend a URI names, and its parts. The one place URIs are parsed.

Accepted:
  s3://BUCKET[/PREFIX]        S3 (or S3-compatible) bucket, optional key prefix
  file:///ABS/PATH            local directory
  PATH                        local directory (relative paths resolve against the working dir)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from glassfinder.errors import InvalidStoreURIError

# S3 bucket naming rules (3-63 chars, lowercase letters, digits, dots, hyphens; no leading or
# trailing punctuation).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreURI:
    """A parsed store URI: `scheme` is 'file' or 's3'; `location` is a path or a bucket."""

    scheme: str
    location: str
    prefix: str = ""


def split_object_uri(uri: str) -> tuple[str, str]:
    """(store URI, key) of an object URI such as s3://bucket/dir/file.csv or /path/file.csv; a
    bare name is a key in the working directory."""
    head, sep, key = uri.rstrip("/").rpartition("/")
    if not sep or not key:
        return ".", uri
    if head in ("s3:/", "s3:"):
        raise InvalidStoreURIError(f"object URI {uri!r} names a bucket, expected s3://bucket/key")
    return head or "/", key


def parse_store_uri(uri: str) -> StoreURI:
    """Parse `uri` or raise InvalidStoreURIError saying what was expected."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidStoreURIError(f"store URI must be a non-empty string, got {uri!r}")
    if "://" not in uri:
        return StoreURI(scheme="file", location=uri)
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidStoreURIError(f"file URI must be file:///absolute/path (no host), got {uri!r}")
        if not parts.path:
            raise InvalidStoreURIError(f"file URI has no path: {uri!r}")
        return StoreURI(scheme="file", location=parts.path)
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise InvalidStoreURIError(f"S3 URI must be s3://BUCKET[/PREFIX], got {uri!r} (no bucket)")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise InvalidStoreURIError(
                f"S3 URI {uri!r} names an invalid bucket {bucket!r}: expected 3-63 lowercase "
                "letters, digits, dots or hyphens"
            )
        if parts.query or parts.fragment:
            raise InvalidStoreURIError(f"S3 URI must not have a query or fragment, got {uri!r}")
        prefix = parts.path.strip("/")
        if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
            raise InvalidStoreURIError(f"S3 URI {uri!r} has an empty, '.' or '..' path segment")
        return StoreURI(scheme="s3", location=bucket, prefix=prefix)
    raise InvalidStoreURIError(
        f"unsupported store URI scheme {parts.scheme!r} in {uri!r}: expected s3://, file:// or a path"
    )
