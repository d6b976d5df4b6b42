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
from dataclasses import dataclass, field
from typing import Any

from glassfinder import layout
from glassfinder.catalog.snapshot import CatalogSnapshot, read_catalog_rows
from glassfinder.errors import ObjectExistsError, ParamError
from glassfinder.pipeline.artefacts import Batch, EmbedTarget, RunPlan
from glassfinder.render.job import known_quarantine
from glassfinder.render.packshot import PackshotSpec, missing_packshots, save_packshot_spec
from glassfinder.render.spec import RenderSpec
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)


def batch_size_for(count: int, assets_per_batch: int, max_batches: int) -> int:
    """Assets per batch: at least `assets_per_batch`, and few enough batches to stay within `max_batches`."""
    if assets_per_batch < 1 or max_batches < 1:
        raise ParamError(
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


@dataclass(frozen=True)
class _Existing:
    """What the store already holds for the run, each found by one listing."""

    #: spec hash -> keys of the render shards under it
    rendered: dict[str, set[str]]
    #: spec hash -> asset sha256 -> its final quarantine record under that spec
    final: dict[str, dict[str, dict[str, Any]]]
    #: keys of the feature shards of the run's (model sha, spec hash)
    featured: set[str]
    #: assets lacking packshots under the run's packshot spec
    lacking: set[str]


@dataclass
class _Work:
    """What is left to do, counted per kind, and the assets with something to do (in catalogue order)."""

    to_render: dict[str, int]
    to_embed: int = 0
    to_packshot: int = 0
    work: list[str] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)


def plan_work(
    store: ObjectStore,
    catalog: CatalogSnapshot,
    render_specs: Sequence[RenderSpec],
    *,
    embed: EmbedTarget | None = None,
    product_ids: Sequence[str] | None = None,
    limit: int | None = None,
    assets_per_batch: int,
    max_batches: int,
    render_workers: int | None = None,
    device: str | None = None,
    packshot: PackshotSpec | None = None,
) -> RunPlan:
    """The plan of a run: counts, and the batches of assets with something to do.

    catalog: the run's pinned catalogue (read here once; the batches name the same snapshot).
    embed: the model and spec whose feature shards the run must have, or None when the run only
        renders (training data).
    product_ids: only these products (onboarding); default every row of the manifest.
    packshot: the packshot spec every asset must have packshots under (None: the run makes none,
        as the training-data run); an asset whose try-on render failed for good gets none.
    """
    rows = _manifest_rows(catalog, product_ids, limit)
    spec_hashes = [save_spec(store, s) for s in render_specs]
    assets = _assets_of(rows)
    existing = _existing(store, spec_hashes, list(assets), embed, packshot)
    todo = _work_to_do(assets, spec_hashes, existing, embed)
    size = batch_size_for(len(todo.work), assets_per_batch, max_batches)
    batches = tuple(
        Batch(
            index=i,
            store=store.uri,
            catalog=catalog,
            render_specs=tuple(spec_hashes),
            embed=embed,
            render_workers=render_workers,
            device=device,
            packshot_spec=packshot.spec_hash if packshot else None,
            assets=tuple(todo.work[start : start + size]),
        )
        for i, start in enumerate(range(0, len(todo.work), size))
    )
    plan = RunPlan(
        catalog=catalog,
        products=len(rows),
        assets=len(assets),
        reused=len(assets) - len(todo.work) - len({q["asset_sha256"] for q in todo.known} - set(todo.work)),
        to_render=todo.to_render,
        to_embed=todo.to_embed,
        to_packshot=todo.to_packshot,
        known_quarantined=todo.known,
        render_specs=tuple(spec_hashes),
        embed=embed,
        assets_per_batch=size,
        batches=batches,
    )
    _log_plan(plan, todo)
    return plan


def _manifest_rows(
    catalog: CatalogSnapshot, product_ids: Sequence[str] | None, limit: int | None
) -> list[dict[str, Any]]:
    """The catalogue's rows the run covers: the first `limit`, then only `product_ids` if given."""
    rows = read_catalog_rows(catalog.uri)[0][:limit]
    if product_ids is not None:
        wanted = set(product_ids)
        rows = [r for r in rows if str(r.get("product_id")) in wanted]
    return rows


def _assets_of(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Asset sha256 -> the products showing it, in catalogue order; rows without a sha256 are skipped."""
    assets: dict[str, list[str]] = {}
    for row in rows:
        sha = str(row.get("asset_sha256") or "")
        if len(sha) == 64:
            assets.setdefault(sha, []).append(str(row["product_id"]))
    return assets


def _existing(
    store: ObjectStore,
    spec_hashes: list[str],
    assets: list[str],
    embed: EmbedTarget | None,
    packshot: PackshotSpec | None,
) -> _Existing:
    """List what is already done; also stores the packshot spec, so the batches can name it."""
    existing = _Existing(
        rendered={h: _listed(store, layout.render_prefix(h)) for h in spec_hashes},
        final={h: known_quarantine(store, h) for h in spec_hashes},
        featured=_listed(store, layout.feature_prefix(embed.sha, embed.spec_hash)) if embed else set(),
        lacking=set(missing_packshots(store, packshot, assets)) if packshot else set(),
    )
    if packshot:
        save_packshot_spec(store, packshot)
    return existing


def _work_to_do(
    assets: dict[str, list[str]],
    spec_hashes: list[str],
    existing: _Existing,
    embed: EmbedTarget | None,
) -> _Work:
    """Per asset: the renders, features and packshots it lacks; an asset whose failure under a
    spec is final is reported (known), not retried, and gets no features or packshots."""
    final = existing.final
    todo = _Work(to_render=dict.fromkeys(spec_hashes, 0))
    for sha, products in assets.items():
        needs = False
        for h in spec_hashes:
            if sha in final[h]:
                todo.known.append({**final[h][sha], "products": products, "spec_hash": h})
            elif layout.render_shard_key(h, sha) not in existing.rendered[h]:
                todo.to_render[h] += 1
                needs = True
        broken = embed is not None and sha in final.get(embed.spec_hash, {})
        if (
            embed
            and not broken
            and layout.feature_shard_key(embed.sha, embed.spec_hash, sha) not in existing.featured
        ):
            todo.to_embed += 1
            needs = True
        if sha in existing.lacking and not any(sha in final[h] for h in spec_hashes):
            todo.to_packshot += 1
            needs = True
        if needs:
            todo.work.append(sha)
    return todo


def _log_plan(plan: RunPlan, todo: _Work) -> None:
    log.info(
        "plan: %d products, %d assets: %d reused, %s to render, %d to embed, %d to packshot, "
        "%d known broken; %d batches of up to %d assets",
        plan.products,
        plan.assets,
        plan.reused,
        todo.to_render,
        todo.to_embed,
        todo.to_packshot,
        len(todo.known),
        len(plan.batches),
        plan.assets_per_batch,
    )
