"""The publishing stage: a full rebuild (nightly) or a child of CURRENT (onboarding), through the gate.

Only an adapter: the flow itself (what is indexed, whether anything changed, the gate, the
manifest) is glassfinder.index.pipeline's, the same one the CLI runs. Here task params and the
plan become its arguments, and its outcome becomes the task's JSON result.
"""

from __future__ import annotations

from typing import Any

from glassfinder.index.pipeline import (
    PublishOutcome,
    current_embed_target,
    current_manifest,
    publish_changes,
    publish_if_changed,
    summary_of,
)
from glassfinder.index.versions import PublishResult
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


def _query_spec(cfg: PipelineConfig) -> str | None:
    return cfg.query_spec.spec_hash if cfg.query_spec else None


def publish_full(cfg: PipelineConfig, plan: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the index from every catalogue product's features and publish it, unless unchanged."""
    embed = plan["embed"]
    outcome = publish_if_changed(
        open_store(cfg.store),
        cfg.index,
        manifest_uri=plan["manifest"],
        model_ref=embed["model"],
        spec_hash=embed["spec_hash"],
        query_spec=_query_spec(cfg),
        gate=cfg.gate,
        force_reason=cfg.force_reason,
        device=cfg.device,
    )
    return _task_result(outcome)


def index_embed_target(store: ObjectStore, cfg: PipelineConfig) -> tuple[str, str, str] | None:
    """(model name, model sha, spec hash) CURRENT's index was built with, or None without CURRENT."""
    return current_embed_target(store, cfg.index)


def publish_incremental(cfg: PipelineConfig, plan: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Publish a child of CURRENT with the changed products added and the removed ones gone.

    Without a CURRENT version there is nothing to derive from: a full build is published instead.
    """
    embed = plan["embed"]
    outcome = publish_changes(
        open_store(cfg.store),
        cfg.index,
        manifest_uri=plan["manifest"],
        changed=list(changes["changed"]),
        removed=list(changes["removed"]),
        model_ref=embed["model"] if embed else None,
        spec_hash=embed["spec_hash"] if embed else None,
        query_spec=_query_spec(cfg),
        gate=cfg.gate,
        force_reason=cfg.force_reason,
        device=cfg.device,
    )
    return _task_result(outcome)
