"""JSON pointer objects (a name's CURRENT) read with their etag and moved only by compare-and-swap.

Models and indexes both name their live version this way; the swap is what makes two publishers
racing safe: the one whose etag is stale gets StaleWriteError instead of silently winning.
"""

from __future__ import annotations

import json
from typing import Any

from glassfinder.errors import (
    CorruptStoreFileError,
    GlassFinderError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleWriteError,
)
from glassfinder.store.base import ObjectStore


def read_pointer(
    store: ObjectStore, key: str, *, corrupt: type[GlassFinderError] = CorruptStoreFileError
) -> tuple[dict[str, Any] | None, str | None]:
    """(body, etag) of the pointer at `key`, or (None, None) when it does not exist yet.

    A body that is not a JSON object raises `corrupt`, naming the key.
    """
    try:
        info = store.head(key)
        body = json.loads(store.get(key))
    except ObjectNotFoundError:
        return None, None
    except json.JSONDecodeError as exc:
        raise corrupt(f"{store.uri}/{key} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise corrupt(f"{store.uri}/{key} must hold a JSON object, got {type(body).__name__}")
    return body, info.etag


def swap_pointer(store: ObjectStore, key: str, body: dict[str, Any], etag: str | None) -> None:
    """Write `body` at `key` only if the pointer is still at `etag` (None: only if absent).

    Raises StaleWriteError when another writer moved (or created) the pointer first.
    """
    data = json.dumps(body, sort_keys=True).encode()
    try:
        if etag is None:
            store.put(key, data, create_only=True)
        else:
            store.put(key, data, if_match=etag)
    except ObjectExistsError as exc:
        raise StaleWriteError(f"{store.uri}/{key} was created by another writer first") from exc
