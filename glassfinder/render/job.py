"""Render a catalogue into per-asset image shards, in a spawn-based process pool.

Each asset becomes one shard at `renders/<spec_hash>/<asset_sha256>.parquet`, written
create-only and all at once, so a shard that exists is complete and is skipped on re-runs.
A broken asset is quarantined with its reason and the others go on.

Each quarantined asset also gets a record at `renders/<spec_hash>/quarantine/<asset_sha256>.json`.
When the failure follows from the asset's bytes and the spec (both content-addressed), the
record is final and later runs skip the asset instead of failing on it again every night; when
the asset could not be fetched or did not match its checksum (the store's state, not the
content), the record says so and the next run tries again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
import types
from collections.abc import Collection, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from glassfinder import layout, settings
from glassfinder.catalog.ingest import resolve_asset
from glassfinder.catalog.loader import import_glb
from glassfinder.catalog.snapshot import read_catalog_rows
from glassfinder.errors import (
    AssetUnavailableError,
    BadAssetError,
    BadInputError,
    FaultError,
    GlassFinderError,
    ObjectExistsError,
    RenderWorkerError,
    StoreError,
    StoreUnavailableError,
)
from glassfinder.heads.photos import PhotoBank
from glassfinder.heads.procedural import head
from glassfinder.quarantine import QuarantineRecord
from glassfinder.render.packshot import (
    PackshotSpec,
    missing_packshots,
    packshot_asset,
    save_packshot_spec,
    write_packshots,
)
from glassfinder.render.spec import RenderSpec, ViewParams, photo_bank_location, plan_view, split_of
from glassfinder.store import open_object
from glassfinder.store.base import ObjectStore
from glassfinder.store.shards import ImageColumns, ViewColumns, image_table, write_shard
from glassfinder.workers import exit_with_parent

if TYPE_CHECKING:  # render.tryon pulls pyrender (OpenGL): kept off the DAG-parse path
    from glassfinder.render.tryon import AssetMeshes, PhotoRenderer, RenderedView, TryOnRenderer

log = logging.getLogger(__name__)


@dataclass
class RenderReport:
    spec_hash: str
    assets: int = 0
    rendered: int = 0
    skipped: int = 0
    views: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: The processes that rendered (one: in-process; more: a pool), for operators and tests.
    worker_pids: set[int] = field(default_factory=set)
    #: "tryon" (image shards under a RenderSpec) or "packshot" (PNGs under a PackshotSpec).
    kind: str = "tryon"
    #: Seconds the workers spent on this report's assets (per-asset cost, whatever the pool size).
    busy_seconds: float = 0.0


@dataclass(frozen=True)
class AssetTask:
    product_id: str
    asset_sha256: str
    asset_store: ObjectStore
    asset_key: str
    fixed_lens: tuple[str, tuple[float, ...]] | None
    spec_hash: str = ""  # which of the pool's specs to render under
    kind: str = "tryon"  # or "packshot": the asset's packshots under the pool's packshot spec


def known_quarantine(store: ObjectStore, spec_hash: str) -> dict[str, dict[str, Any]]:
    """asset sha256 -> record, for the assets whose failure under this spec is final."""
    records = {}
    for info in store.list(layout.render_quarantine_prefix(spec_hash)):
        try:
            record = json.loads(store.get(info.key))
        except (GlassFinderError, json.JSONDecodeError):
            continue  # an unreadable record only costs a retry
        if isinstance(record, dict) and not record.get("retry", True):
            records[info.key.rsplit("/", 1)[-1].removesuffix(".json")] = record
    return records


# --- worker side -------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(
    spec_jsons: list[str],
    out: ObjectStore,
    workers: int,
    photos: dict[str, list[Any] | None],
    parent_pid: int | None = None,
    packshot_json: str | None = None,
) -> None:
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    # A pool whose initializer raises respawns its workers forever and never returns: record
    # the failure instead and let every task report it.
    try:
        _start_worker(spec_jsons, out, workers, photos)
        if packshot_json is not None:
            _WORKER["packshot"] = PackshotSpec.from_json(packshot_json)
    except Exception as exc:
        _WORKER["init_error"] = f"{type(exc).__name__}: {exc}"


def _start_worker(
    spec_jsons: list[str], out: ObjectStore, workers: int, photos: dict[str, list[Any] | None]
) -> None:
    if workers > 1:
        # Mesa's llvmpipe spreads one process over every core; with a pool, one thread per
        # worker lets the Python side of one worker overlap another's rasterising.
        settings.set_env("LP_NUM_THREADS", "1", only_if_unset=True)
    # render.tryon (pyrender, OpenGL): imported in the worker only, kept off the DAG-parse path
    from glassfinder.render.tryon import PhotoRenderer, TryOnRenderer

    specs = [RenderSpec.from_json(j) for j in spec_jsons]
    # One GL context per process, resized per spec (see TryOnRenderer.set_size).
    renderer = TryOnRenderer(specs[0].image_px if specs else 256)  # no spec: packshots only
    photo_renderer = None
    if any(photos.values()):
        photo_renderer = PhotoRenderer(renderer)
    _WORKER.update(
        specs={s.spec_hash: s for s in specs},
        out=out,
        renderer=renderer,
        photos=photos,
        crops={},
        photo_renderer=photo_renderer,
    )


def render_asset_views(
    task: AssetTask,
    spec: RenderSpec,
    renderer: TryOnRenderer,
    *,
    photos: list[Any] | None = None,
    crops: dict[str, Any] | None = None,
    crop_store: ObjectStore | None = None,
    photo_renderer: PhotoRenderer | None = None,
) -> pa.Table:
    """The image table of every view of one asset (raises on a broken asset).

    photos: the usable (PhotoFace, crop key) of a photo bank when the spec renders onto photos.
    """
    # render.tryon (pyrender, OpenGL): kept off the DAG-parse path; a renderer is at hand here
    from glassfinder.render.tryon import PhotoRenderer

    asset = _load_asset(task, _fetch_asset(task))
    if photos and photo_renderer is None:
        photo_renderer = PhotoRenderer(renderer)
    rendered = _AssetViews()
    for i in range(spec.views_per_asset):
        view = plan_view(spec, task.asset_sha256, i, fixed_lens=task.fixed_lens)
        if photos and photo_renderer is not None and crops is not None and crop_store is not None:
            face, crop_key = photos[view.face_index % len(photos)]
            if crop_key not in crops:
                crops[crop_key] = PhotoBank(crop_store, "", crop_store).crop(crop_key)
            # A glasses layer is composited onto black: what is left is the premultiplied layer.
            backdrop = np.zeros_like(crops[crop_key]) if spec.glasses_layer else crops[crop_key]
            out = photo_renderer.render(asset, face, backdrop, view)
            rendered.add(spec, view, out, face.face_id, (face.yaw_deg, face.pitch_deg, face.roll_deg))
        else:
            out = renderer.render(asset, head(view.face_index), view)
            rendered.add(spec, view, out, view.face_id, (view.yaw_deg, view.pitch_deg, view.roll_deg))
    return _image_table_of(task, spec, rendered)


def _fetch_asset(task: AssetTask) -> bytes:
    """The asset's bytes, checked against the manifest's sha256.

    A store outage propagates (the task is retried); bytes that cannot be read or do not match
    are the store's state rather than the content, so the quarantine record asks for a retry.
    """
    try:
        data = task.asset_store.get(task.asset_key)
    except StoreUnavailableError:
        raise  # the store's fault, not the asset's: fail the task, for Airflow to retry
    except GlassFinderError as exc:
        raise AssetUnavailableError(f"asset {task.asset_key} cannot be read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != task.asset_sha256:
        raise AssetUnavailableError(
            f"asset {task.asset_key}: sha256 {digest} differs from the manifest's {task.asset_sha256}"
        )
    return data


def _load_asset(task: AssetTask, data: bytes) -> AssetMeshes:
    """The asset's meshes; bytes that do not parse or lack a part will never render (final)."""
    # render.tryon (pyrender, OpenGL): kept off the DAG-parse path; a renderer is at hand here
    from glassfinder.render.tryon import AssetMeshes

    try:
        asset = AssetMeshes(import_glb(data))
    except Exception as exc:  # any parser error: these bytes will never load
        raise BadAssetError(f"asset {task.asset_key} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    missing = [p for p in ("frame", "lens_left", "lens_right") if p not in asset.parts]
    if missing:
        raise BadAssetError(f"asset {task.asset_key} has no {missing} part(s): ingest it first")
    return asset


@dataclass
class _AssetViews:
    """What each view of one asset gave, in view order: the columns of its image shard."""

    images: list[bytes] = field(default_factory=list)
    eyes: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    views: list[ViewParams] = field(default_factory=list)
    face_ids: list[str] = field(default_factory=list)
    poses: list[tuple[float, float, float]] = field(default_factory=list)

    def add(
        self,
        spec: RenderSpec,
        view: ViewParams,
        out: RenderedView,
        face_id: str,
        pose: tuple[float, float, float],
    ) -> None:
        self.face_ids.append(face_id)
        self.poses.append(pose)
        self.images.append(out.encode(spec.image_format, spec.jpeg_quality, with_alpha=spec.glasses_layer))
        self.eyes.append(out.eyes_xy)
        self.landmarks.append(out.landmarks_xy)
        self.boxes.append(out.glasses_box_xyxy)
        self.views.append(view)


def _image_table_of(task: AssetTask, spec: RenderSpec, rendered: _AssetViews) -> pa.Table:
    """The asset's image shard table: one row per rendered view."""
    n = spec.views_per_asset
    views = rendered.views
    split = split_of(spec, task.product_id)
    cols = ViewColumns(
        view_key=[
            layout.view_key(task.asset_sha256, spec.spec_hash, fid, v.view_index)
            for fid, v in zip(rendered.face_ids, views, strict=True)
        ],
        product_id=[task.product_id] * n,
        asset_sha256=[task.asset_sha256] * n,
        spec_hash=[spec.spec_hash] * n,
        face_id=rendered.face_ids,
        view_index=[v.view_index for v in views],
        pose_deg=np.array(rendered.poses),
        lens_rgba=np.array([v.lens_rgba for v in views]),
        lens_style=[v.lens_style for v in views],
    )
    return image_table(
        cols,
        ImageColumns(
            image=rendered.images,
            image_format=[spec.image_format] * n,
            width=[spec.image_px] * n,
            height=[spec.image_px] * n,
            eyes_xy=np.stack(rendered.eyes),
            landmarks_xy=rendered.landmarks,
            glasses_box_xyxy=np.stack(rendered.boxes),
            split=[split] * n,
        ),
    )


def _render_task(task: AssetTask) -> dict[str, Any]:
    return {**_render_one(task), "pid": os.getpid()}


def _packshot_one(task: AssetTask) -> dict[str, Any]:
    """Render and store one asset's packshots. An asset that cannot be read or loaded is left to
    the try-on render's quarantine record (same bytes, same failure); reported, never raised."""
    spec = _WORKER["packshot"]
    base = {"spec_hash": spec.spec_hash, "product_id": task.product_id, "source": task.asset_key}
    try:
        data = task.asset_store.get(task.asset_key)
        if hashlib.sha256(data).hexdigest() != task.asset_sha256:
            raise AssetUnavailableError(f"asset {task.asset_key} does not match the manifest's sha256")
        images, seconds = packshot_asset(
            data, _WORKER["renderer"], spec, fixed_lens=task.fixed_lens, where=task.asset_key
        )
    except StoreUnavailableError:
        raise
    except GlassFinderError as exc:
        return {**base, "status": "packshot_failed", "message": str(exc)}
    written = write_packshots(_WORKER["out"], spec, task.asset_sha256, images)
    return {**base, "status": "rendered" if written else "skipped", "views": written, "busy": seconds}


def _render_one(task: AssetTask) -> dict[str, Any]:
    if "init_error" in _WORKER:
        return {"status": "worker_failed", "message": _WORKER["init_error"], "spec_hash": task.spec_hash}
    if task.kind == "packshot":
        return _packshot_one(task)
    started = time.perf_counter()
    spec, out, renderer = _WORKER["specs"][task.spec_hash], _WORKER["out"], _WORKER["renderer"]
    if renderer.size_px != spec.image_px:
        renderer.set_size(spec.image_px)
    key = layout.render_shard_key(spec.spec_hash, task.asset_sha256)
    try:
        table = render_asset_views(
            task,
            spec,
            renderer,
            photos=_WORKER["photos"].get(spec.spec_hash),
            crops=_WORKER["crops"],
            crop_store=out,
            photo_renderer=_WORKER["photo_renderer"],
        )
    except (StoreError, FaultError):
        raise  # an outage, a permission problem or our own fault: the task fails (and is retried)
    except GlassFinderError as exc:
        # The asset's fault (bad bytes, a frame that cannot be fitted): quarantined, for good
        # unless it could not be fetched. Anything else (a bug, a GL failure) fails the task.
        record = QuarantineRecord(
            "render",
            type(exc).__name__,
            str(exc),
            task.product_id,
            source=task.asset_key,
            asset_sha256=task.asset_sha256,
            retry=isinstance(exc, AssetUnavailableError),
        ).to_dict()
        out.put(layout.render_quarantine_key(spec.spec_hash, task.asset_sha256), json.dumps(record).encode())
        return {"status": "quarantined", "spec_hash": spec.spec_hash, **record}
    try:
        write_shard(out, key, table, "image", create_only=True)
    except ObjectExistsError:
        return {"status": "skipped", "spec_hash": spec.spec_hash, "key": key}
    busy = time.perf_counter() - started
    return {
        "status": "rendered",
        "spec_hash": spec.spec_hash,
        "key": key,
        "views": table.num_rows,
        "busy": busy,
    }


# --- pools -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _spawn_without_main() -> Iterator[None]:
    """Start spawned workers without re-running the parent's `__main__`.

    A spawned child re-imports the parent's main script. Under an Airflow worker that script is
    the `airflow` entry point, whose import configures Airflow against the database URL that the
    task supervisor has blanked, so every child died and the pool replaced it forever. Render
    workers need nothing from `__main__`, so the children are started with a stand-in.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _worker_died(procs: list[Any], exc: BaseException) -> RenderWorkerError:
    for proc in procs:
        proc.join(1)  # the pool has seen a death; give the exit codes a moment to settle
    codes = sorted({p.exitcode for p in procs if p.exitcode})
    return RenderWorkerError(
        f"a render worker process died (exit codes {codes or 'unknown'}; its error is in the log "
        f"above): {exc}"
    )


def run_tasks(
    tasks: list[AssetTask],
    specs: list[RenderSpec],
    out: ObjectStore,
    photos: dict[str, list[Any] | None],
    workers: int,
    packshot_json: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Each task's result, rendered in this process for one worker, else in a spawned pool.

    A pool that loses a worker fails at once (RenderWorkerError) instead of replacing it:
    a worker that died once will die again, and a replaced worker hides why.
    """
    spec_jsons = [s.canonical_json() for s in specs]
    if not tasks:
        return
    if workers <= 1:
        _init_worker(spec_jsons, out, 1, photos, None, packshot_json)
        try:
            for task in tasks:
                yield _checked(_render_task(task))
        finally:
            renderer = _WORKER.get("renderer")
            _WORKER.clear()
            if renderer is not None:
                # Now, not whenever a traceback holding it is collected: the EGL display is
                # shared, and a late delete terminates the next in-process renderer's display.
                renderer.close()
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(spec_jsons, out, workers, photos, os.getpid(), packshot_json),
    ) as pool:
        with _spawn_without_main():  # every worker is started by the first `workers` submits
            futures = [pool.submit(_render_task, task) for task in tasks]
        procs = list(getattr(pool, "_processes", {}).values())  # for their exit codes
        try:
            for future in as_completed(futures):
                yield _checked(future.result())
        except BrokenProcessPool as exc:
            raise _worker_died(procs, exc) from exc
        finally:
            for future in futures:
                future.cancel()


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if result["status"] == "worker_failed":
        raise RenderWorkerError(f"render worker could not start: {result['message']}")
    return result


# --- driver -------------------------------------------------------------------------------------
def render_catalog(
    manifest_uri: str,
    spec: RenderSpec,
    out: ObjectStore,
    *,
    workers: int | None = None,
    progress: bool = False,
    limit: int | None = None,
    assets: Collection[str] | None = None,
) -> RenderReport:
    """Render every asset of the manifest that has no shard yet for this spec.

    assets: render only the rows with these asset sha256s (a batch of a mapped task); the
    catalogue-wide quarantine report is then left to whoever planned the batches.
    """
    (report,) = render_catalog_specs(
        manifest_uri, [spec], out, workers=workers, progress=progress, limit=limit, assets=assets
    )
    return report


def _photo_bank(spec: RenderSpec, out: ObjectStore, report: RenderReport) -> list[Any] | None:
    """The usable photos of a spec that renders onto a photo bank (None for procedural faces)."""
    if not spec.face_source.startswith("photos:"):
        return None
    # Analysed once per photo and cached in the output store; the crops travel by key.
    bank_store, prefix = photo_bank_location(spec.face_source, out)
    photos, bad_photos = PhotoBank(bank_store, prefix, out).scan()
    report.quarantined.extend(
        QuarantineRecord(
            "render", str(b.get("reason")), str(b.get("message")), source=b.get("photo")
        ).to_dict()
        for b in bad_photos
    )
    if not photos:
        raise BadInputError(f"photo bank {spec.face_source} has no usable face photo")
    return photos


def fixed_lens_of(row: dict[str, Any]) -> tuple[str, tuple[float, ...]] | None:
    """(lens style, lens rgba) of a manifest row whose product keeps its lenses, else None."""
    if row.get("lens_policy") != "fixed":
        return None
    return str(row["lens_style"]), tuple(row["lens_rgba"])


def _tasks_for(
    rows: list[dict[str, Any]],
    spec: RenderSpec,
    out: ObjectStore,
    report: RenderReport,
    mstore: ObjectStore,
    mkey: str,
) -> list[AssetTask]:
    """The assets still to render under `spec`; the others are counted in the report."""
    existing = {i.key for i in out.list(layout.render_prefix(spec.spec_hash))}
    final = known_quarantine(out, spec.spec_hash)
    tasks = []
    for row in rows:
        report.assets += 1
        sha = str(row.get("asset_sha256") or "")
        if len(sha) != 64:
            report.quarantined.append(
                QuarantineRecord(
                    "render",
                    "missing_sha256",
                    "manifest row has no asset_sha256: ingest the catalogue first",
                    str(row.get("product_id")),
                    source=str(row.get("asset_uri")),
                ).to_dict()
            )
            continue
        if layout.render_shard_key(spec.spec_hash, sha) in existing:
            report.skipped += 1
            continue
        if sha in final:
            report.quarantined.append({**final[sha], "product_id": row.get("product_id"), "known": True})
            continue
        asset_store, asset_key = resolve_asset(mstore, mkey, str(row["asset_uri"]))
        fixed = fixed_lens_of(row)
        tasks.append(AssetTask(str(row["product_id"]), sha, asset_store, asset_key, fixed, spec.spec_hash))
    return tasks


def _packshot_tasks(
    rows: list[dict[str, Any]],
    specs: list[RenderSpec],
    packshot: PackshotSpec,
    out: ObjectStore,
    report: RenderReport,
    mstore: ObjectStore,
    mkey: str,
) -> list[AssetTask]:
    """The assets lacking packshots; an asset whose try-on render failed for good is not retried."""
    final: set[str] = set().union(*(known_quarantine(out, s.spec_hash) for s in specs)) if specs else set()
    by_sha = {str(r.get("asset_sha256") or ""): r for r in rows}
    by_sha.pop("", None)
    report.assets = len(by_sha)
    todo = set(missing_packshots(out, packshot, list(by_sha)))
    tasks = []
    for sha, row in by_sha.items():
        if len(sha) != 64 or sha in final:
            continue
        if sha not in todo:
            report.skipped += 1
            continue
        asset_store, asset_key = resolve_asset(mstore, mkey, str(row["asset_uri"]))
        tasks.append(
            AssetTask(
                str(row["product_id"]),
                sha,
                asset_store,
                asset_key,
                fixed_lens_of(row),
                packshot.spec_hash,
                "packshot",
            )
        )
    return tasks


def render_catalog_specs(
    manifest_uri: str,
    specs: list[RenderSpec],
    out: ObjectStore,
    *,
    workers: int | None = None,
    progress: bool = False,
    limit: int | None = None,
    assets: Collection[str] | None = None,
    packshot: PackshotSpec | None = None,
) -> list[RenderReport]:
    """`render_catalog` for several specs at once, in one pool: workers start once, not per spec.

    packshot: also make the packshots each asset lacks under this spec (in the same workers);
    its report comes last, with kind "packshot".
    """
    start = time.perf_counter()
    reports = {s.spec_hash: RenderReport(spec_hash=s.spec_hash) for s in specs}
    mstore, mkey = open_object(manifest_uri)
    rows = read_catalog_rows(manifest_uri)[0][:limit]
    if assets is not None:
        wanted = set(assets)
        rows = [r for r in rows if r.get("asset_sha256") in wanted]
    tasks: list[AssetTask] = []
    photos: dict[str, list[Any] | None] = {}
    for spec in specs:
        with contextlib.suppress(ObjectExistsError):  # the spec is content-addressed: same bytes
            out.put(layout.render_spec_key(spec.spec_hash), spec.canonical_json().encode(), create_only=True)
        report = reports[spec.spec_hash]
        photos[spec.spec_hash] = _photo_bank(spec, out, report)
        tasks += _tasks_for(rows, spec, out, report, mstore, mkey)
    if packshot is not None:
        save_packshot_spec(out, packshot)
        reports[packshot.spec_hash] = RenderReport(spec_hash=packshot.spec_hash, kind="packshot")
        tasks += _packshot_tasks(rows, specs, packshot, out, reports[packshot.spec_hash], mstore, mkey)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    bar = None
    if progress and tasks:
        from tqdm import tqdm  # tqdm (~50 ms): only for a progress bar, kept off the DAG-parse path

        names = ", ".join(s.spec_hash for s in specs)
        bar = tqdm(total=len(tasks), unit="asset", desc=f"rendering {names}")
    packshot_json = packshot.canonical_json() if packshot is not None else None
    for result in run_tasks(tasks, specs, out, photos, workers, packshot_json):
        status = result.pop("status")
        report = reports[result.pop("spec_hash")]
        report.worker_pids.add(int(result.pop("pid")))
        report.busy_seconds += float(result.pop("busy", 0.0))
        if status == "packshot_failed":
            log.warning(
                "no packshots for %s (%s): %s", result["product_id"], result["source"], result["message"]
            )
        elif status == "rendered":
            report.rendered += 1
            report.views += int(result["views"])
        elif status == "skipped":
            report.skipped += 1
        else:
            report.quarantined.append(result)
            log.warning("quarantined %s (%s): %s", result["product_id"], result["source"], result["message"])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    for report in reports.values():
        if assets is None and report.kind == "tryon":
            out.put(
                layout.render_quarantine_report_key(report.spec_hash),
                json.dumps(report.quarantined, indent=2).encode(),
            )
        report.seconds = seconds
    return list(reports.values())
