"""A throwaway PostgreSQL server for tests: Debian's binaries, a temp cluster, a free loopback port.

Started by the test that needs it and stopped by its postmaster's PID. As root (CI containers),
the cluster belongs to the `postgres` user, because initdb refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from glassfinder.store.seaweed import free_ports


def pg_bin() -> Path:
    """The folder of Debian's PostgreSQL server binaries (the newest installed)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run .ci/setup (it installs Debian's postgresql)")
    return found[-1].parent


@dataclass
class PostgresServer:
    #: A folder of its own under the system temp dir (pytest's are private to root, and the
    #: cluster's owner must reach it).
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gf-pg-")))
    port: int = 0
    pid: int = 0
    user: str = "airflow"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/airflow"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self) -> PostgresServer:
        bin_dir = pg_bin()
        data = self.root / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.port = free_ports(1)[0]

        def run(cmd: list[str]) -> None:
            done = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, timeout=120)
            if done.returncode:
                raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

        run([str(bin_dir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust"])
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.root / "pg.log"),
                "-w",
                "start",
            ]
        )
        self.pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "airflow"])
        return self

    def stop(self) -> None:
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGINT)  # "fast" shutdown
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{self.pid}").exists():
            os.kill(self.pid, signal.SIGKILL)
        self.pid = 0
        shutil.rmtree(self.root, ignore_errors=True)
