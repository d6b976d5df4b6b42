"""Admission control in front of the query workers: a bounded queue, and 503 at once past it.

A query is CPU work (~0.1 s on one core); letting a burst queue without bound only makes every
answer late. `Admission` runs queries on its own pool of `workers` threads (so /healthz and
/metrics, served on the event loop, never wait behind them), lets at most `queue_depth` more
wait for a worker, each at most `max_wait_s`, and refuses the rest with `Overloaded` at once,
which the service answers 503 with Retry-After.

Sizing: one worker per core (`--workers N` on N cores); each query's torch and dlib calls use
one core each. queue_depth ~ workers x (the answer time you accept / the time of one query),
and max_wait_s under that answer time. At 2 cores, 2 workers, depth 8 and 1 s keep every
admitted answer within ~1.3 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from glassfinder.errors import BadInputError, Overloaded

T = TypeVar("T")


@dataclass(frozen=True)
class AdmissionLimits:
    workers: int = 2
    queue_depth: int = 8
    max_wait_s: float = 1.0

    def __post_init__(self) -> None:
        for name, lo, hi in (("workers", 1, 256), ("queue_depth", 0, 100_000), ("max_wait_s", 0.0, 3600.0)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise BadInputError(
                    f"AdmissionLimits.{name} must be between {lo:,} and {hi:,}, got {value:,}"
                )


class Admission:
    """Run blocking calls on `workers` threads behind a bounded, time-limited queue."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="gf-query")
        self._free: asyncio.Semaphore | None = None  # made on the serving loop, at first use
        self.waiting = 0
        self.running = 0

    def _semaphore(self) -> asyncio.Semaphore:
        if self._free is None:
            self._free = asyncio.Semaphore(self.limits.workers)
        return self._free

    def full(self) -> bool:
        """No worker free and the queue at its depth: a new query would be refused."""
        return self._semaphore().locked() and self.waiting >= self.limits.queue_depth

    async def run(self, fn: Callable[[], T]) -> T:
        """fn() on a worker, or Overloaded when none frees up in time (never queued past the bound).

        A caller cancelled while fn runs (the request's time ran out) does not free the worker:
        the thread cannot be stopped, so its slot comes back when fn returns."""
        free = self._semaphore()
        if free.locked():
            if self.waiting >= self.limits.queue_depth:
                raise Overloaded(f"all {self.limits.workers} query workers busy and {self.waiting} waiting")
            self.waiting += 1
            try:
                await asyncio.wait_for(free.acquire(), self.limits.max_wait_s)
            except TimeoutError:
                raise Overloaded(f"no query worker free within {self.limits.max_wait_s:g} s") from None
            finally:
                self.waiting -= 1
        else:
            await free.acquire()
        self.running += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn)

        def release(_: object) -> None:
            self.running -= 1
            free.release()

        future.add_done_callback(release)
        return await asyncio.shield(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
