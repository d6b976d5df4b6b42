"""The broker and the metadata database a one-machine Celery cluster starts: Debian's
redis-server and PostgreSQL, each in the deployment's home, listening on 127.0.0.1 only.

Each runs in the foreground, so `glassfinder airflow down` stops it by PID like any other
component. PostgreSQL refuses to run as root: as root (CI containers) the cluster belongs to
the `postgres` user, so the home must be reachable by it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from glassfinder.errors import ServiceError

PG_DATABASE = "airflow"
PG_USER = "airflow"


@dataclass(frozen=True)
class Service:
    """How to start one service: its command, the OS user to run it as (None: ours)."""

    command: list[str]
    user: str | None = None


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        raise ServiceError(
            "redis-server (or valkey-server) is not installed: run .ci/setup, or apt-get install redis-server"
        )
    return found


def redis_service(home: Path, port: int) -> Service:
    """A Redis broker in home/redis: loopback, no persistence (a lost queue is re-sent by the
    scheduler, which owns task state), no protected-mode surprises."""
    data = home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return Service(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
    )


def redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise ServiceError("PostgreSQL is not installed: run .ci/setup (it installs Debian's postgresql)")
    return found[-1].parent


def postgres_service(home: Path, port: int) -> Service:
    """PostgreSQL with its cluster in home/postgres (made by initdb on the first start)."""
    data = home / "postgres"
    user = "postgres" if os.geteuid() == 0 else None
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user:
            owner = pwd.getpwnam(user)
            os.chown(data, owner.pw_uid, owner.pw_gid)
        done = subprocess.run(
            [str(_pg_bin() / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust"],
            capture_output=True,
            text=True,
            timeout=180,
            user=user,
            check=False,
        )
        if done.returncode:
            hint = f" (is {home} reachable by the postgres user?)" if user else ""
            raise ServiceError(f"initdb {data} failed{hint}: {(done.stdout + done.stderr).strip()[-500:]}")
    return Service(
        [
            str(_pg_bin() / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        user=user,
    )


def postgres_url(port: int) -> str:
    return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"


def create_database(port: int, *, timeout_s: float = 60) -> None:
    """Create the `airflow` database once the server answers (no-op when it exists)."""
    # psycopg2 (a native driver): only a PostgreSQL metadata database needs it, kept off --help
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres")
            break
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise ServiceError(f"PostgreSQL on 127.0.0.1:{port} did not answer: {exc}") from exc
            time.sleep(0.3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        conn.close()
