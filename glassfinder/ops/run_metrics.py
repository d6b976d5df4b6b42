"""An Airflow listener that records every GlassFinder DAG run's metrics in the object store.

When a run ends (success or failure) it writes `runs/<dag_id>/<run_id>/metrics.json`: state,
wall time, and for each task instance its state, duration, tries, queue and pool, so the slow
or flaky stage of a night is visible without the Airflow database. It runs in the scheduler
(or in the process of `dag.test()`): it never raises, a failure to record is only logged.

The scheduler calls it inside its locked section, holding its own session: the listener must
not query, flush or commit through that session (doing so crashed the scheduler with "UNEXPECTED
COMMIT" and then DetachedInstanceError). So the hook copies what the event hands over, already
in memory, and reads the task instances in a thread of its own, whose scoped session is not the
scheduler's.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from airflow.listeners import hookimpl
from airflow.utils.session import create_session
from sqlalchemy import inspect, select

from glassfinder import layout, settings
from glassfinder.store import open_store

log = logging.getLogger(__name__)
METRICS_RECORD = "metrics.json"


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


#: How long the hook waits for the record before leaving it to finish in the background.
RECORD_WAIT_S = 10.0
RUN_FIELDS = ("dag_id", "run_id", "state", "run_type", "start_date", "end_date", "conf")


def snapshot(dag_run: Any, state: str) -> dict[str, Any]:
    """The run's fields that are already in memory; never triggers a database load.

    state: what the event says the run became (the row may not be committed yet). Fields that
    are not loaded (expired by a commit, as under dag.test()) are read later by primary key.
    """
    try:
        info = inspect(dag_run)
        loaded = dict(info.dict)
        loaded["id"] = info.identity[0] if info.identity else loaded.get("id")
    except Exception:  # not an ORM object (a test double, a pydantic model)
        loaded = {f: getattr(dag_run, f, None) for f in ("id", *RUN_FIELDS)}
    return {**{f: loaded.get(f) for f in ("id", *RUN_FIELDS)}, "state": state}


def complete(run: dict[str, Any]) -> dict[str, Any]:
    """The snapshot with its missing fields read from the run's row, in this thread's session."""
    missing = [f for f in RUN_FIELDS if run.get(f) is None]
    if not missing or run.get("id") is None:
        return run
    # airflow.models (the metadata database's ORM): only the scheduler, where this hook runs, has that
    # database; the plugin is imported by every Airflow process, task processes included
    from airflow.models.dagrun import DagRun

    with create_session() as session:
        row = session.get(DagRun, run["id"])
        if row is None:
            return run
        return {**run, **{f: getattr(row, f, None) for f in missing}}


def task_rows(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The run's task instances, read through a session of the calling thread's own."""
    # airflow.models (the metadata database's ORM): only the scheduler, where this hook runs, has that
    # database; the plugin is imported by every Airflow process, task processes included
    from airflow.models.taskinstance import TaskInstance as TI

    with create_session() as session:
        tis = session.scalars(select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
        return [
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": str(ti.state) if ti.state else None,
                "seconds": _seconds(ti.start_date, ti.end_date),
                "tries": ti.try_number,
                "queue": ti.queue,
                "pool": ti.pool,
            }
            for ti in tis
        ]


def run_metrics(run: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of a finished run (plain data) from its snapshot and task rows."""
    by_state: dict[str, int] = {}
    for t in tasks:
        by_state[str(t["state"])] = by_state.get(str(t["state"]), 0) + 1
    start, end = run["start_date"], run["end_date"]
    return {
        "dag_id": run["dag_id"],
        "run_id": run["run_id"],
        "state": str(run["state"]),
        "run_type": str(run["run_type"]),
        "start": start.isoformat() if start else None,
        "end": end.isoformat() if end else None,
        "seconds": _seconds(start, end),
        "tasks_by_state": by_state,
        "retried_tasks": sum(1 for t in tasks if (t["tries"] or 0) > 1),
        "tasks": sorted(tasks, key=lambda t: (t["task_id"], t["map_index"])),
    }


def write_record(run: dict[str, Any]) -> str | None:
    """Read the run's tasks and write its metrics to its store; the key written, or None."""
    try:
        run = complete(run)
        if not str(run["dag_id"]).startswith(settings.DAG_PREFIX):
            return None
        conf = run["conf"] or {}
        store = open_store(conf.get("store") or settings.store_uri())
        metrics = run_metrics(run, task_rows(run["dag_id"], run["run_id"]))
        key = layout.run_record_key(run["dag_id"], run["run_id"], METRICS_RECORD)
        store.put(key, json.dumps(metrics, indent=2, sort_keys=True).encode())
        log.info(
            "%s %s %s in %s s (tasks %s); metrics %s/%s",
            run["dag_id"],
            run["run_id"],
            metrics["state"],
            metrics["seconds"],
            metrics["tasks_by_state"],
            store.uri,
            key,
        )
        return key
    except Exception:  # a listener must never break the scheduler
        log.exception("could not record metrics of %s %s", run.get("dag_id"), run.get("run_id"))
        return None


def record_run(dag_run: Any, state: str) -> str | None:
    """Record a GlassFinder run's metrics from a thread of its own; the key, or None."""
    try:
        run = snapshot(dag_run, state)
        if run["dag_id"] is not None and not str(run["dag_id"]).startswith(settings.DAG_PREFIX):
            return None
        result: list[str | None] = [None]
        worker = threading.Thread(
            target=lambda: result.__setitem__(0, write_record(run)),
            name="glassfinder-run-metrics",
            daemon=True,
        )
        worker.start()
        worker.join(RECORD_WAIT_S)
        return result[0]
    except Exception:  # a listener must never break the scheduler
        log.exception("could not record metrics of a run")
        return None


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    record_run(dag_run, "success")


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    record_run(dag_run, "failed")
