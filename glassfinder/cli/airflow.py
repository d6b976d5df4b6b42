"""`glassfinder airflow`: a single-machine Airflow deployment of the DAGs; one command per action."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glassfinder import settings
from glassfinder.cli.common import SubParsers, float_between, int_between
from glassfinder.ops import cluster, deployment


def cmd_airflow_up(args: argparse.Namespace) -> int:
    cfg = deployment.DeploymentConfig(
        home=Path(args.home),
        port=args.port,
        db_url=args.db_url,
        store=args.store or settings.store_uri(),
        dags_folder=Path(args.dags) if args.dags else None,
        plugins_folder=Path(args.plugins) if args.plugins else None,
        parallelism=args.parallelism,
        executor=args.executor,
        workers=cluster.parse_workers(args.workers),
        heartbeat_timeout_s=args.heartbeat_timeout,
        retry_delay_s=args.retry_delay,
        schedules=not args.no_schedules,
    )
    state = deployment.up(cfg, wait_s=args.wait)
    print(
        f"Airflow is up at {state['url']}/ (log in as {state['user']}, password "
        f"{deployment.password(cfg.home)}; stored in {cfg.home / deployment.PASSWORDS_FILE})"
    )
    print(f"store: {state['store']}")
    running = [f"{name} (pid {c['pid']})" for name, c in state["components"].items()]
    print(f"components: {', '.join(running)}")
    if cfg.celery:
        print(f"broker: {state['broker']}; Celery workers (queue): ", end="")
        print(", ".join(f"{c['node']} ({c['queue']})" for c in state["components"].values() if "queue" in c))
    print(
        f"Airflow CLI against it: export AIRFLOW_HOME={cfg.home}; stop it: glassfinder airflow down "
        f"--home {args.home}"
    )
    return 0


def cmd_airflow_down(args: argparse.Namespace) -> int:
    home = Path(args.home)
    stopped = deployment.stop(home)
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing of ours runs from {home}")
    return 0


def cmd_airflow_status(args: argparse.Namespace) -> int:
    report = deployment.status(Path(args.home))
    if args.json:
        print(json.dumps(report, indent=2))
    elif not report["components"]:
        print(f"no deployment started from {report['home']}")
    else:
        print(
            f"{report['url']}/ ({'running' if report['running'] else 'NOT running'}), store {report['store']}"
        )
        for name, state in report["components"].items():
            worker = report["workers"].get(name)
            if worker:
                ready = "ready" if worker["ready"] else "NOT ready"
                state = f"{state}, {ready}, queue {worker['queue']}, node {worker['node']}"
            print(f"  {name}: {state}")
        if report["unhealthy"]:
            print(f"  unhealthy per Airflow: {', '.join(report['unhealthy'])}")
    return 0 if report["running"] and not report["unhealthy"] else 1


def cmd_airflow_worker(args: argparse.Namespace) -> int:
    name = deployment.add_worker(Path(args.home), args.queue, wait_s=args.wait)
    print(f"worker {name} consumes the {args.queue} queue; `glassfinder airflow down` stops it with the rest")
    return 0


def register(sub: SubParsers) -> None:
    af = sub.add_parser(
        "airflow",
        help="a one-machine Airflow deployment of the DAGs (LocalExecutor or a Celery cluster, 127.0.0.1)",
    ).add_subparsers(dest="airflow_command", required=True)
    for name, fn, text in (
        (
            "up",
            cmd_airflow_up,
            "migrate, create pools, start api-server, scheduler, dag-processor and triggerer",
        ),
        ("down", cmd_airflow_down, "stop exactly the processes `up` started"),
        (
            "worker",
            cmd_airflow_worker,
            "start one more Celery worker in a running --executor celery deployment",
        ),
        (
            "status",
            cmd_airflow_status,
            "which components run and what Airflow's health check says (exit 1 if unhealthy)",
        ),
    ):
        p = af.add_parser(name, help=text, description=text)
        p.set_defaults(func=fn)
        p.add_argument("--home", default=".glassfinder/airflow", help="AIRFLOW_HOME of the deployment")
    up_args = af.choices["up"]
    up_args.add_argument(
        "--port", type=int_between(1, 65535), default=8080, help="api-server port on 127.0.0.1"
    )
    up_args.add_argument(
        "--db-url",
        default=None,
        help="metadata database URL (default: SQLite in --home; PostgreSQL to share)",
    )
    up_args.add_argument(
        "--store", default=None, help="GlassFinder store URI (default: $GLASSFINDER_STORE_URI)"
    )
    up_args.add_argument("--dags", default=None, help="DAG folder (default: the package's dags/)")
    up_args.add_argument("--plugins", default=None, help="plugin folder (default: the package's plugins/)")
    up_args.add_argument(
        "--parallelism", type=int_between(1, 256), default=4, help="task slots of the LocalExecutor"
    )
    up_args.add_argument(
        "--wait", type=float_between(1, 3600), default=180, help="seconds to wait for a healthy start"
    )
    up_args.add_argument(
        "--executor",
        choices=deployment.EXECUTORS,
        default="local",
        help="local: LocalExecutor; celery: Redis + PostgreSQL + Celery workers on this machine",
    )
    up_args.add_argument(
        "--workers",
        default=None,
        help="Celery workers per queue, e.g. default=2,gpu=1 (default: one of each)",
    )
    up_args.add_argument(
        "--heartbeat-timeout",
        type=int_between(30, 86400),
        default=300,
        help="seconds without a task heartbeat before its worker is taken for dead (task retried)",
    )
    up_args.add_argument(
        "--retry-delay",
        type=int_between(1, 86400),
        default=settings.DEFAULT_TASK_RETRY_DELAY_S,
        help="seconds before a failed task's first retry (later ones back off from it)",
    )
    up_args.add_argument(
        "--no-schedules",
        action="store_true",
        help="start no run by schedule (cron or asset): only runs triggered by hand or the API",
    )
    wk = af.choices["worker"]
    wk.add_argument("--queue", choices=cluster.QUEUES, default=cluster.QUEUES[0], help="queue to consume")
    wk.add_argument("--wait", type=float_between(1, 3600), default=120, help="seconds to wait until ready")
    af.choices["status"].add_argument("--json", action="store_true", help="print the report as JSON")
