"""Training data for the embedding model: render the catalogue under a render spec from the params.

The params describe the spec (image size, views, faces, pose ranges, lens palette, seed, any
other field in `spec_overrides`); its hash names the image shards, so asking again for the same
spec renders nothing. With `train=true` a model is trained on the new shards (on the `gpu`
queue), published under its sha and made CURRENT; that announces the model's Asset, which
starts `glassfinder_catalog_reindex` with the new model.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.sdk import Asset, Param, TriggerRule, dag, task

from glassfinder import settings
from glassfinder.pipeline import tasks
from glassfinder.pipeline.assets import model_asset
from glassfinder.pipeline.config import TASK_DEFAULTS, param_specs
from glassfinder.pipeline.dag_tasks import render_all, summary, train

NEW_MODEL = Asset(*model_asset(settings.model_name()))


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=TASK_DEFAULTS,
    params={name: Param(**spec) for name, spec in param_specs("training").items()},
    tags=["glassfinder"],
)
def glassfinder_training_data() -> None:
    @task
    def plan(params=None):
        return tasks.plan_training(params)

    # Runs when render had nothing to do too (its mapped task is then skipped): retraining on
    # shards that already exist must still train.
    @task.short_circuit(ignore_downstream_trigger_rules=False, trigger_rule=TriggerRule.NONE_FAILED)
    def train_requested(params=None):
        return tasks.should_train(params)

    planned = plan()
    rendered = render_all(planned)
    trained = train.override(outlets=[NEW_MODEL])(planned)
    rendered >> train_requested() >> trained
    # The training result is pulled by task id, and only when training was asked for (see summary).
    trained >> summary(["plan", "render", "train"], plan=planned, rendered=rendered, train_task="train")


glassfinder_training_data()
