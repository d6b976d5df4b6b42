"""Work out what a run must do: which assets lack renders or features, cut into batches.

Renders are keyed by (spec hash, asset sha256) and features by (model sha, spec hash, asset
sha256), so what is missing is found by listing, without opening a shard. Assets whose failure
under a spec is final (see glassfinder.render.job) are reported, not retried. The batches are
what the DAGs map over: each names its assets and carries everything its task needs, so a
mapped task never depends on state that may move during the run (the model is pinned by sha).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

from glassfinder import layout
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.errors import GlassFinderError, ObjectExistsError
from glassfinder.render.job import known_quarantine
from glassfinder.render.packshot import PackshotSpec, missing_packshots, save_packshot_spec
from glassfinder.render.spec import RenderSpec
from glassfinder.store import open_object
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)


def batch_size_for(count: int, assets_per_batch: int, max_batches: int) -> int:
    """Assets per batch: at least `assets_per_batch`, and few enough batches to stay within `max_batches`."""
    if assets_per_batch < 1 or max_batches < 1:
        raise GlassFinderError(
            f"assets_per_batch and max_batches must be >= 1, got {assets_per_batch} and {max_batches}"
        )
    return max(assets_per_batch, math.ceil(count / max_batches)) if count else assets_per_batch


def save_spec(store: ObjectStore, spec: RenderSpec) -> str:
    """Store a spec under its hash (content-addressed, so a second write is the same bytes)."""
    with contextlib.suppress(ObjectExistsError):
        store.put(layout.render_spec_key(spec.spec_hash), spec.canonical_json().encode(), create_only=True)
    return spec.spec_hash


def _listed(store: ObjectStore, prefix: str) -> set[str]:
    return {i.key for i in store.list(prefix)}


def plan_work(
    store: ObjectStore,
    manifest_uri: str,
    render_specs: Sequence[RenderSpec],
    *,
    embed: tuple[str, str, str] | None = None,
    product_ids: Sequence[str] | None = None,
    limit: int | None = None,
    assets_per_batch: int,
    max_batches: int,
    render_workers: int | None = None,
    device: str | None = None,
    packshot: PackshotSpec | None = None,
) -> dict[str, Any]:
    """The plan of a run: counts, and the batches of assets with something to do.

    embed: (model name, model sha, spec hash) whose feature shards the run must have, or None
        when the run only renders (training data).
    product_ids: only these products (onboarding); default every row of the manifest.
    packshot: the packshot spec every asset must have packshots under (None: the run makes none,
        as the training-data run); an asset whose try-on render failed for good gets none.
    """
    rows = read_manifest_rows(*open_object(manifest_uri))[:limit]
    if product_ids is not None:
        wanted = set(product_ids)
        rows = [r for r in rows if str(r.get("product_id")) in wanted]
    spec_hashes = [save_spec(store, s) for s in render_specs]
    assets: dict[str, list[str]] = {}
    for row in rows:
        sha = str(row.get("asset_sha256") or "")
        if len(sha) == 64:
            assets.setdefault(sha, []).append(str(row["product_id"]))
    rendered = {h: _listed(store, layout.render_prefix(h)) for h in spec_hashes}
    final = {h: known_quarantine(store, h) for h in spec_hashes}
    featured = _listed(store, layout.feature_prefix(embed[1], embed[2])) if embed else set()
    lacking = set(missing_packshots(store, packshot, list(assets))) if packshot else set()
    if packshot:
        save_packshot_spec(store, packshot)
    to_packshot = 0
    to_render = dict.fromkeys(spec_hashes, 0)
    to_embed, work, known = 0, [], []
    for sha, products in assets.items():
        needs = False
        for h in spec_hashes:
            if sha in final[h]:
                known.append({**final[h][sha], "products": products, "spec_hash": h})
            elif layout.render_shard_key(h, sha) not in rendered[h]:
                to_render[h] += 1
                needs = True
        broken = embed is not None and sha in final.get(embed[2], {})
        if embed and not broken and layout.feature_shard_key(embed[1], embed[2], sha) not in featured:
            to_embed += 1
            needs = True
        if sha in lacking and not any(sha in final[h] for h in spec_hashes):
            to_packshot += 1
            needs = True
        if needs:
            work.append(sha)
    size = batch_size_for(len(work), assets_per_batch, max_batches)
    shared = {
        "store": store.uri,
        "manifest": manifest_uri,
        "render_specs": spec_hashes,
        "embed": {"model": f"{embed[0]}@{embed[1]}", "spec_hash": embed[2]} if embed else None,
        "render_workers": render_workers,
        "device": device,
        "packshot_spec": packshot.spec_hash if packshot else None,
    }
    batches = [
        {**shared, "batch": i, "assets": work[start : start + size]}
        for i, start in enumerate(range(0, len(work), size))
    ]
    plan = {
        "manifest": manifest_uri,
        "products": len(rows),
        "assets": len(assets),
        "reused": len(assets) - len(work) - len({q["asset_sha256"] for q in known} - set(work)),
        "to_render": to_render,
        "to_embed": to_embed,
        "to_packshot": to_packshot,
        "known_quarantined": known,
        "render_specs": spec_hashes,
        "embed": shared["embed"],
        "assets_per_batch": size,
        "batches": batches,
    }
    log.info(
        "plan: %d products, %d assets: %d reused, %s to render, %d to embed, %d to packshot, "
        "%d known broken; %d batches of up to %d assets",
        len(rows),
        len(assets),
        plan["reused"],
        to_render,
        to_embed,
        to_packshot,
        len(known),
        len(batches),
        size,
    )
    return plan
