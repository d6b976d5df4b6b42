"""The main job on embedded defaults: what `glassfinder demo` (the README's first command) runs.

It runs every pipeline stage that exists, end to end, on the local store by default, and says
plainly which stages are still to come. It grows as the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glassfinder.catalog.generate import GenerateReport, generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, IngestReport, ingest_manifest
from glassfinder.catalog.sheet import contact_sheet
from glassfinder.embed.evaluate import evaluate_models, load_eval_sets
from glassfinder.embed.infer import Embedder
from glassfinder.embed.job import EmbedReport, embed_catalogue
from glassfinder.embed.model import build_model
from glassfinder.embed.train import TrainConfig, train_and_publish
from glassfinder.render.job import RenderReport, render_catalogue
from glassfinder.render.sheet import tryon_sheet
from glassfinder.render.spec import RenderSpec
from glassfinder.store import open_store
from glassfinder.store.check import StoreCheckReport, check_store

#: Stages of the pipeline not built yet, with the issue that brings each.
PENDING_STAGES = (
    ("index", "versioned FAISS index publish (#6)"),
    ("dags", "Airflow DAGs on embedded defaults (#7)"),
    ("search", "query side (#8)"),
)
SAMPLE_PREFIX = "sample-catalog"
DEMO_PRODUCTS = 24
DEMO_SEED = 0
#: A light spec for the demo: enough views to see the pipeline work in seconds on two cores.
DEMO_SPEC = RenderSpec(image_px=192, views_per_asset=6, fit_jitter=0.5)
#: Queries: other faces (900-999), poses and lens colours than the catalogue's.
DEMO_QUERY_SPEC = RenderSpec(
    image_px=192, views_per_asset=1, face_first=900, face_count=100, fit_jitter=0.5, seed=1
)
DEMO_MODEL = "glasses"
DEMO_EPOCHS = 30


@dataclass
class DemoReport:
    store_uri: str
    store_check: StoreCheckReport
    generated: GenerateReport
    ingested: IngestReport
    sheet_path: Path
    rendered: RenderReport
    tryon_sheet_path: Path
    model_ref: str
    train_seconds: float
    embedded: EmbedReport
    evaluation: dict[str, Any]
    pending: tuple[tuple[str, str], ...] = field(default=PENDING_STAGES)


def run_demo(
    store_uri: str, *, sheet_path: Path, products: int = DEMO_PRODUCTS, seed: int = DEMO_SEED
) -> DemoReport:
    """Prove the store, generate a sample catalogue, ingest it and draw its contact sheet."""
    store = open_store(store_uri)
    check = check_store(store)
    sample_uri = f"{store_uri.rstrip('/')}/{SAMPLE_PREFIX}"
    generated = generate_catalog(open_store(sample_uri), products, seed, progress=True)
    ingested = ingest_manifest(f"{sample_uri}/{generated.manifest_key}", dest=store)
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(store, CATALOG_MANIFEST_KEY, limit=products, columns=4, tile_px=192).save(sheet_path)
    manifest_uri = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
    rendered = render_catalogue(manifest_uri, DEMO_SPEC, store, progress=True)
    tryon_path = sheet_path.with_name("tryon-sheet.png")
    first = str(ingested.accepted[0]["product_id"])
    tryon_sheet(manifest_uri, first, DEMO_SPEC, views=8).save(tryon_path)
    render_catalogue(manifest_uri, DEMO_QUERY_SPEC, store)
    # Training resumes from the work dir: a second demo run reuses the finished model.
    config = TrainConfig(spec_hashes=(DEMO_SPEC.spec_hash,), epochs=DEMO_EPOCHS, batch_size=32, lr=5e-3)
    result, sha = train_and_publish(
        store, config, name=DEMO_MODEL, work_dir=sheet_path.parent / "demo-train", resume=True, progress=True
    )
    embedder = Embedder(result.model)
    embedded = embed_catalogue(store, DEMO_SPEC.spec_hash, embedder, str(sha), progress=True)
    sets = load_eval_sets(store, DEMO_SPEC.spec_hash, DEMO_QUERY_SPEC.spec_hash, embedder)
    baseline = Embedder(build_model(config.model, seed=config.seed).eval())
    evaluation = evaluate_models(sets, {"trained": embedder, "untrained": baseline})
    return DemoReport(
        store.uri,
        check,
        generated,
        ingested,
        sheet_path,
        rendered,
        tryon_path,
        f"{DEMO_MODEL}@{sha}",
        result.seconds,
        embedded,
        evaluation,
    )
