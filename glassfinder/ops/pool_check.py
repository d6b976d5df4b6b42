"""An Airflow listener that names a missing pool when a GlassFinder run starts.

A task whose pool does not exist stays `scheduled` forever and its own log stays empty (the
scheduler only says so in its log). Tasks cannot see pools and DAG parsing has no database, so
the check runs in the scheduler when a run starts, in a thread with its own session (never the
scheduler's, see glassfinder.ops.run_metrics), and logs an error an operator can act on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.listeners import hookimpl
from airflow.utils.session import create_session
from sqlalchemy import select

from glassfinder import settings
from glassfinder.ops.deployment import REQUIRED_POOLS

log = logging.getLogger(__name__)


def missing_pools() -> list[str]:
    """The pools the DAGs need that the metadata database lacks."""
    # airflow.models (the metadata database's ORM): only the scheduler, where this hook runs, has that
    # database; the plugin is imported by every Airflow process, task processes included
    from airflow.models.pool import Pool

    with create_session() as session:
        present = set(session.scalars(select(Pool.pool).where(Pool.pool.in_(list(REQUIRED_POOLS)))).all())
    return sorted(set(REQUIRED_POOLS) - present)


def _check(dag_id: str) -> None:
    try:
        for pool in missing_pools():
            slots, description = REQUIRED_POOLS[pool]
            log.error(
                "%s: pool %r does not exist, so its tasks (training, embedding) will wait in 'scheduled' "
                "forever; create it: airflow pools set %s %d %r (glassfinder airflow up and compose's "
                "init do)",
                dag_id,
                pool,
                pool,
                slots,
                description,
            )
    except Exception:  # a listener must never break the scheduler
        log.exception("could not check the pools GlassFinder needs")


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    dag_id = str(getattr(dag_run, "__dict__", {}).get("dag_id", ""))
    if dag_id.startswith(settings.DAG_PREFIX):
        threading.Thread(target=_check, args=(dag_id,), name="glassfinder-pool-check", daemon=True).start()
