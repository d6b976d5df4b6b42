"""The one bounded cache the engine and the renderer share."""

from __future__ import annotations

import threading

import pytest

from glassfinder.lru import BoundedCache


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a hit: "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def test_threads_share_it_without_losing_the_bound() -> None:
    cache: BoundedCache[int, int] = BoundedCache(64)

    def work(offset: int) -> None:
        for i in range(2000):
            cache.put(offset + i, i)
            cache.get(offset + i // 2)

    threads = [threading.Thread(target=work, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 64


def test_a_cache_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        BoundedCache(0)
