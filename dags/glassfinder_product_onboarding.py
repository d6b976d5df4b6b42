"""New products onboarding: make new or changed products searchable without a full re-index.

Triggered with a run conf naming the products (`products`: manifest rows, or `manifest_delta`:
the URI of a manifest holding only them; `remove_products` to take some out), through the REST
API or `airflow dags trigger -c '{...}'`, and by an Asset event whenever the shop's catalogue
export changes (a watcher in the triggerer polls it; the event can also be posted to the REST
API). Without products in the conf, the catalogue catches up with the export. The changed
products are merged into the catalogue, rendered and embedded exactly as the CURRENT index's
own vectors were, and published as a child version of CURRENT through the quality gate.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.sdk import Asset, AssetWatcher, Param, TriggerRule, dag, task

from glassfinder import settings
from glassfinder.pipeline import tasks
from glassfinder.pipeline.assets import CATALOG_SOURCE
from glassfinder.pipeline.config import TASK_DEFAULTS, param_specs
from glassfinder.pipeline.dag_tasks import render_and_embed, summary
from glassfinder.pipeline.watch import SourceManifestTrigger

SOURCE_CHANGED = Asset(
    *CATALOG_SOURCE,
    watchers=[
        AssetWatcher(
            name="glassfinder_catalog_source_watcher",
            trigger=SourceManifestTrigger(settings.source_manifest_uri(), settings.store_uri()),
        )
    ],
)


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=[SOURCE_CHANGED],
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=TASK_DEFAULTS,
    params={name: Param(**spec) for name, spec in param_specs("onboarding").items()},
    tags=["glassfinder"],
)
def glassfinder_product_onboarding() -> None:
    @task
    def merge_products(params=None):
        return tasks.onboard_catalog(params)

    @task
    def plan(catalog, params=None):
        return tasks.plan_onboarding(params, catalog)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def publish(plan, catalog, params=None):
        return tasks.publish_onboarding(params, plan, catalog)

    catalog = merge_products()
    planned = plan(catalog)
    rendered, embedded = render_and_embed(planned)
    published = publish(planned, catalog)
    embedded >> published
    summary(
        ["catalogue", "plan", "render", "embed", "publish"],
        catalog=catalog,
        plan=planned,
        rendered=rendered,
        embedded=embedded,
        published=published,
    )


glassfinder_product_onboarding()
