"""A try-on contact sheet: one product on many faces, poses and lens colours, as the pipeline
renders it (the same view plan), for a person to judge."""

from __future__ import annotations

from PIL import Image, ImageDraw

from glassfinder.catalog.ingest import resolve_asset
from glassfinder.catalog.loader import import_glb
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.errors import NotFoundError
from glassfinder.heads.procedural import head
from glassfinder.render.spec import RenderSpec, plan_view
from glassfinder.render.tryon import AssetMeshes, TryOnRenderer
from glassfinder.store import open_object


def tryon_sheet(
    manifest_uri: str, product_id: str, spec: RenderSpec, *, views: int = 16, columns: int = 4
) -> Image.Image:
    mstore, mkey = open_object(manifest_uri)
    rows = {str(r["product_id"]): r for r in read_manifest_rows(mstore, mkey)}
    row = rows.get(product_id)
    if row is None:
        raise NotFoundError(f"product {product_id!r} is not in {manifest_uri}")
    store, key = resolve_asset(mstore, mkey, str(row["asset_uri"]))
    asset = AssetMeshes(import_glb(store.get(key)))
    fixed = (str(row["lens_style"]), tuple(row["lens_rgba"])) if row.get("lens_policy") == "fixed" else None
    renderer = TryOnRenderer(spec.image_px)
    size, label = spec.image_px, 16
    sheet = Image.new("RGB", (columns * size, -(-views // columns) * (size + label)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        for i in range(views):
            view = plan_view(spec, str(row["asset_sha256"]), i, fixed_lens=fixed)
            out = renderer.render(asset, head(view.face_index), view)
            x, y = (i % columns) * size, (i // columns) * (size + label)
            sheet.paste(Image.fromarray(out.rgb), (x, y))
            draw.text(
                (x + 4, y + size + 2),
                f"{view.face_id} yaw {view.yaw_deg:+.0f} {view.lens_style}",
                fill=(30, 30, 30),
            )
    finally:
        renderer.close()
    return sheet
