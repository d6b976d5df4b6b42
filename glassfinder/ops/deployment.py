"""A one-machine Airflow deployment of GlassFinder: start, check and stop it as one unit.

With `--executor celery` it is a Celery cluster on one machine: Redis (the broker) and
PostgreSQL start in the home too, and Celery workers consume the `default` and `gpu` queues
(glassfinder.ops.cluster says which, and what compose runs); each worker is a component, stopped
by PID like the others. Workers on other hosts join with the same airflow.cfg (README).

`glassfinder airflow up` writes an `airflow.cfg` into its Airflow home (LocalExecutor, the
package's `dags/` and `plugins/`, loopback only), migrates the metadata database, creates
the pools the DAGs need, and starts api-server, scheduler, dag-processor and triggerer, each
in its own process group, recording their PIDs (and kernel start times, so a recycled PID is
never mistaken for ours) in `deployment.json`. `down` stops exactly those process groups.

Airflow's own `standalone` would do much of this, but its log servers bind 0.0.0.0 and it
neither creates pools nor stops cleanly by PID, hence this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glassfinder import settings
from glassfinder.errors import DeploymentError
from glassfinder.ops import cluster, services
from glassfinder.store.seaweed import free_ports

log = logging.getLogger(__name__)

#: The pools the DAGs use, with their slots: created by every deployment (this module, compose's
#: init), because the scheduler leaves a task of a missing pool `scheduled` forever.
REQUIRED_POOLS: dict[str, tuple[int, str]] = {
    settings.GPU_POOL: (1, "GlassFinder embedding and training: one task at a time per GPU"),
}
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EXECUTORS = ("local", "celery")
#: How each service is stopped: PostgreSQL's "fast" shutdown (SIGTERM waits for clients).
_STOP_SIGNAL = {"postgres": signal.SIGINT}
STATE_FILE = "deployment.json"
PASSWORDS_FILE = "passwords.json"
SECRETS_FILE = "secrets.json"
USER = "admin"
DEFAULT_HOME = ".glassfinder/airflow"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class DeploymentConfig:
    """What a single-machine deployment runs with; every path is made absolute."""

    home: Path = field(default_factory=lambda: Path(DEFAULT_HOME))
    port: int = DEFAULT_PORT
    #: The metadata database; SQLite in the home when None (PostgreSQL for anything shared).
    db_url: str | None = None
    store: str = field(default_factory=settings.store_uri)
    dags_folder: Path | None = None
    plugins_folder: Path | None = None
    parallelism: int = 4
    #: "local" (LocalExecutor) or "celery" (a Celery cluster: Redis, PostgreSQL, workers).
    executor: str = "local"
    #: Celery workers per queue (cluster.parse_workers); ignored by the LocalExecutor.
    workers: dict[str, int] = field(default_factory=lambda: dict(cluster.DEFAULT_WORKERS))
    #: Seconds without a heartbeat before a running task's worker is taken for dead and the
    #: task failed (then retried): Airflow's default, lowered in tests.
    heartbeat_timeout_s: int = 300
    #: Seconds before a failed task's first retry (core.default_task_retry_delay).
    retry_delay_s: int = settings.DEFAULT_TASK_RETRY_DELAY_S
    #: Loopback ports of the PostgreSQL and Redis a Celery deployment starts (chosen by `up`).
    db_port: int | None = None
    broker_port: int | None = None
    #: Whether the scheduler starts runs by itself (cron and asset schedules). Off, only runs
    #: triggered by hand or through the API start: a test or a back-fill gets exactly its runs.
    schedules: bool = True

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise DeploymentError(f"--executor must be one of {list(EXECUTORS)}, got {self.executor!r}")
        if self.executor == "celery" and self.db_url and self.db_url.startswith("sqlite"):
            raise DeploymentError(
                "the Celery executor needs PostgreSQL: drop --db-url or give a postgresql:// one"
            )
        if not 30 <= self.heartbeat_timeout_s <= 86400:
            raise DeploymentError(
                f"--heartbeat-timeout must be within 30-86400 s, got {self.heartbeat_timeout_s}"
            )
        if not 1 <= self.retry_delay_s <= 86400:
            raise DeploymentError(f"--retry-delay must be within 1-86400 s, got {self.retry_delay_s}")
        if not 1 <= self.port <= 65535:
            raise DeploymentError(f"--port must be within 1-65535, got {self.port}")
        if self.parallelism < 1:
            raise DeploymentError(f"--parallelism must be >= 1, got {self.parallelism}")
        object.__setattr__(self, "home", self.home.expanduser().resolve())
        if "://" not in self.store:
            object.__setattr__(self, "store", str(Path(self.store).expanduser().resolve()))
        package = package_root()
        for name, default in (("dags_folder", package / "dags"), ("plugins_folder", package / "plugins")):
            folder = (getattr(self, name) or default).expanduser().resolve()
            if not folder.is_dir():
                flag = "--" + name.replace("_folder", "").replace("_", "-")
                raise DeploymentError(
                    f"{flag} folder {folder} does not exist: pass a folder of GlassFinder's "
                    f"{name.removesuffix('_folder')}, or reinstall the package (it ships them)"
                )
            object.__setattr__(self, name, folder)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> str:
        if self.db_url:
            return self.db_url
        if self.executor == "celery":
            return services.postgres_url(self.db_port or 0)
        return f"sqlite:///{self.home / 'airflow.db'}"

    @property
    def celery(self) -> bool:
        return self.executor == "celery"

    @property
    def own_database(self) -> bool:
        """Whether `up` starts the metadata database itself (Celery, no --db-url)."""
        return self.celery and not self.db_url


def package_root() -> Path:
    """The installed glassfinder package: it carries dags/ and plugins/ (package data), so a
    worker on another host that installed the package has the same DAGs as the scheduler."""
    return Path(__file__).resolve().parents[1]


def airflow_cfg(cfg: DeploymentConfig) -> str:
    """The airflow.cfg of the deployment: everything that differs from Airflow's defaults."""
    keys = secrets_of(cfg.home)
    lines: dict[str, dict[str, object]] = {
        "core": {
            "dags_folder": cfg.dags_folder,
            "plugins_folder": cfg.plugins_folder,
            "executor": "LocalExecutor",
            "parallelism": cfg.parallelism,
            "default_task_retry_delay": cfg.retry_delay_s,
            "load_examples": "False",
            "execution_api_server_url": f"{cfg.url}/execution/",
            "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "simple_auth_manager_users": f"{USER}:admin",
            "simple_auth_manager_passwords_file": cfg.home / PASSWORDS_FILE,
        },
        "database": {"sql_alchemy_conn": cfg.database},
        # One secret for every component: the api-server checks the tokens the scheduler's
        # task runners are given (each process would otherwise make up its own).
        "api_auth": {"jwt_secret": keys["jwt_secret"]},
        "api": {
            "host": "127.0.0.1",
            "port": cfg.port,
            "base_url": cfg.url,
            "secret_key": keys["secret_key"],
        },
        "logging": {"base_log_folder": cfg.home / "logs"},
        "scheduler": {
            "standalone_dag_processor": "True",
            "task_instance_heartbeat_timeout": cfg.heartbeat_timeout_s,
            "use_job_schedule": cfg.schedules,
        },
        # The DAG files come with the installed package and change only when it does (a changed
        # file is re-parsed at once, by its mtime): re-importing the unchanged three every 30 s,
        # Airflow's default, kept a tenth of a core busy on an idle deployment.
        "dag_processor": {"refresh_interval": 30, "min_file_process_interval": 300},
    }
    if cfg.celery:
        for section, values in cluster.celery_config(
            services.redis_url(cfg.broker_port or 0), gpu_slots=_gpu_slots(cfg)
        ).items():
            lines[section] = {**lines.get(section, {}), **values}
    out = ["# Written by `glassfinder airflow up`; rewritten on every start.\n"]
    for section, values in lines.items():
        out.append(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return "\n".join(out)


def component_env(cfg: DeploymentConfig) -> dict[str, str]:
    """The environment of every component: the caller's, minus its own Airflow settings."""
    env = {k: v for k, v in settings.environ_copy().items() if not k.startswith("AIRFLOW__")}
    env |= {
        "AIRFLOW_HOME": str(cfg.home),
        "AIRFLOW_CONFIG": str(cfg.home / "airflow.cfg"),
        "GLASSFINDER_STORE_URI": cfg.store,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def _gpu_slots(cfg: DeploymentConfig) -> int:
    """Slots of the gpu pool: one per GPU worker (one with the LocalExecutor)."""
    return max(1, cfg.workers.get(settings.GPU_QUEUE, 0)) if cfg.celery else 1


def _airflow() -> str:
    found = shutil.which("airflow", path=str(Path(sys.executable).parent)) or shutil.which("airflow")
    if not found:
        raise DeploymentError("the `airflow` command is not installed beside glassfinder: run .ci/setup")
    return found


def _commands(cfg: DeploymentConfig) -> dict[str, list[str]]:
    """The Airflow components' commands, from the arguments compose runs too (glassfinder.ops.cluster)."""
    airflow = _airflow()
    return {
        name: [airflow, *cluster.component_args(name, host="127.0.0.1", port=cfg.port)] for name in COMPONENTS
    }


def _worker_command(spec: cluster.WorkerSpec) -> list[str]:
    node = f"{spec.name}@{socket.getfqdn()}"  # the name tasks record too (cluster.worker_hostname)
    return [_airflow(), *cluster.component_args(f"worker:{spec.queue}"), "--celery-hostname", node]


def _worker_env(env: dict[str, str], spec: cluster.WorkerSpec) -> dict[str, str]:
    return env | {
        cluster.WORKER_NAME_ENV: spec.name,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "glassfinder.ops.cluster.worker_hostname",
    }


def _proc_stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...); None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def _start_ticks(pid: int) -> int | None:
    """The kernel's start time of a live process (clock ticks since boot); None if it is gone."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _alive(entry: dict[str, Any]) -> bool:
    return _start_ticks(int(entry["pid"])) == entry["start_ticks"]


def read_state(home: Path) -> dict[str, Any] | None:
    path = home.expanduser().resolve() / STATE_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DeploymentError(
            f"{path} is unreadable ({exc}): stop the processes by hand, then delete it"
        ) from exc


def _run(cmd: list[str], env: dict[str, str], logfile: Path, what: str, timeout_s: float) -> None:
    with logfile.open("ab") as out:
        try:
            done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeploymentError(f"{what} took over {timeout_s:.0f} s; see {logfile}") from None
    if done.returncode:
        raise DeploymentError(f"{what} failed (exit {done.returncode}): {_tail(logfile)} (log: {logfile})")


def _tail(logfile: Path, lines: int = 3) -> str:
    try:
        text = logfile.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text[-lines:])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def secrets_of(home: Path) -> dict[str, str]:
    """The deployment's signing secrets, made on the first start and kept (0600) in its home."""
    path = home / SECRETS_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        made = {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)}
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(made))
        return made


def password(home: Path) -> str:
    """The admin password of the deployment (made on the first `up`, kept across restarts)."""
    path = home / PASSWORDS_FILE
    try:
        return str(json.loads(path.read_text())[USER])
    except (OSError, ValueError, KeyError):
        pw = secrets.token_urlsafe(12)
        path.write_text(json.dumps({USER: pw}))
        path.chmod(0o600)
        return pw


def prepare(cfg: DeploymentConfig, *, timeout_s: float = 600) -> None:
    """Write the config, migrate the database and create the pools (safe to repeat)."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    (cfg.home / "logs").mkdir(exist_ok=True)
    config = cfg.home / "airflow.cfg"
    config.touch(mode=0o600)  # it holds the signing secrets
    config.write_text(airflow_cfg(cfg))
    password(cfg.home)
    env, airflow = component_env(cfg), _airflow()
    logfile = cfg.home / "logs" / "setup.log"
    log.info("migrating the Airflow database %s", cfg.database.split("@")[-1])
    _run([airflow, "db", "migrate"], env, logfile, "airflow db migrate", timeout_s)
    for pool, (slots, description) in REQUIRED_POOLS.items():
        if pool == settings.GPU_POOL:
            slots = _gpu_slots(cfg)
        _run(
            [airflow, "pools", "set", pool, str(slots), description],
            env,
            logfile,
            f"creating pool {pool}",
            120,
        )


def _start(
    cfg: DeploymentConfig,
    state: dict[str, Any],
    name: str,
    cmd: list[str],
    env: dict[str, str],
    *,
    user: str | None = None,
    **extra: Any,
) -> None:
    """Start one component in its own session and record it (PID, start time) in the state file."""
    logfile = cfg.home / "logs" / f"{name}.log"
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cfg.home,
            user=user,
        )
    state["components"][name] = {
        "pid": proc.pid,
        "start_ticks": _start_ticks(proc.pid),
        "log": str(logfile),
        "command": cmd[1:],
        **extra,
    }
    (cfg.home / STATE_FILE).write_text(json.dumps(state, indent=2))


def up(cfg: DeploymentConfig, *, wait_s: float = 180) -> dict[str, Any]:
    """Start the deployment and wait until Airflow reports every component healthy; its state."""
    state = read_state(cfg.home)
    if state and any(_alive(c) for c in state["components"].values()):
        raise DeploymentError(
            f"a deployment is already running from {cfg.home} at {state['url']}: "
            "`glassfinder airflow status` shows it, `glassfinder airflow down` stops it"
        )
    if not _port_free(cfg.port):
        raise DeploymentError(f"port {cfg.port} on 127.0.0.1 is in use: pass another --port")
    if cfg.celery:
        db_port, broker_port = free_ports(2)
        cfg = replace(cfg, db_port=cfg.db_port or db_port, broker_port=cfg.broker_port or broker_port)
    cfg.home.mkdir(parents=True, exist_ok=True)
    (cfg.home / "logs").mkdir(exist_ok=True)
    env = component_env(cfg)
    state = {
        "url": cfg.url,
        "user": USER,
        "home": str(cfg.home),
        "store": cfg.store,
        "executor": cfg.executor,
        "components": {},
    }
    try:
        if cfg.celery:
            assert cfg.broker_port is not None
            redis = services.redis_service(cfg.home, cfg.broker_port)
            _start(cfg, state, "redis", redis.command, env, kind="service")
            state["broker"] = services.redis_url(cfg.broker_port)
            if cfg.own_database:
                assert cfg.db_port is not None
                pg = services.postgres_service(cfg.home, cfg.db_port)
                _start(cfg, state, "postgres", pg.command, env, user=pg.user, kind="service")
                services.create_database(cfg.db_port)
        prepare(cfg)
        for name, cmd in _commands(cfg).items():
            _start(cfg, state, name, cmd, env, kind="airflow")
        if cfg.celery:
            for spec in cluster.worker_specs(cfg.workers):
                _start_worker(cfg, state, spec, env)
        wait_healthy(cfg.home, state, wait_s)
    except BaseException:
        stop(cfg.home)
        raise
    log.info("Airflow is up at %s (user %s)", cfg.url, USER)
    return state


def _start_worker(
    cfg: DeploymentConfig, state: dict[str, Any], spec: cluster.WorkerSpec, env: dict[str, str]
) -> None:
    _start(
        cfg,
        state,
        f"worker {spec.name}",
        _worker_command(spec),
        _worker_env(env, spec),
        kind="worker",
        queue=spec.queue,
        node=f"{spec.name}@{socket.getfqdn()}",
    )


def add_worker(home: Path, queue: str, *, wait_s: float = 120) -> str:
    """Start one more Celery worker of `queue` in a running Celery deployment; its name.

    What replaces a lost worker (or adds capacity) on this machine; `down` stops it too.
    """
    home = home.expanduser().resolve()
    state = read_state(home)
    if not state or not any(_alive(c) for c in state["components"].values()):
        raise DeploymentError(f"no deployment runs from {home}: start one with `glassfinder airflow up`")
    if state.get("executor") != "celery":
        raise DeploymentError(
            f"the deployment in {home} runs the LocalExecutor: workers need --executor celery"
        )
    if queue not in cluster.QUEUES:
        raise DeploymentError(f"--queue must be one of {list(cluster.QUEUES)}, got {queue!r}")
    taken = {c.get("node", "").split("@")[0] for c in state["components"].values()}
    n = 1
    while f"{queue}-{n}" in taken:
        n += 1
    spec = cluster.WorkerSpec(f"{queue}-{n}", queue)
    cfg = DeploymentConfig(
        home=home, port=int(state["url"].rsplit(":", 1)[1]), store=state["store"], executor="celery"
    )
    _start_worker(cfg, state, spec, component_env(cfg))
    _wait_workers_ready({f"worker {spec.name}": state["components"][f"worker {spec.name}"]}, wait_s)
    return spec.name


def _worker_ready(entry: dict[str, Any]) -> bool:
    """Whether a worker's log says Celery is consuming (its "celery@NODE ready." line)."""
    try:
        text = Path(entry["log"]).read_text(errors="replace")
    except OSError:
        return False
    return f"{entry['node']} ready" in text


def _wait_workers_ready(workers: dict[str, dict[str, Any]], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    waiting = dict(workers)
    while waiting and time.monotonic() < deadline:
        for name, entry in list(waiting.items()):
            if not _alive(entry):
                raise DeploymentError(f"{name} exited during start-up: {_tail(Path(entry['log']))}")
            if _worker_ready(entry):
                del waiting[name]
        time.sleep(0.5)
    if waiting:
        raise DeploymentError(f"not ready within {wait_s:.0f} s: {', '.join(waiting)}; see their logs")


def health(url: str) -> dict[str, Any] | None:
    """Airflow's own health report (metadatabase, scheduler, dag processor, triggerer), or None."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as resp:  # noqa: S310
            return dict(json.load(resp))
    except (OSError, ValueError, urllib.error.URLError):
        return None


def unhealthy(report: dict[str, Any] | None) -> list[str]:
    """The components the health report does not call healthy (all of them if there is none)."""
    if report is None:
        return ["api-server"]
    return sorted(k for k, v in report.items() if isinstance(v, dict) and v.get("status") != "healthy")


def wait_healthy(home: Path, state: dict[str, Any], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    bad: list[str] = []
    while time.monotonic() < deadline:
        for name, entry in state["components"].items():
            if not _alive(entry):
                raise DeploymentError(f"{name} exited during start-up: {_tail(Path(entry['log']))}")
        bad = unhealthy(health(state["url"]))
        if not bad:
            workers = {n: e for n, e in state["components"].items() if e.get("kind") == "worker"}
            _wait_workers_ready(workers, max(1.0, deadline - time.monotonic()))
            return
        time.sleep(1)
    raise DeploymentError(f"not healthy within {wait_s:.0f} s: {', '.join(bad)}; logs in {home / 'logs'}")


def status(home: Path) -> dict[str, Any]:
    """Which components run, Airflow's health report and any required pool that is missing."""
    state = read_state(home)
    if state is None:
        return {"running": False, "home": str(home.expanduser().resolve()), "components": {}}
    components = {name: ("running" if _alive(e) else "stopped") for name, e in state["components"].items()}
    report = health(state["url"]) if any(v == "running" for v in components.values()) else None
    bad = unhealthy(report)
    workers = {
        name: {
            "queue": e["queue"],
            "node": e["node"],
            "state": components[name],
            "ready": components[name] == "running" and _worker_ready(e),
        }
        for name, e in state["components"].items()
        if e.get("kind") == "worker"
    }
    bad += sorted(name for name, w in workers.items() if not w["ready"])
    return {
        "running": all(v == "running" for v in components.values()),
        "home": state["home"],
        "url": state["url"],
        "user": state["user"],
        "store": state["store"],
        "executor": state.get("executor", "local"),
        "broker": state.get("broker"),
        "components": components,
        "workers": workers,
        "unhealthy": bad,
        "health": report,
    }


def stop(home: Path, *, grace_s: float = 30) -> list[str]:
    """Stop exactly the process groups `up` started (SIGTERM, then SIGKILL); the names stopped.

    Airflow's components and workers first, then the broker and the database they talk to. A
    task a worker runs is in a process group of its own (Airflow's supervisor makes one): it
    is found before the signals, as a descendant of the worker, and killed if it outlives it.
    """
    home = home.expanduser().resolve()
    state = read_state(home)
    if state is None:
        return []
    # Only groups whose leader is ours now: a group, once signalled, stays ours while it exists
    # (its id cannot be reused before its last member is gone).
    live = {name: e for name, e in state["components"].items() if _alive(e)}
    waves = [
        {n: e for n, e in live.items() if e.get("kind") != "service"},
        {n: e for n, e in live.items() if e.get("kind") == "service"},
    ]
    for wave in waves:
        groups = {name: int(e["pid"]) for name, e in wave.items()}
        strays = {p: _start_ticks(p) for pid in groups.values() for p in descendants(pid)}
        for name, pgid in groups.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, _STOP_SIGNAL.get(name, signal.SIGTERM))
        deadline = time.monotonic() + grace_s
        while any(_group_exists(g) for g in groups.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name, pgid in groups.items():
            if _group_exists(pgid):
                log.warning("%s did not stop within %.0f s: killing its process group", name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        for pid, ticks in strays.items():
            if ticks is not None and _start_ticks(pid) == ticks:  # still that very process
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    (home / STATE_FILE).unlink(missing_ok=True)
    return sorted(live)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(entry.name)
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _group_exists(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(entry.name)
            if fields and int(fields[2]) == pgid:
                return True
    return False
