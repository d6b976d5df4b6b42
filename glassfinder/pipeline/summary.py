"""The last stage of every run: one record of what the run did, kept in the store, and one log line.

The record (`runs/<dag_id>/<run_id>/summary.json`) gives the counts an operator asks first
(rendered, reused, quarantined and why, the version published or why not, its evaluation). A
run whose stage failed still gets its record, and then fails itself, so the run is marked
failed even though this task runs after everything else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glassfinder import layout
from glassfinder.errors import PipelineStageError
from glassfinder.quarantine import QuarantineRecord
from glassfinder.store import open_store

log = logging.getLogger(__name__)
SUMMARY_RECORD = "summary.json"


def _sum(items: Sequence[dict[str, Any]], key: str) -> int:
    return int(sum(int(i.get(key) or 0) for i in items))


@dataclass(frozen=True)
class _StageResults:
    """What the run's stages returned, as the summary reads them (failed mapped tasks dropped)."""

    catalog: dict[str, Any] | None
    plan: dict[str, Any] | None
    renders: list[dict[str, Any]]
    embeds: list[dict[str, Any]]
    published: dict[str, Any] | None
    trained: dict[str, Any] | None


def summarise(
    dag_id: str,
    run_id: str,
    *,
    store_uri: str,
    catalog: dict[str, Any] | None = None,
    plan: dict[str, Any] | None = None,
    rendered: Sequence[dict[str, Any]] | None = None,
    embedded: Sequence[dict[str, Any]] | None = None,
    published: dict[str, Any] | None = None,
    trained: dict[str, Any] | None = None,
    stages: Sequence[str] = ("catalogue", "plan", "render", "embed", "publish"),
    skipped: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the run's record and return it; raise PipelineStageError if a stage did not finish.

    stages: the stages this DAG has; skipped: those that were skipped on purpose (no training).
    """
    results = _StageResults(
        catalog=catalog,
        plan=plan,
        renders=[r["render"] for r in (rendered or []) if r and r.get("render")],
        embeds=[e for e in (embedded or []) if e],
        published=published,
        trained=trained,
    )
    batches = len(plan["batches"]) if plan else 0
    failed = _failed_stages(results, stages, skipped, batches)
    skipped_why = _skipped_why(plan, stages, skipped, batches)
    quarantined = _quarantine_records(results)
    record = _run_record(dag_id, run_id, results, failed, skipped_why, quarantined)
    store = open_store(store_uri)
    key = layout.run_record_key(dag_id, run_id, SUMMARY_RECORD)
    store.put(key, json.dumps(record, indent=2, sort_keys=True, default=str).encode())
    _log_outcome(dag_id, run_id, record, skipped_why, (store.uri, key))
    if failed:
        raise PipelineStageError(f"{dag_id} {run_id}: stage(s) failed: {', '.join(failed)}; see their logs")
    return record


def _failed_stages(
    results: _StageResults, stages: Sequence[str], skipped: Sequence[str], batches: int
) -> list[str]:
    """The stages that did not finish: no result, or fewer render/embed batches than planned."""
    by_stage: dict[str, Any] = {
        "catalogue": results.catalog,
        "plan": results.plan,
        "publish": results.published,
        "train": results.trained,
    }
    failed = [s for s in stages if s in by_stage and by_stage[s] is None and s not in skipped]
    if results.plan is not None:
        renders, embeds = len(results.renders), len(results.embeds)
        if "render" in stages and renders < batches:
            failed.append(f"render ({batches - renders} of {batches} batches)")
        if "embed" in stages and embeds < batches:
            failed.append(f"embed ({batches - embeds} of {batches} batches)")
    return failed


def _skipped_why(
    plan: dict[str, Any] | None, stages: Sequence[str], skipped: Sequence[str], batches: int
) -> dict[str, str]:
    """Stages skipped by design, with why: they are reported as such, never as failures."""
    skipped_why = {s: "not requested" for s in skipped if s in stages}
    if plan is not None and batches == 0:
        skipped_why |= {s: "nothing to do" for s in ("render", "embed") if s in stages}
    return skipped_why


def _quarantine_records(results: _StageResults) -> list[dict[str, Any]]:
    """Every stage's refusals as the one quarantine record (glassfinder.quarantine)."""
    found: list[tuple[str, dict[str, Any]]] = [
        ("ingest", q) for q in (results.catalog or {}).get("quarantined", [])
    ]
    found += [("render", q) for q in (results.plan or {}).get("known_quarantined", [])]
    for r in results.renders:
        found += [("render", q) for q in r["quarantined"] if not q.get("known")]
    for e in results.embeds:
        found += [("embed", q) for q in e.get("quarantined", [])]
    for q in (results.published or {}).get("not_indexed") or []:
        found.append(("index", q if isinstance(q, dict) else {"product_id": q, "reason": "no_features"}))
    return [QuarantineRecord.from_dict(q, stage=stage).to_dict() for stage, q in found]


def _run_record(
    dag_id: str,
    run_id: str,
    results: _StageResults,
    failed: list[str],
    skipped_why: dict[str, str],
    quarantined: list[dict[str, Any]],
) -> dict[str, Any]:
    catalog, plan, renders, embeds = results.catalog, results.plan, results.renders, results.embeds
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ok": not failed,
        "failed_stages": failed,
        "skipped_stages": skipped_why,
        "catalogue": {
            k: catalog.get(k) for k in ("manifest", "products", "changed", "removed") if k in catalog
        }
        if catalog
        else None,
        "assets": plan["assets"] if plan else None,
        "reused": plan["reused"] if plan else None,
        "rendered": _sum(renders, "rendered"),
        "views_rendered": _sum(renders, "views"),
        "packshots": _sum(renders, "packshots"),
        "packshot_seconds": round(sum(float(r.get("packshot_seconds") or 0) for r in renders), 3),
        "render_worker_processes": max((int(r.get("worker_processes") or 0) for r in renders), default=0),
        "embedded": _sum(embeds, "embedded"),
        "views_embedded": _sum(embeds, "views"),
        "quarantined": len(quarantined),
        "quarantine": quarantined,
        "index": results.published,
        "model": results.trained,
    }


def _index_outcome(index: dict[str, Any]) -> str:
    """The publish step's outcome in words, for the run's log line."""
    return (
        f"published v{index['version']}"
        if index.get("published")
        else f"not published ({index['reason']}, CURRENT v{index.get('version')})"
        if index.get("reason")
        else "no index step"
    )


def _log_outcome(
    dag_id: str, run_id: str, record: dict[str, Any], skipped_why: dict[str, str], where: tuple[str, str]
) -> None:
    """Log the skipped stages, the run in one line, then every quarantined item.

    where: (store URI, key) of the record written.
    """
    index = record["index"] or {}
    evaluation = index.get("evaluation") or {}
    for stage, why in skipped_why.items():
        log.info("%s %s: %s skipped: %s", dag_id, run_id, stage, why)
    log.info(
        "%s %s: %s renders made, %s reused, %s embedded, %d quarantined; index %s%s; record %s/%s",
        dag_id,
        run_id,
        record["rendered"],
        record["reused"],
        record["embedded"],
        record["quarantined"],
        _index_outcome(index),
        f" (top-1 {evaluation['top1']}, top-10 {evaluation['top10']})" if "top1" in evaluation else "",
        *where,
    )
    for q in record["quarantine"]:
        log.warning(
            "quarantined at %s: %s %s: %s",
            q["stage"],
            q.get("product_id") or q.get("source"),
            q.get("reason"),
            q.get("message"),
        )
