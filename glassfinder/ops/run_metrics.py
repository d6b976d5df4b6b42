"""An Airflow listener that records every GlassFinder DAG run's metrics in the object store.

When a run ends (success or failure) it writes `runs/<dag_id>/<run_id>/metrics.json`: state,
wall time, and for each task instance its state, duration, tries, queue and pool, so the slow
or flaky stage of a night is visible without the Airflow database. It runs in the scheduler
(or in the process of `dag.test()`): it never raises, a failure to record is only logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.listeners import hookimpl

from glassfinder import layout, settings
from glassfinder.store import open_store

log = logging.getLogger(__name__)
METRICS_RECORD = "metrics.json"
DAG_PREFIX = "glassfinder_"


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def run_metrics(dag_run: Any) -> dict[str, Any]:
    """The metrics of a finished DagRun (plain data)."""
    tasks = []
    for ti in dag_run.get_task_instances():
        tasks.append(
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": str(ti.state) if ti.state else None,
                "seconds": _seconds(ti.start_date, ti.end_date),
                "tries": ti.try_number,
                "queue": ti.queue,
                "pool": ti.pool,
            }
        )
    by_state: dict[str, int] = {}
    for t in tasks:
        by_state[str(t["state"])] = by_state.get(str(t["state"]), 0) + 1
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "run_type": str(dag_run.run_type),
        "start": dag_run.start_date.isoformat() if dag_run.start_date else None,
        "end": dag_run.end_date.isoformat() if dag_run.end_date else None,
        "seconds": _seconds(dag_run.start_date, dag_run.end_date),
        "tasks_by_state": by_state,
        "retried_tasks": sum(1 for t in tasks if (t["tries"] or 0) > 1),
        "tasks": sorted(tasks, key=lambda t: (t["task_id"], t["map_index"])),
    }


def record_run(dag_run: Any) -> str | None:
    """Write the metrics of a GlassFinder run to its store; the key written, or None."""
    if not str(dag_run.dag_id).startswith(DAG_PREFIX):
        return None
    try:
        conf = dag_run.conf or {}
        store = open_store(conf.get("store") or settings.store_uri())
        metrics = run_metrics(dag_run)
        key = layout.run_record_key(dag_run.dag_id, dag_run.run_id, METRICS_RECORD)
        store.put(key, json.dumps(metrics, indent=2, sort_keys=True).encode())
        log.info(
            "%s %s %s in %s s (tasks %s); metrics %s/%s",
            dag_run.dag_id,
            dag_run.run_id,
            metrics["state"],
            metrics["seconds"],
            metrics["tasks_by_state"],
            store.uri,
            key,
        )
        return key
    except Exception:  # a listener must never break the scheduler
        log.exception("could not record metrics of %s %s", dag_run.dag_id, dag_run.run_id)
        return None


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    record_run(dag_run)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    record_run(dag_run)
