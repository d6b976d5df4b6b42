"""The Celery app settings of GlassFinder's cluster: Airflow's own, plus one line in a GPU
worker's log saying which device it will embed and train on.

Airflow's Celery app loads `[celery] celery_config_options` (set to CELERY_CONFIG by
glassfinder.ops.cluster); importing this module there connects the start-up note. A `gpu`
worker without CUDA still takes its tasks (they run on the CPU, as pick_device decides): a slow
night beats a failed one, so the worker only says so, once, when it is ready.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_ready

from glassfinder import settings

log = logging.getLogger("glassfinder.worker")

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)

#: Run in a child interpreter: asking torch about CUDA in the worker itself would initialise
#: CUDA before the worker forks its task processes, which then could not use it.
_PROBE = (
    "import torch; ok = torch.cuda.is_available(); print(torch.cuda.get_device_name(0) if ok else '', end='')"
)


def cuda_device_name(timeout_s: float = 120) -> str | None:
    """The first CUDA device's name, '' if there is none, None if torch could not be asked."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def device_note(queues: list[str], device: str | None) -> str | None:
    """The one line a worker logs about its device; None for a worker without the gpu queue."""
    if settings.GPU_QUEUE not in queues:
        return None
    if device is None:
        return (
            "gpu worker: could not ask torch for CUDA; embedding and training will pick their device per task"
        )
    if not device:
        return "gpu worker: no CUDA device here; embedding and training run on the CPU (slower, same results)"
    return f"gpu worker: embedding and training on CUDA device {device}"


def _queues_of(consumer: Any) -> list[str]:
    try:
        return [q.name for q in consumer.task_consumer.queues]
    except AttributeError:
        return []


@worker_ready.connect
def _say_device(sender: Any = None, **_: Any) -> None:
    queues = _queues_of(sender)
    if settings.GPU_QUEUE not in queues:
        return

    def probe() -> None:
        note = device_note(queues, cuda_device_name())
        if note:
            log.warning(note)

    threading.Thread(target=probe, name="glassfinder-device-note", daemon=True).start()
