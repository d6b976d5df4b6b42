"""The object-store contract, run identically against the local directory and SeaweedFS."""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

import numpy as np
import pytest

from glassfinder.errors import InvalidKeyError, ObjectExistsError, ObjectNotFoundError, StaleWriteError
from glassfinder.store import ObjectStore

MIB = 1024 * 1024


def test_put_then_get_returns_same_bytes_and_info(store: ObjectStore) -> None:
    data = bytes(range(256)) * 100
    info = store.put("a/b/blob.bin", data)
    assert info.key == "a/b/blob.bin"
    assert info.size == len(data)
    assert store.get("a/b/blob.bin") == data
    assert store.head("a/b/blob.bin") == info


def test_put_from_stream_and_streamed_read(store: ObjectStore) -> None:
    data = b"0123456789" * 50_000
    store.put("stream.bin", io.BytesIO(data))
    with store.open_read("stream.bin") as fh:
        chunks = []
        while chunk := fh.read(65_536):
            chunks.append(chunk)
    assert b"".join(chunks) == data


def test_empty_object_round_trips(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.head("empty").size == 0


def test_overwrite_replaces_content_and_changes_etag(store: ObjectStore) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two")
    assert store.get("k") == b"two"
    assert first.etag != second.etag


def test_missing_key_is_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="'nope/x'"):
        store.get("nope/x")
    with pytest.raises(ObjectNotFoundError, match="'nope/x'"):
        store.head("nope/x")
    with pytest.raises(ObjectNotFoundError), store.open_read("nope/x"):
        pass
    assert not store.exists("nope/x")


def test_create_only_refuses_existing_key_and_keeps_original(store: ObjectStore) -> None:
    store.put("once", b"original", create_only=True)
    with pytest.raises(ObjectExistsError, match="'once' already exists"):
        store.put("once", b"intruder", create_only=True)
    assert store.get("once") == b"original"


def test_compare_and_swap_accepts_current_etag_and_refuses_stale(store: ObjectStore) -> None:
    v1 = store.put("CURRENT", b"v1")
    v2 = store.put("CURRENT", b"v2", if_match=v1.etag)
    assert store.get("CURRENT") == b"v2"
    with pytest.raises(StaleWriteError, match="expected etag"):
        store.put("CURRENT", b"v3-from-stale-reader", if_match=v1.etag)
    assert store.get("CURRENT") == b"v2"
    assert store.head("CURRENT").etag == v2.etag


def test_compare_and_swap_on_missing_key_is_stale(store: ObjectStore) -> None:
    with pytest.raises(StaleWriteError):
        store.put("never-written", b"x", if_match="0123456789abcdef")
    assert not store.exists("never-written")


def test_list_by_prefix_is_sorted_and_complete(store: ObjectStore) -> None:
    keys = ["idx/v2/a", "idx/v1/b", "idx/v1/a", "idx-other/x", "other/y", "idx/v10/z"]
    for k in keys:
        store.put(k, k.encode())
    assert [i.key for i in store.list("idx/")] == ["idx/v1/a", "idx/v1/b", "idx/v10/z", "idx/v2/a"]
    assert [i.key for i in store.list("idx")] == sorted(k for k in keys if k.startswith("idx"))
    assert [i.key for i in store.list()] == sorted(keys)
    assert [i.key for i in store.list("idx/v1")] == ["idx/v1/a", "idx/v1/b", "idx/v10/z"]
    assert list(store.list("absent/")) == []
    sizes = {i.key: i.size for i in store.list()}
    assert sizes["other/y"] == len(b"other/y")


def test_delete_removes_and_tolerates_missing(store: ObjectStore) -> None:
    store.put("gone", b"x")
    store.delete("gone")
    assert not store.exists("gone")
    store.delete("gone")  # idempotent, as on S3


def test_writer_commits_only_on_clean_exit(store: ObjectStore) -> None:
    with store.writer("w/ok") as fh:
        fh.write(b"complete")
    assert store.get("w/ok") == b"complete"
    with pytest.raises(RuntimeError), store.writer("w/broken") as fh:
        fh.write(b"half")
        raise RuntimeError("writer crashed")
    assert not store.exists("w/broken")
    assert [i.key for i in store.list()] == ["w/ok"]


def test_writer_path_commits_only_on_clean_exit_and_honours_create_only(store: ObjectStore) -> None:
    """Native writers (Arrow) write to a path: the same all-or-nothing as `writer`."""
    with store.writer_path("p/ok") as path:
        path.write_bytes(b"complete")
    assert store.get("p/ok") == b"complete"
    with pytest.raises(RuntimeError), store.writer_path("p/broken") as path:
        path.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert not store.exists("p/broken")
    with pytest.raises(ObjectExistsError), store.writer_path("p/ok", create_only=True) as path:
        path.write_bytes(b"another")
    assert store.get("p/ok") == b"complete" and [i.key for i in store.list()] == ["p/ok"]


def test_local_path_holds_object_bytes(store: ObjectStore) -> None:
    store.put("lp", b"payload")
    with store.local_path("lp") as path:
        assert path.read_bytes() == b"payload"


@pytest.mark.parametrize("bad", ["", "/abs", "trail/", "a//b", "a/../b", "./a", "..", "a\\b", ".gf-tmp/x"])
def test_invalid_keys_are_refused(store: ObjectStore, bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put(bad, b"x")


@pytest.mark.parametrize("wrap", ["stream", "memoryview", "bytearray", "float32 array view", "strided view"])
def test_large_object_goes_up_in_parts_and_round_trips(small_part_store: ObjectStore, wrap: str) -> None:
    """A shard built in memory is put as a memoryview over its buffer: every byte must arrive."""
    store = small_part_store
    data = hashlib.sha256(b"seed").digest() * (12 * MIB // 32 + 7)  # ~12 MiB, not part-aligned
    payload: Any = {
        "stream": lambda: io.BytesIO(data),
        "memoryview": lambda: memoryview(data),
        "bytearray": lambda: bytearray(data),
        "float32 array view": lambda: np.frombuffer(data, np.float32).data,
        "strided view": lambda: np.repeat(np.frombuffer(data, np.uint8), 2)[::2].data,
    }[wrap]()
    info = store.put("big/object.bin", payload)
    assert info.size == len(data)
    assert store.head("big/object.bin").size == len(data)
    assert store.head("big/object.bin").etag == info.etag
    assert hashlib.sha256(store.get("big/object.bin")).digest() == hashlib.sha256(data).digest()


def test_large_object_conditions_hold(small_part_store: ObjectStore) -> None:
    store = small_part_store
    data = b"x" * (11 * MIB)
    first = store.put("big/cond.bin", io.BytesIO(data), create_only=True)
    with pytest.raises(ObjectExistsError):
        store.put("big/cond.bin", io.BytesIO(data), create_only=True)
    second = store.put("big/cond.bin", io.BytesIO(b"y" * (11 * MIB)), if_match=first.etag)
    with pytest.raises(StaleWriteError):
        store.put("big/cond.bin", io.BytesIO(data), if_match=first.etag)
    assert store.head("big/cond.bin").etag == second.etag
    assert store.get("big/cond.bin")[:1] == b"y"


def test_racing_create_only_writers_have_exactly_one_winner(store: ObjectStore) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        try:
            store.put("race/version", f"writer-{i}".encode(), create_only=True)
            outcome = f"won-{i}"
        except ObjectExistsError:
            outcome = "lost"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("lost") == 7
    assert store.get("race/version") == f"writer-{winners[0][4:]}".encode()


def test_compare_and_swap_counter_loses_no_update(store: ObjectStore) -> None:
    """Concurrent read-modify-write through CAS: every increment lands exactly once."""
    store.put("counter", b"0")
    per_thread, n_threads = 5, 4

    def increment() -> None:
        done = 0
        while done < per_thread:
            info = store.head("counter")
            value = int(store.get("counter"))
            try:
                store.put("counter", str(value + 1).encode(), if_match=info.etag)
                done += 1
            except StaleWriteError:
                continue

    threads = [threading.Thread(target=increment) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(store.get("counter")) == per_thread * n_threads
