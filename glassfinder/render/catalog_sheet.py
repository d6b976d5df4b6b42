"""Contact sheets of a catalogue: a grid of products, front and three-quarter views, labelled.

For people: a merchandiser or engineer looks at one to see that the catalogue is eyewear a
shopper would recognise. `packshot_sheet` shows the packshots results show (those the store
holds, the rest rendered on the spot the same way).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from glassfinder import layout
from glassfinder.catalog.ingest import resolve_asset
from glassfinder.catalog.loader import import_glb
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.render.job import fixed_lens_of
from glassfinder.render.packshot import PackshotSpec, render_packshots
from glassfinder.store.base import ObjectStore


def contact_sheet(
    store: ObjectStore, manifest_key: str, *, limit: int = 40, columns: int = 4, tile_px: int = 256
) -> Image.Image:
    """A sheet of the first `limit` products of the manifest at `manifest_key` in `store`."""
    # render.preview (pyrender, OpenGL): only here; packshot_sheet of stored packshots needs no GL
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


@dataclass
class PackshotSheet:
    image: Image.Image
    products: int
    from_store: int  # products whose packshots the store held
    rendered: int  # products rendered for the sheet (not stored)


def packshot_sheet(
    store: ObjectStore,
    manifest_key: str,
    packshots: ObjectStore,
    spec: PackshotSpec,
    *,
    limit: int = 40,
    columns: int = 4,
    tile_px: int = 256,
) -> PackshotSheet:
    """A sheet of the packshots (every view side by side) of the manifest's first `limit` products.

    packshots: the store the pipeline keeps packshots in; a product it has none for is rendered
    here (same spec, same pixels) and not stored.
    """
    rows = read_manifest_rows(store, manifest_key)[:limit]
    views = spec.view_names
    label_h = 18
    cell_w, cell_h = len(views) * tile_px, tile_px + label_h
    grid_rows = max(1, -(-len(rows) // columns))
    sheet = Image.new("RGB", (columns * cell_w, grid_rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    renderer = None
    from_store = rendered = 0
    try:
        for i, row in enumerate(rows):
            sha = str(row.get("asset_sha256") or "")
            keys = [layout.packshot_key(spec.spec_hash, sha, v) for v in views] if len(sha) == 64 else []
            if keys and all(packshots.exists(k) for k in keys):
                images = [Image.open(io.BytesIO(packshots.get(k))).convert("RGB") for k in keys]
                from_store += 1
            else:
                # render.tryon (pyrender, OpenGL): only when a product's packshots are not stored
                from glassfinder.render.tryon import AssetMeshes, TryOnRenderer

                renderer = renderer or TryOnRenderer(spec.image_px)
                asset_store, key = resolve_asset(store, manifest_key, str(row["asset_uri"]))
                asset = AssetMeshes(import_glb(asset_store.get(key)))
                shots = render_packshots(asset, renderer, spec, fixed_lens=fixed_lens_of(row))
                images = [Image.fromarray(shots[v]) for v in views]
                rendered += 1
            x, y = (i % columns) * cell_w, (i // columns) * cell_h
            for j, img in enumerate(images):
                sheet.paste(img.resize((tile_px, tile_px), Image.Resampling.LANCZOS), (x + j * tile_px, y))
            label = f"{row['product_id']}  {row.get('shape_family') or ''} {row.get('colour_name') or ''}"
            draw.text((x + 6, y + tile_px + 3), label[:60], fill=(40, 40, 40))
    finally:
        if renderer is not None:
            renderer.close()
    return PackshotSheet(sheet, len(rows), from_store, rendered)
