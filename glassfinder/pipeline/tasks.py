"""What each Airflow task calls: one function per task, params and upstream results in, JSON out.

The DAG files only wire these together. Errors that another attempt cannot fix (bad params, a
bad manifest, a refused gate) fail the task at once instead of burning its retries; store
outages, lost compare-and-swap races and unexpected errors are left to Airflow's retries.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
from glassfinder.catalog.snapshot import CatalogSnapshot, pin_live
from glassfinder.errors import BadInputError, GlassFinderError, NoModelError, RetryableError
from glassfinder.pipeline import catalog as catalog_stage
from glassfinder.pipeline import publish as publish_stage
from glassfinder.pipeline.artefacts import Batch, EmbedTarget, RunPlan
from glassfinder.pipeline.batches import embed_batch, render_batch
from glassfinder.pipeline.config import PipelineConfig
from glassfinder.pipeline.plan import plan_work
from glassfinder.pipeline.summary import summarise
from glassfinder.pipeline.training import train_and_register, training_spec
from glassfinder.render.packshot import PACKSHOT_SPEC
from glassfinder.render.spec import load_saved_spec
from glassfinder.store import open_store

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _fail_fast(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RetryableError:
            raise  # an outage or a lost race: the task's retries are for exactly this
        except GlassFinderError as exc:
            # airflow: only to fail a task; importing it reads Airflow's configuration, which a
            # caller outside Airflow may not have set yet (see glassfinder.airflow_local)
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(exc).__name__}: {exc.speak('dag')}") from exc

    return wrapper  # type: ignore[return-value]


def _snapshot(catalog: Mapping[str, Any]) -> CatalogSnapshot:
    """The catalogue the upstream catalogue task pinned for this run."""
    return CatalogSnapshot.from_json(catalog.get("snapshot"), where="catalogue result.snapshot")


def _waiting_for_a_model(cfg: PipelineConfig, catalog: CatalogSnapshot, exc: NoModelError) -> dict[str, Any]:
    """An empty plan that says why: nothing can be indexed before a model is published."""
    log.warning("%s", exc)
    empty = plan_work(
        open_store(cfg.store),
        catalog,
        [],
        product_ids=[],
        assets_per_batch=cfg.assets_per_batch,
        max_batches=cfg.max_batches,
    )
    return empty.waiting_for_a_model(str(exc)).to_json()


def _no_model_result(plan: RunPlan) -> dict[str, Any]:
    return {"published": False, "reason": "no model yet", "version": None, "message": plan.no_model}


def _model_target(cfg: PipelineConfig) -> EmbedTarget:
    from glassfinder.embed.registry import current_sha  # pulls torch: kept off the DAG-parse path

    sha, _ = current_sha(open_store(cfg.store), cfg.model)
    if sha is None:
        raise NoModelError(
            f"no model named {cfg.model!r} is published in {cfg.store}: run the glassfinder_training_data "
            "DAG with train=true (or `glassfinder train`) first"
        )
    return EmbedTarget(cfg.model, sha, cfg.catalog_spec.spec_hash)


# --- catalogue ----------------------------------------------------------------------------------
@_fail_fast
def sync_catalog(params: Mapping[str, Any]) -> dict[str, Any]:
    return catalog_stage.sync_catalog(PipelineConfig.from_params(params))


@_fail_fast
def onboard_catalog(params: Mapping[str, Any]) -> dict[str, Any]:
    return catalog_stage.onboard_products(
        PipelineConfig.from_params(params),
        products=list(params.get("products") or []),
        manifest_delta=params.get("manifest_delta"),
        remove_products=list(params.get("remove_products") or []),
    )


# --- planning -----------------------------------------------------------------------------------
@_fail_fast
def plan_reindex(params: Mapping[str, Any], catalog: Mapping[str, Any]) -> dict[str, Any]:
    """Every catalogue product, embedded with the models' CURRENT under the catalogue spec.

    Before any model exists (a deployment's first night) there is nothing to index: the plan is
    empty and says why, so the run records "no model yet" instead of failing.
    """
    cfg = PipelineConfig.from_params(params)
    pinned = _snapshot(catalog)
    try:
        target = _model_target(cfg)
    except NoModelError as exc:
        return _waiting_for_a_model(cfg, pinned, exc)
    return plan_work(
        open_store(cfg.store),
        pinned,
        cfg.specs,
        embed=target,
        assets_per_batch=cfg.assets_per_batch,
        max_batches=cfg.max_batches,
        render_workers=cfg.render_workers,
        device=cfg.device,
        packshot=PACKSHOT_SPEC,
    ).to_json()


@_fail_fast
def plan_onboarding(params: Mapping[str, Any], catalog: Mapping[str, Any]) -> dict[str, Any]:
    """Only the changed products, embedded exactly as the CURRENT index's own vectors were."""
    cfg = PipelineConfig.from_params(params)
    store = open_store(cfg.store)
    pinned = _snapshot(catalog)
    try:
        target = publish_stage.index_embed_target(store, cfg) or _model_target(cfg)
    except NoModelError as exc:
        return _waiting_for_a_model(cfg, pinned, exc)
    same = target.spec_hash == cfg.catalog_spec.spec_hash
    specs = [cfg.catalog_spec if same else load_saved_spec(store, target.spec_hash)]
    if cfg.query_spec:
        specs.append(cfg.query_spec)
    return plan_work(
        store,
        pinned,
        specs,
        embed=target,
        product_ids=list(catalog["changed"]),
        assets_per_batch=cfg.assets_per_batch,
        max_batches=cfg.max_batches,
        render_workers=cfg.render_workers,
        device=cfg.device,
        packshot=PACKSHOT_SPEC,
    ).to_json()


@_fail_fast
def plan_training(params: Mapping[str, Any]) -> dict[str, Any]:
    """The catalogue's products under the spec the params describe, render only."""
    spec = training_spec(params)
    cfg = PipelineConfig.from_params(params)
    store = open_store(cfg.store)
    if not store.exists(CATALOG_MANIFEST_KEY):
        raise BadInputError(
            f"no catalogue in {store.uri} ({CATALOG_MANIFEST_KEY}): run glassfinder_catalog_reindex "
            "or `glassfinder catalog ingest` first"
        )
    return plan_work(
        store,
        pin_live(store),
        [spec],
        limit=params.get("limit_products"),
        assets_per_batch=cfg.assets_per_batch,
        max_batches=cfg.max_batches,
        render_workers=cfg.render_workers,
    ).to_json()


@_fail_fast
def batches_of(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The batches to map the render and embed tasks over."""
    return [b.to_json() for b in RunPlan.from_json(dict(plan)).batches]


# --- mapped stages ------------------------------------------------------------------------------
@_fail_fast
def render(batch: dict[str, Any]) -> dict[str, Any]:
    return render_batch(Batch.from_json(batch))


@_fail_fast
def embed(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` is the render task's result: the batch, plus its render figures."""
    return embed_batch(Batch.from_json(batch), render=batch.get("render"))


# --- publishing and training --------------------------------------------------------------------
@_fail_fast
def publish_reindex(params: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    planned = RunPlan.from_json(dict(plan))
    if planned.no_model:
        return _no_model_result(planned)
    return publish_stage.publish_full(PipelineConfig.from_params(params), planned)


@_fail_fast
def publish_onboarding(
    params: Mapping[str, Any], plan: Mapping[str, Any], catalog: Mapping[str, Any]
) -> dict[str, Any]:
    planned = RunPlan.from_json(dict(plan))
    if planned.no_model:
        return _no_model_result(planned)
    return publish_stage.publish_incremental(PipelineConfig.from_params(params), planned, dict(catalog))


def should_train(params: Mapping[str, Any]) -> bool:
    return bool(params.get("train", False))


@_fail_fast
def train(params: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    return train_and_register(PipelineConfig.from_params(params), params, RunPlan.from_json(dict(plan)))


# --- summary ------------------------------------------------------------------------------------
@_fail_fast
def summary(
    dag_id: str,
    run_id: str,
    params: Mapping[str, Any],
    *,
    stages: Sequence[str],
    skipped: Sequence[str] = (),
    **results: Any,
) -> dict[str, Any]:
    store = PipelineConfig.from_params(params).store
    # Mapped results arrive as lazy sequences: read each in one request (a slice), as plain lists.
    mapped: dict[str, Any] = {
        k: list(v[:]) if v is not None and k in ("rendered", "embedded") else v for k, v in results.items()
    }
    return summarise(dag_id, run_id, store_uri=store, stages=stages, skipped=skipped, **mapped)
