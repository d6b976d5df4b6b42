"""Run the DAGs in this process on embedded defaults: a SQLite Airflow under .glassfinder/airflow.

What the demo, the tests and the pipeline benchmark use instead of a scheduler: the package's
`dags/` and `plugins/`, a migrated metadata database, and `dag.test()`, which runs every task of
one DAG run here, in dependency order, with the same params, mapping and trigger rules as a
deployed Airflow. Airflow reads its configuration when first imported, so `configure` must run
before anything imports `airflow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glassfinder import layout, settings
from glassfinder.errors import BadInputError, DeploymentError, GlassFinderError, PipelineStageError
from glassfinder.pipeline.config import PipelineConfig
from glassfinder.pipeline.summary import SUMMARY_RECORD
from glassfinder.store import open_store

#: The DAG and plugin files the package carries (links to the checkout's dags/ and plugins/ in a
#: source tree, copies in an installed wheel): an Airflow on any host finds them where the code is.
DAGS_DIR = Path(__file__).resolve().parent / "dags"
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
DEFAULT_HOME = Path(".glassfinder/airflow")
#: Pools the DAGs use; a scheduler needs them to exist (`airflow pools set`), dag.test() does not.
POOLS = ("default_pool", "gpu")


def airflow_env(home: Path, *, log_level: str = "INFO") -> dict[str, str]:
    """The environment of an embedded Airflow rooted at `home` (SQLite, no examples)."""
    home = home.resolve()
    return {
        "AIRFLOW__LOGGING__LOGGING_LEVEL": log_level,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": str(settings.DEFAULT_TASK_RETRY_DELAY_S),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def configure(home: Path = DEFAULT_HOME, *, log_level: str = "INFO") -> Path:
    """Point this process's (not yet imported) Airflow at `home` and migrate its database once.

    log_level: of Airflow and the task logs it prints (WARNING keeps a CLI's output readable;
    each run's figures are in its records in the store either way).
    """
    if not DAGS_DIR.is_dir():
        raise DeploymentError(
            f"DAG folder {DAGS_DIR} not found: reinstall the glassfinder package (it ships its DAGs)"
        )
    if "airflow" in sys.modules and settings.env("AIRFLOW_HOME") != str(home.resolve()):
        raise DeploymentError(
            "Airflow was imported before glassfinder.airflow_local.configure(): call it first"
        )
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home, log_level=log_level)
    for name, value in env.items():
        settings.set_env(name, value)
    stamp = home / ".migrated"
    if not stamp.exists():
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env={**settings.environ_copy(), **env},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise DeploymentError(f"airflow db migrate failed in {home}: {proc.stderr.strip()[-2000:]}")
        stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return home.resolve()


@dataclass
class DagRunResult:
    dag_id: str
    run_id: str
    state: str
    seconds: float
    task_states: dict[str, str]
    summary: dict[str, Any]  # the run's summary record ({} if the run wrote none)


def load_dags(path: Path = DAGS_DIR) -> Any:
    """The DagBag of the repository's DAG folder, or of one DAG file (raises on import errors)."""
    # airflow: imported on use, after configure() (Airflow reads its configuration when first imported)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path), known_pools=set(POOLS))
    if bag.import_errors:
        raise DeploymentError(f"DAG import errors: {bag.import_errors}")
    return bag


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, *, check: bool = False) -> DagRunResult:
    """Run one DAG run to the end in this process; its summary record is read back from the store.

    check: raise PipelineStageError, naming the failed tasks, unless the run succeeded.
    The DAG is parsed afresh for every run: in-process runs leave the run conf in the task
    objects' params, which a second run of the same objects would inherit.
    """
    path = DAGS_DIR / f"{dag_id}.py"
    if not path.is_file():
        known = sorted(p.stem for p in DAGS_DIR.glob("*.py"))
        raise BadInputError(f"no DAG file {path}: the DAGs are {known}")
    dag = load_dags(path).get_dag(dag_id)
    start = time.perf_counter()
    run = dag.test(run_conf=conf or {})
    seconds = time.perf_counter() - start
    states = {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
        for ti in run.get_task_instances()
    }
    store = open_store(PipelineConfig.from_params(conf or {}).store)
    try:
        summary = json.loads(store.get(layout.run_record_key(dag_id, run.run_id, SUMMARY_RECORD)))
    except GlassFinderError:
        summary = {}
    result = DagRunResult(dag_id, run.run_id, str(run.state), seconds, states, summary)
    if check and (result.state != "success" or not summary):
        failed = sorted(t for t, state in states.items() if state not in ("success", "skipped"))
        raise PipelineStageError(
            f"{dag_id} {run.run_id} ended {result.state}; tasks not successful: {failed}; "
            f"their logs are under {settings.env('AIRFLOW_HOME')}/logs"
        )
    return result
