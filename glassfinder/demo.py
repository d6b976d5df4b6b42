"""The main job on embedded defaults: what `glassfinder demo` (the README's first command) runs.

It runs every pipeline stage that exists, end to end, on the local store by default, and says
plainly which stages are still to come. It grows as the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from glassfinder.catalog.generate import GenerateReport, generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, IngestReport, ingest_manifest
from glassfinder.catalog.sheet import contact_sheet
from glassfinder.render.job import RenderReport, render_catalogue
from glassfinder.render.sheet import tryon_sheet
from glassfinder.render.spec import RenderSpec
from glassfinder.store import open_store
from glassfinder.store.check import StoreCheckReport, check_store

#: Stages of the pipeline not built yet, with the issue that brings each.
PENDING_STAGES = (
    ("embed", "alignment, metric-learned embedding (#5)"),
    ("index", "versioned FAISS index publish (#6)"),
    ("dags", "Airflow DAGs on embedded defaults (#7)"),
    ("search", "query side (#8)"),
)
SAMPLE_PREFIX = "sample-catalog"
DEMO_PRODUCTS = 24
DEMO_SEED = 0
#: A light spec for the demo: enough views to see the pipeline work in seconds on two cores.
DEMO_SPEC = RenderSpec(image_px=192, views_per_asset=4)


@dataclass
class DemoReport:
    store_uri: str
    store_check: StoreCheckReport
    generated: GenerateReport
    ingested: IngestReport
    sheet_path: Path
    rendered: RenderReport
    tryon_sheet_path: Path
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
    return DemoReport(store.uri, check, generated, ingested, sheet_path, rendered, tryon_path)
