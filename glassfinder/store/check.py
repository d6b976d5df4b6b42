"""A live self-check of a store: proves the guarantees the pipeline relies on, on the real backend.

Operators run it (`glassfinder store check URI`) against a newly configured bucket before the
first nightly run; it catches S3-compatible servers that ignore conditional writes, which would
otherwise surface much later as a corrupted index pointer.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from glassfinder.errors import ObjectExistsError, ObjectNotFoundError, StaleWriteError, StoreFaultError
from glassfinder.store.base import ObjectStore

CHECK_PREFIX = "tmp/store-check"


@dataclass
class StoreCheckReport:
    uri: str
    steps: list[tuple[str, float]] = field(default_factory=list)  # (what was proven, seconds)


def check_store(store: ObjectStore) -> StoreCheckReport:
    """Exercise every operation on a scratch key; raise StoreFaultError on the first broken guarantee."""
    report = StoreCheckReport(uri=store.uri)
    key = f"{CHECK_PREFIX}/{uuid.uuid4().hex}"

    def step(what: str, start: float) -> None:
        report.steps.append((what, time.perf_counter() - start))

    t = time.perf_counter()
    first = store.put(key, b"glassfinder store check v1", create_only=True)
    step("create-only put of a new key", t)
    try:
        t = time.perf_counter()
        if store.get(key) != b"glassfinder store check v1" or store.head(key).size != first.size:
            raise StoreFaultError(f"store {store.uri} returned different bytes than were written to {key!r}")
        step("get and head return what was written", t)

        t = time.perf_counter()
        try:
            store.put(key, b"second writer", create_only=True)
        except ObjectExistsError:
            pass
        else:
            raise StoreFaultError(
                f"store {store.uri} ignored a create-only condition (If-None-Match) on {key!r}"
            )
        step("create-only put of an existing key is refused", t)

        t = time.perf_counter()
        second = store.put(key, b"glassfinder store check v2", if_match=first.etag)
        try:
            store.put(key, b"stale writer", if_match=first.etag)
        except StaleWriteError:
            pass
        else:
            raise StoreFaultError(f"store {store.uri} ignored a stale compare-and-swap (If-Match) on {key!r}")
        if store.get(key) != b"glassfinder store check v2" or second.etag == first.etag:
            raise StoreFaultError(f"compare-and-swap on {key!r} in {store.uri} did not replace the object")
        step("compare-and-swap: current etag wins, stale etag refused", t)

        t = time.perf_counter()
        if [info.key for info in store.list(key)] != [key]:
            raise StoreFaultError(f"listing prefix {key!r} in {store.uri} did not return exactly that key")
        step("list by prefix", t)
    finally:
        store.delete(key)
    t = time.perf_counter()
    try:
        store.head(key)
    except ObjectNotFoundError:
        pass
    else:
        raise StoreFaultError(f"deleted key {key!r} is still visible in {store.uri}")
    step("delete", t)
    return report
