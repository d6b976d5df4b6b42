"""Nightly catalogue re-index.

Ingests the shop's full catalogue export (bad rows are quarantined with their reason), works out
which assets lack renders or feature shards (both content-addressed), renders and embeds only
those in mapped batches (embedding on the `gpu` queue), then rebuilds the index, evaluates it on
held-out query views and publishes it through the quality gate. A night without changes renders
and embeds nothing and publishes no duplicate version. Runs at 02:00 UTC, and whenever a new
embedding model is published (by `glassfinder_training_data`). The last task writes the run's
record to `runs/glassfinder_catalog_reindex/<run_id>/summary.json` in the store.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule, dag, task

from glassfinder import settings
from glassfinder.pipeline import tasks
from glassfinder.pipeline.assets import model_asset
from glassfinder.pipeline.config import TASK_DEFAULTS, param_specs
from glassfinder.pipeline.dag_tasks import render_and_embed, summary

NEW_MODEL = Asset(*model_asset(settings.model_name()))


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=[NEW_MODEL]
    ),
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=TASK_DEFAULTS,
    params={name: Param(**spec) for name, spec in param_specs("reindex").items()},
    tags=["glassfinder"],
)
def glassfinder_catalog_reindex() -> None:
    @task
    def sync_catalog(params=None):
        return tasks.sync_catalog(params)

    @task
    def plan(catalog, params=None):
        return tasks.plan_reindex(params, catalog)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def publish(plan, params=None):
        return tasks.publish_reindex(params, plan)

    catalog = sync_catalog()
    planned = plan(catalog)
    rendered, embedded = render_and_embed(planned)
    published = publish(planned)
    embedded >> published
    summary(
        ["catalogue", "plan", "render", "embed", "publish"],
        catalog=catalog,
        plan=planned,
        rendered=rendered,
        embedded=embedded,
        published=published,
    )


glassfinder_catalog_reindex()
