"""The Airflow tasks the three DAGs share, declared once: each is one call into glassfinder.pipeline.tasks.

A TaskFlow task declared at module level becomes a task of whichever DAG calls it, so the DAG
files only say which of these they use and how they connect. Queues, pools and trigger rules
are set here, where the stage is defined: rendering on the `default` queue (CPU workers,
Mesa EGL), embedding and training on `gpu` (one task per GPU, through the `gpu` pool). The
LocalExecutor ignores queues; the Celery executor routes by them. A task that lands on the
other kind of worker is not refused: it runs there, just slower (see README, "From one machine
to a cluster").
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TriggerRule, task

from glassfinder import settings
from glassfinder.pipeline import tasks


# Arguments are typed Any: at parse time they are XComArgs, at run time the upstream's JSON.
@task
def batches(plan: Any) -> list[dict[str, Any]]:
    return tasks.batches_of(plan)


@task(queue=settings.DEFAULT_QUEUE)
def render(batch: Any) -> dict[str, Any]:
    return tasks.render(batch)


@task(queue=settings.GPU_QUEUE, pool=settings.GPU_POOL)
def embed(batch: Any) -> dict[str, Any]:
    return tasks.embed(batch)


# The DAG adds the model Asset it announces: train.override(outlets=[...]).
@task(queue=settings.GPU_QUEUE, pool=settings.GPU_POOL)
def train(plan: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
    assert params is not None  # injected by Airflow
    return tasks.train(params, plan)


def render_all(plan: Any) -> Any:
    """Map rendering over the plan's batches of assets."""
    return render.expand(batch=batches(plan))


def render_and_embed(plan: Any) -> tuple[Any, Any]:
    """Map rendering, then embedding (on the GPU queue, batch by batch), over the plan's batches."""
    rendered = render_all(plan)
    return rendered, embed.expand(batch=rendered)


@task(trigger_rule=TriggerRule.ALL_DONE)
def summary(
    stages: list[str],
    catalog: Any = None,
    plan: Any = None,
    rendered: Any = None,
    embedded: Any = None,
    published: Any = None,
    trained: Any = None,
    train_task: str | None = None,
    params: dict[str, Any] | None = None,
    dag: Any = None,
    run_id: str | None = None,
    ti: Any = None,
) -> dict[str, Any]:
    """Runs whatever happened upstream; writes the run's record and fails the run if a stage failed.

    train_task: the id of a training task that may be skipped on purpose; its result is pulled
    only when training was asked for (pulling a skipped task's result logs "[error] XCom not
    found" from Airflow's client, though nothing failed). The DAG orders it before this task.
    """
    assert params is not None and dag is not None and run_id is not None  # injected by Airflow
    if train_task is not None and tasks.should_train(params):
        trained = ti.xcom_pull(task_ids=train_task)
    skipped = [] if "train" not in stages or tasks.should_train(params) else ["train"]
    results = {"catalog": catalog, "plan": plan, "rendered": rendered, "embedded": embedded}
    results |= {"published": published, "trained": trained}
    return tasks.summary(dag.dag_id, run_id, params, stages=stages, skipped=skipped, **results)
