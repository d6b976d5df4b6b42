"""Packshot rendering time per product: both views at the packshot spec's size, in one process.

Generates a small catalogue (mixed shapes and lenses), then renders every product's packshots
with one TryOnRenderer as a render worker does, timing (1) the whole per-product job the pipeline
runs (load the GLB, two views with their contact-shadow pass, PNG encoding) and (2) the GL part
alone. Prints median and mean seconds per product and the GL_RENDERER it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.catalog.loader import import_glb
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.render.job import fixed_lens_of
    from glassfinder.render.packshot import PACKSHOT_SPEC, packshot_asset, render_packshots
    from glassfinder.render.tryon import AssetMeshes, TryOnRenderer
    from glassfinder.store import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp))
        generate_catalog(store, args.products, seed=args.seed, workers=1)
        rows = read_manifest_rows(store, "manifest.parquet")
        blobs = [(store.get(r["asset_uri"]), fixed_lens_of(r)) for r in rows]
        renderer = TryOnRenderer(PACKSHOT_SPEC.image_px)
        try:
            packshot_asset(blobs[0][0], renderer, PACKSHOT_SPEC, fixed_lens=blobs[0][1], where="warm-up")
            whole, gl = [], []
            for data, fixed in blobs:
                _, seconds = packshot_asset(data, renderer, PACKSHOT_SPEC, fixed_lens=fixed, where="bench")
                whole.append(seconds)
                asset = AssetMeshes(import_glb(data))
                start = time.perf_counter()
                render_packshots(asset, renderer, PACKSHOT_SPEC, fixed_lens=fixed)
                gl.append(time.perf_counter() - start)
            gl_name = renderer.gl_renderer()
        finally:
            renderer.close()
    views = len(PACKSHOT_SPEC.views)
    print(
        f"packshot spec {PACKSHOT_SPEC.spec_hash}: {views} views at {PACKSHOT_SPEC.image_px} px, on {gl_name}"
    )
    print(
        f"per product (load + {views} views + shadow passes + PNG), {len(whole)} products: "
        f"median {statistics.median(whole):.3f} s, mean {statistics.mean(whole):.3f} s"
    )
    print(f"of which rendering alone: median {statistics.median(gl):.3f} s, mean {statistics.mean(gl):.3f} s")


if __name__ == "__main__":
    main()
