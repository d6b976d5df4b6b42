"""Sample queries: a real face photo wearing a catalogue product, rendered with the product's lenses.

The demo, the tests and the search bench need photos of a face wearing a *known* product; only
renders give that. The view (pose jitter, light, fit) comes from its own spec seed, so the query
differs from any gallery view of the same product.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from glassfinder.catalog.ingest import catalog_asset_key
from glassfinder.catalog.loader import import_glb
from glassfinder.heads.photos import analyse_photo
from glassfinder.render.job import fixed_lens_of
from glassfinder.render.spec import RenderSpec, plan_view
from glassfinder.render.tryon import AssetMeshes, PhotoRenderer, TryOnRenderer
from glassfinder.store.base import ObjectStore

#: Seed of the render spec that sample queries draw their views from (the gallery uses others).
SAMPLE_QUERY_SEED = 99
SAMPLE_QUERY_PX = 512


def photo_wearing(
    store: ObjectStore, row: dict[str, Any], photo: bytes, name: str, *, seed: int = SAMPLE_QUERY_SEED
) -> np.ndarray:
    """(512, 512, 3) uint8: the photo's face crop wearing the product of catalogue manifest `row`."""
    face, crop = analyse_photo(photo, name)
    sha = str(row["asset_sha256"])
    view = plan_view(RenderSpec(image_px=SAMPLE_QUERY_PX, seed=seed), sha, 0, fixed_lens=fixed_lens_of(row))
    asset = AssetMeshes(import_glb(store.get(catalog_asset_key(sha))))
    renderer = TryOnRenderer(SAMPLE_QUERY_PX)
    try:
        return PhotoRenderer(renderer).render(asset, face, crop, view).rgb
    finally:
        renderer.close()
