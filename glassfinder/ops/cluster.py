"""What a Celery cluster of GlassFinder runs: its queues, its workers and their commands.

One source for `glassfinder airflow up --executor celery` and for docker/compose.yaml and the
Dockerfile (tests/test_docker.py checks them against `component_args` and `celery_config`):
the same `airflow ...` arguments per component and the same Celery settings, so the compose
cluster runs what the one-machine cluster proves.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from glassfinder import settings
from glassfinder.errors import ClusterConfigError

#: The queues the DAGs route to (glassfinder.pipeline.dag_tasks): default, then gpu.
QUEUES = (settings.DEFAULT_QUEUE, settings.GPU_QUEUE)
#: Workers of each queue `up --executor celery` starts when --workers is not given.
DEFAULT_WORKERS = {settings.DEFAULT_QUEUE: 1, settings.GPU_QUEUE: 1}
#: Tasks one worker runs at once: one, because a render task already uses every core of its
#: worker (render_workers) and an embed or train task the whole GPU. Scale out with workers.
WORKER_CONCURRENCY = 1
#: The environment variable naming a worker on a shared host (see `worker_hostname`).
WORKER_NAME_ENV = settings.WORKER_NAME_ENV


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker: its name (unique within the deployment) and the queue it consumes."""

    name: str
    queue: str
    concurrency: int = WORKER_CONCURRENCY


def parse_workers(text: str | None) -> dict[str, int]:
    """`default=N,gpu=M` -> {queue: count}; queues left out keep their default count."""
    counts = dict(DEFAULT_WORKERS)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        queue, sep, count = part.partition("=")
        queue = queue.strip()
        if not sep or queue not in QUEUES or not count.strip().isdigit():
            raise ClusterConfigError(
                f"--workers expects QUEUE=COUNT[,QUEUE=COUNT] with QUEUE in {list(QUEUES)}, got {part!r}"
            )
        counts[queue] = int(count)
    if counts[settings.DEFAULT_QUEUE] < 1:
        raise ClusterConfigError("--workers needs default=1 or more: every non-GPU task runs there")
    if sum(counts.values()) > 32:
        raise ClusterConfigError(f"--workers asks for {sum(counts.values())} workers; 32 at most here")
    return counts


def worker_specs(counts: dict[str, int]) -> list[WorkerSpec]:
    """Named workers: default-1, default-2, ..., gpu-1, ..."""
    return [WorkerSpec(f"{queue}-{i}", queue) for queue in QUEUES for i in range(1, counts.get(queue, 0) + 1)]


def celery_config(broker_url: str, *, gpu_slots: int = 1) -> dict[str, dict[str, object]]:
    """The Airflow settings of a Celery cluster, by section (the compose file sets the same)."""
    return {
        "core": {"executor": "CeleryExecutor"},
        "operators": {"default_queue": settings.DEFAULT_QUEUE},
        "celery": {
            "broker_url": broker_url,
            # Workers log the device they will embed on, once (glassfinder.ops.celery_worker).
            "celery_config_options": "glassfinder.ops.celery_worker.CELERY_CONFIG",
            "worker_concurrency": WORKER_CONCURRENCY,
            # Tasks run in the worker's own process: prefork's children are daemonic, and a
            # daemonic process may not start the render job's process pool.
            "pool": "solo",
        },
    }


def component_args(component: str, *, port: int | None = None, host: str | None = None) -> list[str]:
    """The `airflow ...` arguments of a component ('worker:QUEUE' for a Celery worker).

    Log servers are off everywhere: every component writes task logs into one log folder (one
    machine, or compose's shared volume), which the api-server reads itself.
    """
    if component == "api-server":
        args = ["api-server"]
        if host:
            args += ["--host", host]
        return args + (["--port", str(port)] if port else [])
    if component in ("scheduler", "triggerer"):
        return [component, "--skip-serve-logs"]
    if component == "dag-processor":
        return ["dag-processor"]
    if component.startswith("worker:") and component[7:] in QUEUES:
        queue = component[7:]
        return [
            "celery",
            "worker",
            "--queues",
            queue,
            "--concurrency",
            str(WORKER_CONCURRENCY),
            "--skip-serve-logs",
        ]
    raise ClusterConfigError(f"unknown component {component!r}")


def worker_hostname() -> str:
    """The host name a task instance records: `NAME@FQDN` on a worker started with a name.

    Several workers of one machine would otherwise all record the same host; with the name, the
    REST API tells which worker ran each task (the Celery node name is the same string). Set as
    Airflow's core.hostname_callable in the workers `glassfinder airflow up` starts.
    """
    name = settings.env(WORKER_NAME_ENV)
    fqdn = socket.getfqdn()
    return f"{name}@{fqdn}" if name else fqdn
