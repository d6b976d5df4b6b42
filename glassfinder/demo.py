"""The main job on embedded defaults: what `glassfinder demo` (the README's first command) runs.

It runs every pipeline stage that exists, end to end, on the local store by default, and says
plainly which stages are still to come. It grows as the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from glassfinder import layout
from glassfinder.store import open_store
from glassfinder.store.check import CHECK_PREFIX, StoreCheckReport, check_store
from glassfinder.store.shards import ViewColumns, embeddings_of, feature_table, read_shard, write_shard

#: Stages of the pipeline not built yet, with the issue that brings each.
PENDING_STAGES = (
    ("catalog", "procedural sample catalogue and asset ingestion (#3)"),
    ("render", "virtual try-on renders (#4)"),
    ("embed", "alignment, metric-learned embedding (#5)"),
    ("index", "versioned FAISS index publish (#6)"),
    ("dags", "Airflow DAGs on embedded defaults (#7)"),
    ("search", "query side (#8)"),
)


@dataclass
class DemoReport:
    store_uri: str
    store_check: StoreCheckReport
    shard_key: str
    shard_rows: int
    shard_bytes: int
    pending: tuple[tuple[str, str], ...] = field(default=PENDING_STAGES)


def run_demo(store_uri: str) -> DemoReport:
    """Prove the store on `store_uri` and round-trip a feature shard through it."""
    store = open_store(store_uri)
    report = check_store(store)
    # A shard round trip with the real schema: the contract every later stage writes to.
    n, dim = 8, 256
    rng = np.random.default_rng(0)
    asset, spec, model = "0" * 64, "1" * 16, "2" * 16
    views = ViewColumns(
        view_key=[layout.view_key(asset, spec, "head-0000", i) for i in range(n)],
        product_id=["demo-product"] * n,
        asset_sha256=[asset] * n,
        spec_hash=[spec] * n,
        face_id=["head-0000"] * n,
        view_index=np.arange(n),
        pose_deg=np.zeros((n, 3)),
        lens_rgba=np.tile([0.1, 0.1, 0.1, 0.8], (n, 1)),
        lens_style=["tinted"] * n,
    )
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    # Under tmp/, never under features/: this shard is not a product and must not be indexed.
    key = f"{CHECK_PREFIX}/demo-{layout.feature_shard_key(model, spec, asset).replace('/', '-')}"
    try:
        size = write_shard(store, key, feature_table(views, model_sha=model, embeddings=emb), "feature")
        back = read_shard(store, key, "feature", dim=dim)
    finally:
        store.delete(key)
    if not np.array_equal(embeddings_of(back), emb):
        raise AssertionError(f"feature shard {key} did not round-trip")
    return DemoReport(
        store_uri=store.uri,
        store_check=report,
        shard_key=key,
        shard_rows=back.num_rows,
        shard_bytes=size,
    )
