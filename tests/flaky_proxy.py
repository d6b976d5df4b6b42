"""A loopback HTTP proxy in front of a real S3 server that misbehaves on purpose, on a schedule.

It forwards every request untouched (so SigV4 signatures stay valid) and can, for the first N
requests: answer 503 SlowDown without forwarding, or forward and then drop the connection before
answering (the write lands, the client never hears). That is how the store's retry rules are
tested against the real server rather than a mock.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FlakyProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fail_with_503 = 0  # next N requests: 503 without forwarding
        self.drop_after_forward = 0  # next N requests: forward, then close without answering
        self.only_methods: set[str] | None = None  # misbehave only on these methods
        self.only_paths_containing: str | None = None  # ... and only on these paths
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status returned)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._next_action(self.command, self.path)
                if action == "503":
                    proxy._record(self.command, self.path, 503)
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if action == "drop":
                    proxy._record(self.command, self.path, -1)
                    self.close_connection = True
                    self.connection.close()
                    return
                proxy._record(self.command, self.path, resp.status)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _next_action(self, method: str, path: str = "") -> str:
        with self._lock:
            if self.only_methods is not None and method not in self.only_methods:
                return "forward"
            if self.only_paths_containing is not None and self.only_paths_containing not in path:
                return "forward"
            if self.fail_with_503 > 0:
                self.fail_with_503 -= 1
                return "503"
            if self.drop_after_forward > 0:
                self.drop_after_forward -= 1
                return "drop"
            return "forward"

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))


@contextmanager
def flaky_proxy(upstream_url: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(upstream_url)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
