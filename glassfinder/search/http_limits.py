"""HTTP budgets a client cannot stretch: header size, count and time, body size and pace, and the
whole request's time; each refusal answered with its own status (431, 408, 413, 503) and counted.

Two layers, because the first limits bite before any ASGI app sees a request:
- `guarded_h11(...)`: uvicorn's h11 protocol (pure Python, `http="h11"`) with h11's own bound on
  an incomplete request head (`max_header_bytes`: past it h11 stops buffering and we answer 431,
  where uvicorn would answer 400) and a timer on the request head (a client dribbling headers
  gets 408 and the connection closed). uvicorn's default httptools protocol has no header size
  limit at all (a 64 MB header was read whole), which is why h11 is chosen here.
- `RequestGuard`, ASGI middleware: header count (431), declared or streamed body size (413, as
  soon as the line is crossed), the wait for each body chunk and for the whole body (408), and
  the request's total time (503 with Retry-After when the work outlives it; 408 while the body
  is still arriving).

uvicorn's own `limit_concurrency` answers 503 to /healthz too, so admission control lives in the
app (search.admission), in front of the query workers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from glassfinder.errors import BadInputError

Reject = Callable[[str], None]

_PHRASES = {408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    """Per-request HTTP budgets (units in the names); validated on construction."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    header_timeout_s: float = 10.0
    max_body_bytes: int = 10 * 1024 * 1024
    body_read_timeout_s: float = 10.0  # longest silence between two body chunks
    request_timeout_s: float = 30.0  # from the request head to the answer, body and work included

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("max_header_bytes", 1024, 1024 * 1024),
            ("max_headers", 8, 10_000),
            ("header_timeout_s", 0.05, 3600.0),
            ("max_body_bytes", 1, 1024**3),
            ("body_read_timeout_s", 0.05, 3600.0),
            ("request_timeout_s", 0.1, 3600.0),
        ):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise BadInputError(f"HttpLimits.{name} must be between {lo:,} and {hi:,}, got {value:,}")


def _json_response(status: int, error: str, detail: str, extra: dict[str, str] | None = None) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_h11(limits: HttpLimits, on_reject: Reject | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a 431 for an oversized head and a 408 for a slow one."""

    def count(outcome: str) -> None:
        if on_reject is not None:
            on_reject(outcome)

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._status_hint: int | None = None
            self._head_started = False
            self._head_timer: asyncio.TimerHandle | None = None
            inner = self.conn.next_event

            def next_event() -> Any:
                try:
                    return inner()
                except h11.RemoteProtocolError as exc:
                    self._status_hint = exc.error_status_hint
                    raise

            self.conn.next_event = next_event  # type: ignore[method-assign]
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_started = False
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._head_started:  # part of a head came, then nothing: a slow client
                count("header_timeout")
                self.transport.write(
                    _json_response(
                        408, "header_timeout", f"the request head took over {limits.header_timeout_s:g} s"
                    )
                )
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if data:
                self._head_started = True
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._cancel_head_timer()
            if self._status_hint == 431:
                count("header_too_large")
                self.transport.write(
                    _json_response(
                        431, "header_too_large", f"the request head is over {limits.max_header_bytes:,} bytes"
                    )
                )
                self.transport.close()
                return
            count("bad_request")
            super().send_400_response(msg)

    return GuardedH11Protocol


class _Stop(Exception):
    """Raised from receive() to stop the app reading a body we have already refused."""


class RequestGuard:
    """ASGI middleware: header count, body size and pace, and the request's total time."""

    def __init__(self, app: Any, limits: HttpLimits, *, on_reject: Reject | None = None) -> None:
        self.app = app
        self.limits = limits
        self.on_reject = on_reject

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lim = self.limits
        headers = scope.get("headers") or []
        if len(headers) > lim.max_headers:
            await self._reject(
                send, 431, "too_many_headers", f"{len(headers)} headers, at most {lim.max_headers}"
            )
            return
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > lim.max_body_bytes:
            await self._reject(
                send, 413, "upload_too_large", f"the upload is larger than {lim.max_body_bytes:,} bytes"
            )
            return
        start = time.monotonic()
        seen = 0
        body_done = scope.get("method") in ("GET", "HEAD")
        refusal: tuple[int, str, str] | None = None
        started = False

        async def guarded_receive() -> Any:
            nonlocal seen, body_done, refusal
            if body_done:
                return await receive()
            left = lim.request_timeout_s - (time.monotonic() - start)
            try:
                message = await asyncio.wait_for(receive(), max(0.001, min(lim.body_read_timeout_s, left)))
            except TimeoutError:
                refusal = (408, "body_timeout", "the request body came too slowly")
                raise _Stop from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > lim.max_body_bytes:
                    refusal = (
                        413,
                        "upload_too_large",
                        f"the upload is larger than {lim.max_body_bytes:,} bytes",
                    )
                    raise _Stop
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if refusal is not None and not started:
                return  # the app's own answer to the cut-off body (a 400): ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(lim.request_timeout_s):
                with contextlib.suppress(_Stop):
                    await self.app(scope, guarded_receive, tracking_send)
        except TimeoutError:
            if refusal is None:
                refusal = (
                    (408, "body_timeout", f"the request body took over {lim.request_timeout_s:g} s")
                    if not body_done
                    else (503, "request_timeout", f"the answer took over {lim.request_timeout_s:g} s")
                )
        if refusal is not None and not started:
            await self._reject(send, *refusal)

    async def _reject(self, send: Any, status: int, error: str, detail: str) -> None:
        if self.on_reject is not None:
            self.on_reject(error)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": json.dumps({"error": error, "detail": detail}).encode()}
        )
