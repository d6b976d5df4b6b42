"""The publishing stage: a full rebuild (nightly) or a child of CURRENT (onboarding), through the gate.

Only an adapter: the flow itself (what is indexed, whether anything changed, the gate, the
manifest) is glassfinder.index.pipeline's, the same one the CLI runs. Here task params and the
plan become its arguments, and its outcome becomes the task's JSON result.
"""

from __future__ import annotations

from typing import Any

from glassfinder.errors import BadInputError
from glassfinder.index.pipeline import (
    PublishOutcome,
    PublishRequest,
    current_embed_target,
    current_manifest,
    publish_changes,
    publish_if_changed,
    summary_of,
)
from glassfinder.index.versions import PublishResult
from glassfinder.pipeline.artefacts import EmbedTarget, RunPlan
from glassfinder.pipeline.config import PipelineConfig
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

__all__ = ["current_manifest", "index_embed_target", "publish_full", "publish_incremental"]


def _published(result: PublishResult, extra: dict[str, Any]) -> dict[str, Any]:
    m = result.manifest
    return {
        "published": True,
        "version": result.version,
        "parent": result.parent,
        "kind": m.get("kind"),
        "products": m["counts"]["products"],
        "vectors": m["counts"]["vectors"],
        "factory": m["factory"],
        "evaluation": summary_of(m.get("evaluation")),
        "gate": result.gate,
        "seconds": round(result.seconds, 2),
        **extra,
    }


def _task_result(outcome: PublishOutcome) -> dict[str, Any]:
    """The JSON a publishing task returns for what the index flow did."""
    if outcome.result is None:
        return {"published": False, "reason": outcome.reason, "version": outcome.version, **outcome.report}
    return _published(outcome.result, outcome.report)


def _request(cfg: PipelineConfig, plan: RunPlan, embed: EmbedTarget | None) -> PublishRequest:
    """The run's params and plan as one publish: the pinned catalogue, the plan's pinned model."""
    return PublishRequest(
        name=cfg.index,
        manifest_uri=plan.catalog.uri,
        model_ref=embed.ref if embed else None,
        spec_hash=embed.spec_hash if embed else None,
        query_spec=cfg.query_spec.spec_hash if cfg.query_spec else None,
        gate=cfg.gate,
        force_reason=cfg.force_reason,
        device=cfg.device,
    )


def _target(plan: RunPlan) -> EmbedTarget:
    if plan.embed is None:
        raise BadInputError("the plan has no embedding target (a render-only plan cannot publish an index)")
    return plan.embed


def publish_full(cfg: PipelineConfig, plan: RunPlan) -> dict[str, Any]:
    """Rebuild the index from the run's pinned catalogue and publish it, unless unchanged."""
    embed = _target(plan)
    outcome = publish_if_changed(open_store(cfg.store), _request(cfg, plan, embed))
    return _task_result(outcome)


def index_embed_target(store: ObjectStore, cfg: PipelineConfig) -> EmbedTarget | None:
    """The model and spec CURRENT's index was built with, or None without CURRENT."""
    found = current_embed_target(store, cfg.index)
    return EmbedTarget(*found) if found else None


def publish_incremental(cfg: PipelineConfig, plan: RunPlan, changes: dict[str, Any]) -> dict[str, Any]:
    """Publish a child of CURRENT with the changed products added and the removed ones gone.

    Without a CURRENT version there is nothing to derive from: a full build is published instead.
    """
    outcome = publish_changes(
        open_store(cfg.store),
        _request(cfg, plan, plan.embed),
        changed=list(changes["changed"]),
        removed=list(changes["removed"]),
    )
    return _task_result(outcome)
