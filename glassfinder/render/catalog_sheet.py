"""Contact sheets of a catalogue: a grid of products, front and three-quarter views, labelled.

For people: a merchandiser or engineer looks at one to see that the catalogue is eyewear a
shopper would recognise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from glassfinder.catalog.build import import_glb
from glassfinder.catalog.ingest import resolve_asset
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.store.base import ObjectStore


def contact_sheet(
    store: ObjectStore, manifest_key: str, *, limit: int = 40, columns: int = 4, tile_px: int = 256
) -> Image.Image:
    """A sheet of the first `limit` products of the manifest at `manifest_key` in `store`."""
    from glassfinder.render.preview import FRONT, THREE_QUARTER, PreviewRenderer

    rows = read_manifest_rows(store, manifest_key)[:limit]
    renderer = PreviewRenderer(tile_px)
    label_h = 18
    cell_w, cell_h = 2 * tile_px, tile_px + label_h
    grid_rows = max(1, -(-len(rows) // columns))
    sheet = Image.new("RGB", (columns * cell_w, grid_rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        for i, row in enumerate(rows):
            asset_store, key = resolve_asset(store, manifest_key, str(row["asset_uri"]))
            scene = import_glb(asset_store.get(key))
            tiles = np.hstack([renderer.render(scene, FRONT), renderer.render(scene, THREE_QUARTER)])
            x, y = (i % columns) * cell_w, (i // columns) * cell_h
            sheet.paste(Image.fromarray(tiles), (x, y))
            label = f"{row['product_id']}  {row.get('shape_family') or ''} {row.get('colour_name') or ''}"
            draw.text((x + 6, y + tile_px + 3), label[:60], fill=(40, 40, 40))
    finally:
        renderer.close()
    return sheet
