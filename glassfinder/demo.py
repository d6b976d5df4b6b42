"""The main job on embedded defaults: what `glassfinder demo` (the README's first command) runs.

Everything goes through the Airflow DAGs, run in this process with `dag.test()` on a SQLite
Airflow under .glassfinder/airflow, against the local store: a generated sample catalogue is
exported to `incoming/`, the training-data DAG renders it (the packaged model needs no training), the
nightly re-index renders the held-out query views, embeds, evaluates and publishes index v1, a
search runs against the published index, and a second night shows that nothing is redone. What
it did and measured is also written as `demo-report.json` beside the sheets.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glassfinder import airflow_local, settings
from glassfinder.airflow_local import DagRunResult
from glassfinder.catalog.generate import GenerateReport, generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, IngestReport, ingest_manifest
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.embed.augment import QUERY_DAMAGE
from glassfinder.embed.data import load_views
from glassfinder.embed.evaluate import evaluate_models, load_eval_sets
from glassfinder.embed.infer import Embedder
from glassfinder.embed.model import build_model
from glassfinder.embed.registry import load_model, published_sha
from glassfinder.errors import GlassFinderError, QueryRefusedError
from glassfinder.face.net import PACKAGED_NAME, packaged_analyser
from glassfinder.index.reader import IndexReader
from glassfinder.nets.packaged import read_packaged
from glassfinder.render.catalog_sheet import contact_sheet, packshot_sheet
from glassfinder.render.packshot import PACKSHOT_SPEC
from glassfinder.render.sheet import tryon_sheet
from glassfinder.render.spec import RenderSpec, load_spec
from glassfinder.search.query import QueryEngine
from glassfinder.search.samples import photo_wearing
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore
from glassfinder.store.check import StoreCheckReport, check_store

#: Stages of the product not built yet, with the issue that brings each.
PENDING_STAGES: tuple[tuple[str, str], ...] = ()
DEMO_PRODUCTS = 24
DEMO_SEED = 0
#: The training-data DAG renders the catalogue but trains nothing: the demo searches with the
#: packaged default model (glassfinder/models/), as a fresh install does.
DEMO_TRAINING = {"train": False}
SHOWN_QUERIES = 3


@dataclass
class SearchShown:
    product_id: str
    face_id: str
    rank: int | None  # 1-based rank of the true product in the top 5, None if absent
    hits: list[tuple[str, float]]


@dataclass
class DemoReport:
    store_uri: str
    store_check: StoreCheckReport
    generated: GenerateReport
    ingested: IngestReport
    sheet_path: Path
    tryon_sheet_path: Path
    training: DagRunResult
    nightly: DagRunResult
    quiet_night: DagRunResult
    model_vs_untrained: dict[str, Any]
    searches: list[SearchShown]
    search_top1: float
    search_top5: float
    photo_searches: list[PhotoSearch] = field(default_factory=list)
    pending: tuple[tuple[str, str], ...] = field(default=PENDING_STAGES)

    def figures(self) -> dict[str, Any]:
        """What the demo did and measured, as plain data (written beside the sheets as JSON)."""
        runs = {"training": self.training, "nightly": self.nightly, "quiet_night": self.quiet_night}
        return {
            "store": self.store_uri,
            "ingested": self.ingested.summary(),
            "runs": {
                k: {"dag_id": r.dag_id, "state": r.state, "summary": r.summary} for k, r in runs.items()
            },
            "model_vs_untrained": self.model_vs_untrained,
            "search": {"top1": self.search_top1, "top5": self.search_top5, "shown": len(self.searches)},
            "photo_searches": [
                {k: str(v) if isinstance(v, Path) else v for k, v in asdict(p).items()}
                for p in self.photo_searches
            ],
        }


def _search(store_uri: str, index_name: str, query_spec: str) -> tuple[list[SearchShown], float, float]:
    """Held-out query views (other faces, damaged like photos) searched against CURRENT."""
    store = open_store(store_uri)
    reader = IndexReader(store, index_name)
    embedder = Embedder(load_model(store, f"{reader.manifest['model']}@{reader.manifest['model_sha']}").model)
    views = load_views(store, query_spec, embedder.geometry, damage=QUERY_DAMAGE, seed=0)
    results = reader.search(embedder.embed(views.crops), k=5)
    truth = views.product_ids.astype(str)
    faces = views.meta.column("face_id").to_pylist()
    ranks = [
        next((i + 1 for i, h in enumerate(hits) if h.product_id == t), None)
        for hits, t in zip(results, truth, strict=True)
    ]
    shown = [
        SearchShown(str(truth[i]), str(faces[i]), ranks[i], [(h.product_id, h.score) for h in results[i]])
        for i in range(min(SHOWN_QUERIES, len(truth)))
    ]
    found = np.array([r or 0 for r in ranks])
    return shown, float((found == 1).mean()), float(((found >= 1) & (found <= 5)).mean())


@dataclass
class PhotoSearch:
    photo: Path
    answer: str  # the line shown
    truth: str | None = None  # the product worn (None: the bare face)
    rank: int | None = None  # of the worn product in the top 5
    refused: str | None = None  # the reason code, when refused
    eyes_xy: list[list[float]] | None = None
    glasses_probability: float | None = None


def _sample_photo() -> bytes | None:
    """scikit-image's public-domain astronaut portrait (a bare face), when scikit-image is installed."""
    try:  # scikit-image: an optional extra (the test extra), only for this sample photo
        import skimage.data
    except ImportError:
        return None
    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def _photo_search(store_uri: str, index_name: str, out_dir: Path, photo: bytes) -> list[PhotoSearch]:
    """The sample face wearing a catalogue product (rendered), then bare: a search and a refusal."""
    store = open_store(store_uri)
    row = read_manifest_rows(store, CATALOG_MANIFEST_KEY)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    worn_path, bare_path = out_dir / "query-wearing.png", out_dir / "query-bare.png"
    Image.fromarray(photo_wearing(store, row, photo, "astronaut.png")).save(worn_path)
    bare_path.write_bytes(photo)
    engine = QueryEngine(store, index_name)
    shown = []
    for path, truth in ((worn_path, str(row["product_id"])), (bare_path, None)):
        try:
            result = engine.search(path.read_bytes(), path.name, k=5)
        except QueryRefusedError as exc:
            shown.append(
                PhotoSearch(path, f"{path.name}: refused ({exc.reason}): {exc}", truth, refused=exc.reason)
            )
            continue
        ids = [h.product_id for h in result.hits]
        t = result.timings_ms
        if truth is None:  # the bare face got past the glasses-presence check
            what = (
                f"{path.name} (no glasses): not refused (p(glasses)={result.glasses_probability:.2f} >= "
                f"{result.glasses_threshold:.2f}: the packaged check never saw a real bare face)"
            )
        else:
            rank = f"{truth} at rank {ids.index(truth) + 1}" if truth in ids else f"{truth} not in the top 5"
            what = f"{path.name} (wearing {truth}): {rank}"
        shown.append(
            PhotoSearch(
                path,
                f"{what} in {t['total']:.0f} ms; top 5: "
                + ", ".join(f"{h.product_id} {h.score:.3f}" for h in result.hits),
                truth,
                rank=ids.index(truth) + 1 if truth in ids else None,
                eyes_xy=result.eyes_xy,
                glasses_probability=round(result.glasses_probability, 4),
            )
        )
    return shown


def _packaged_model_line(store: ObjectStore, say: Callable[[str], None]) -> str:
    """Say which model the demo searches with (the packaged default, unless the store has one)."""
    name = settings.model_name()
    loaded = load_model(store, name)
    published = published_sha(store, name)[0] is not None
    where = "published in the store" if published else "packaged default, no training step"
    card = loaded.card
    say(
        f"  model {name}@{loaded.sha} ({where}): {loaded.model.config.architecture}, trained on "
        f"{card.get('train_products')} products in {card.get('train_seconds')} s"
    )
    photos = card.get("real_photo_bench")
    if photos:
        for face, f in photos.get("faces", {}).items():
            say(
                f"  real-photo bench ({photos.get('products')} products): {face} top-1 {f['top1']:.3f} "
                f"top-10 {f['top10']:.3f}, refused {f['refused']} of {f['photos']}"
            )
    return f"{name}@{loaded.sha}"


def _model_vs_untrained(store_uri: str, gallery_spec: str, query_spec: str, model_ref: str) -> dict[str, Any]:
    """The model beside its starting point: the ImageNet-initialised network before fine-tuning."""
    store = open_store(store_uri)
    loaded = load_model(store, model_ref)
    embedder = Embedder(loaded.model)
    sets = load_eval_sets(store, gallery_spec, query_spec, embedder)
    label = "trained" if published_sha(store, loaded.name)[0] == loaded.sha else "packaged"
    models = {label: embedder}
    try:  # needs the ImageNet weights (.ci/setup downloads them); searching does not
        seed = int(loaded.card.get("training", {}).get("seed", 0))
        models["imagenet"] = Embedder(build_model(loaded.model.config, seed=seed).eval())
    except GlassFinderError:
        pass
    return evaluate_models(sets, models)


def run_line(label: str, run: DagRunResult) -> str:
    """One line on a DAG run, from its summary record."""
    s = run.summary
    index = s.get("index") or {}
    published = (
        f"; published index v{index['version']}"
        if index.get("published")
        else f"; index not published ({index['reason']}; CURRENT v{index['version']})"
        if index
        else ""
    )
    packshots = ""
    if s.get("packshots") is not None and run.dag_id != "glassfinder_training_data":
        made = s["packshots"]
        per = f" ({s['packshot_seconds'] / made:.2f} s each)" if made else ""
        packshots = f", {made} packshots made{per}"
    return (
        f"{label}: {run.dag_id} {run.state} in {run.seconds:.0f} s: {s['rendered']} renders made "
        f"({s['views_rendered']} views){packshots}, {s['reused']} assets reused, {s['embedded']} embedded, "
        f"{s['quarantined']} quarantined{published}"
    )


def _check_store_aloud(store: ObjectStore, say: Callable[[str], None]) -> StoreCheckReport:
    """The store's own check first, so a store that cannot hold the run fails before any work."""
    check = check_store(store)
    say(f"store {store.uri}")
    for what, seconds in check.steps:
        say(f"  ok  {what}  ({seconds * 1000:.1f} ms)")
    return check


def _bring_in_catalog(
    store: ObjectStore, products: int, seed: int, sheet_path: Path, say: Callable[[str], None]
) -> tuple[str, GenerateReport, IngestReport]:
    """Generate the shop's export, ingest it and draw its contact sheet; returns the export's URI.

    The training DAG renders the catalogue, so the catalogue comes in before the first night."""
    source = settings.source_manifest_uri(store.uri)
    generated = generate_catalog(open_store(source.rsplit("/", 1)[0]), products, seed, progress=True)
    say(
        f"catalog: generated {generated.products} products ({generated.families} colourway families) "
        f"as the shop's export {source} in {generated.seconds:.1f} s"
    )
    ingested = ingest_manifest(source, dest=store)
    i = ingested.summary()
    say(
        f"catalog: ingested {i['accepted']} of {i['rows']} ({i['quarantined']} quarantined) "
        f"in {i['seconds']} s"
    )
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(store, CATALOG_MANIFEST_KEY, limit=products, columns=4, tile_px=192).save(sheet_path)
    say(f"catalog: contact sheet {sheet_path}")
    return source, generated, ingested


def _training_data_run(store: ObjectStore, say: Callable[[str], None]) -> tuple[DagRunResult, str]:
    """The training-data DAG, then the model searched with; returns the run and the model's ref."""
    say("airflow: running glassfinder_training_data (render the catalogue; no training: packaged model)...")
    training = airflow_local.run_dag(
        "glassfinder_training_data", {"store": store.uri, **DEMO_TRAINING}, check=True
    )
    say(run_line("airflow", training))
    return training, _packaged_model_line(store, say)


def _reindex(store: ObjectStore, source: str) -> DagRunResult:
    return airflow_local.run_dag(
        "glassfinder_catalog_reindex", {"store": store.uri, "source_manifest": source}, check=True
    )


def _first_night(store: ObjectStore, source: str, say: Callable[[str], None]) -> DagRunResult:
    """The nightly re-index that publishes index v1, with its evaluation."""
    say("airflow: running glassfinder_catalog_reindex (render query views, embed, evaluate, publish)...")
    nightly = _reindex(store, source)
    say(run_line("airflow", nightly))
    ev = nightly.summary["index"].get("evaluation") or {}
    if ev:
        say(
            f"  evaluation of v{nightly.summary['index']['version']} on {ev['queries']} held-out query "
            f"views: "
            f"top-1 {ev['top1']:.3f}  top-5 {ev['top5']:.3f}  top-10 {ev['top10']:.3f} "
            f"({ev['aggregation']} over each product's views)"
        )
    return nightly


def _compare_with_untrained(
    store: ObjectStore,
    catalog_spec: RenderSpec,
    query_spec: RenderSpec,
    model: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    comparison = _model_vs_untrained(store.uri, catalog_spec.spec_hash, query_spec.spec_hash, model)
    for label, entry in comparison["models"].items():
        closed = entry["closed_set"]
        say(f"  {label:<10} model, closed-set top-1 {closed.get('top1')}  top-5 {closed.get('top5')}")
    return comparison


def _save_packshot_sheet(
    store: ObjectStore, sheet_path: Path, products: int, say: Callable[[str], None]
) -> None:
    packshot_path = sheet_path.with_name("packshot-sheet.png")
    made = packshot_sheet(store, CATALOG_MANIFEST_KEY, store, PACKSHOT_SPEC, limit=products, tile_px=192)
    made.image.save(packshot_path)
    say(
        f"catalog: packshot sheet {packshot_path} ({made.from_store} of {made.products} products' "
        "packshots from the store)"
    )


def _save_tryon_sheet(
    store: ObjectStore, sheet_path: Path, product_id: str, spec: RenderSpec, say: Callable[[str], None]
) -> Path:
    tryon_path = sheet_path.with_name("tryon-sheet.png")
    tryon_sheet(f"{store.uri}/{CATALOG_MANIFEST_KEY}", product_id, spec, views=8).save(tryon_path)
    say(f"render: try-on sheet {tryon_path}")
    return tryon_path


def _held_out_searches(
    store: ObjectStore, nightly: DagRunResult, query_spec: RenderSpec, say: Callable[[str], None]
) -> tuple[list[SearchShown], float, float]:
    searches, top1, top5 = _search(store.uri, settings.index_name(), query_spec.spec_hash)
    say(
        f"search: index v{nightly.summary['index']['version']}, held-out views on other faces, damaged like "
        f"photos: top-1 {top1:.3f}, top-5 {top5:.3f}; the first {len(searches)}:"
    )
    for q in searches:
        found = f"found at rank {q.rank}" if q.rank else "not in the top 5"
        say(
            f"  {q.product_id} on {q.face_id}: {found}; top 5: "
            + ", ".join(f"{p} {v:.3f}" for p, v in q.hits)
        )
    return searches, top1, top5


def _photo_queries(store: ObjectStore, sheet_path: Path, say: Callable[[str], None]) -> list[PhotoSearch]:
    """Searches with a real photo (the sample face, wearing a product, then bare), when there is one."""
    photo = _sample_photo()
    if photo is None:
        say("search: photo queries skipped (scikit-image, which ships the sample face, is not installed)")
        return []
    # The packaged face analysis: trained on procedural heads and Hopper's photo, never on the astronaut.
    sha, _ = packaged_analyser()
    card = read_packaged(PACKAGED_NAME).card["evaluation"]
    eyes, presence = card["eye_error_ipd"]["network_all"], card["presence"]
    say(
        f"face analysis: packaged model {sha} (held-out renders: eye error median {eyes['median']:.3f} "
        f"of the pupil distance; glasses presence false refusal {presence['false_refusal']:.3f}, "
        f"false accept {presence['false_accept']:.3f})"
    )
    photo_searches = _photo_search(store.uri, settings.index_name(), sheet_path.parent, photo)
    for shown in photo_searches:
        say(f"search: {shown.answer}")
    say(
        f"  try them: glassfinder search {photo_searches[0].photo}; glassfinder serve (page at "
        f"http://127.0.0.1:8000/, a product at http://127.0.0.1:8000/p/{photo_searches[0].truth})"
    )
    return photo_searches


def _say_pending(say: Callable[[str], None]) -> None:
    if PENDING_STAGES:
        say("stages still to come:")
        for stage, what in PENDING_STAGES:
            say(f"  --  {stage}: {what}")


def _write_figures(report: DemoReport, sheet_path: Path, say: Callable[[str], None]) -> None:
    figures_path = sheet_path.with_name("demo-report.json")
    figures_path.write_text(json.dumps(report.figures(), indent=2, default=str) + "\n")
    say(f"report: {figures_path}")


def run_demo(
    store_uri: str,
    *,
    sheet_path: Path,
    products: int = DEMO_PRODUCTS,
    seed: int = DEMO_SEED,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Generate a shop's catalogue, then run the training-data and nightly DAGs and search the index.

    say: receives a line on each stage as it ends.
    """
    # Task logs stay in Airflow's log folder; what matters is said here and kept in each run's records.
    airflow_local.configure(sheet_path.parent / "airflow", log_level="ERROR")
    store = open_store(store_uri)
    check = _check_store_aloud(store, say)
    source, generated, ingested = _bring_in_catalog(store, products, seed, sheet_path, say)
    training, model = _training_data_run(store, say)
    nightly = _first_night(store, source, say)
    catalog_spec, query_spec = load_spec("catalog"), load_spec("queries")
    comparison = _compare_with_untrained(store, catalog_spec, query_spec, model, say)
    _save_packshot_sheet(store, sheet_path, products, say)
    quiet = _reindex(store, source)  # a second night: nothing to redo
    say(run_line("airflow (the next night)", quiet))
    first = str(ingested.accepted[0]["product_id"])
    tryon_path = _save_tryon_sheet(store, sheet_path, first, catalog_spec, say)
    searches, top1, top5 = _held_out_searches(store, nightly, query_spec, say)
    photo_searches = _photo_queries(store, sheet_path, say)
    _say_pending(say)
    report = DemoReport(
        store.uri,
        check,
        generated,
        ingested,
        sheet_path,
        tryon_path,
        training,
        nightly,
        quiet,
        comparison,
        searches,
        top1,
        top5,
        photo_searches,
    )
    _write_figures(report, sheet_path, say)
    return report
