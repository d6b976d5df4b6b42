"""The mapped stages: render one batch of assets, embed one batch of assets.

A batch (from glassfinder.pipeline.plan) names its store, manifest, specs and pinned model, so
these run anywhere: a CPU worker renders, a GPU worker embeds. Both skip what already exists
and write create-only, so a retried task redoes only what the failed attempt did not finish.
A broken asset is quarantined (with its reason) and the batch goes on; only a failure of the
store or the worker itself fails the task, for Airflow to retry.
"""

from __future__ import annotations

import logging
from typing import Any

from glassfinder.errors import BadInputError
from glassfinder.pipeline.artefacts import Batch
from glassfinder.render.job import render_catalog_specs
from glassfinder.render.packshot import load_packshot_spec
from glassfinder.render.spec import load_saved_spec
from glassfinder.store import open_store

log = logging.getLogger(__name__)


def render_batch(batch: Batch) -> dict[str, Any]:
    """Render the batch's assets under every spec of the plan; returns the batch with the figures."""
    store = open_store(batch.store)
    figures: dict[str, Any] = {"rendered": 0, "views": 0, "skipped": 0, "seconds": 0.0, "quarantined": []}
    figures |= {"packshots": 0, "packshot_seconds": 0.0}
    pids: set[int] = set()
    packshot = batch.packshot_spec
    reports = render_catalog_specs(
        batch.catalog.uri,
        [load_saved_spec(store, h) for h in batch.render_specs],
        store,
        workers=batch.render_workers,
        assets=batch.assets,
        packshot=load_packshot_spec(store, packshot) if packshot else None,
    )
    for report in reports:
        if report.kind == "packshot":  # assets whose packshots were made, and the workers' time on them
            figures["packshots"] += report.rendered
            figures["packshot_seconds"] += round(report.busy_seconds, 3)
            pids |= report.worker_pids
            continue
        figures["rendered"] += report.rendered
        figures["views"] += report.views
        figures["skipped"] += report.skipped
        figures["seconds"] = report.seconds
        figures["quarantined"] += [{**q, "spec_hash": report.spec_hash} for q in report.quarantined]
        pids |= report.worker_pids
    figures["worker_processes"] = len(pids)
    log.info(
        "batch %d: %d assets, %d renders made (%d views), %d packshots, %d already there, %d quarantined "
        "in %.1f s by %d process(es)",
        batch.index,
        len(batch.assets),
        figures["rendered"],
        figures["views"],
        figures["packshots"],
        figures["skipped"],
        len(figures["quarantined"]),
        figures["seconds"],
        figures["worker_processes"],
    )
    return {**batch.to_json(), "render": figures}


def embed_batch(batch: Batch, render: dict[str, Any] | None = None) -> dict[str, Any]:
    """Embed the batch's rendered assets with the plan's pinned model; returns the figures
    (with `render`, the figures of the task that rendered the batch, for the run's record)."""
    # embed.infer, embed.job, embed.registry pull torch: kept off the DAG-parse path
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.job import embed_catalog
    from glassfinder.embed.registry import load_model

    if batch.embed is None:
        raise BadInputError(f"batch {batch.index} has no model to embed with (a render-only plan)")
    store = open_store(batch.store)
    loaded = load_model(store, batch.embed.ref)
    embedder = Embedder(loaded.model, device=batch.device)
    report = embed_catalog(
        store, batch.embed.spec_hash, embedder, loaded.sha, assets=list(batch.assets), decode_workers=None
    )
    log.info(
        "batch %d: %d feature shards written (%d views), %d already there, %d unreadable in %.1f s on %s",
        batch.index,
        report.embedded,
        report.views,
        report.skipped,
        len(report.quarantined),
        report.seconds,
        embedder.device,
    )
    return {
        "batch": batch.index,
        "assets": len(batch.assets),
        "embedded": report.embedded,
        "views": report.views,
        "skipped": report.skipped,
        "quarantined": report.quarantined,
        "seconds": report.seconds,
        "device": str(embedder.device),
        "render": render,
    }
