"""Embedding throughput: training img/s, embedding img/s, and the embed pipeline against a bare forward.

Prints, on CPU (and on CUDA when present, or with --device cuda):
- training img/s: full steps (sampling, alignment jitter and photometric augmentation in the
  prefetch thread, forward, margin loss, backward, optimiser) over real renders;
- bare forward img/s: the model alone on a ready tensor, at the pipeline's batch size;
- pipeline img/s: `embed_catalog` from image shards to written feature shards (read Parquet,
  decode, align, forward, write), and its ratio to the bare forward (aim: >= 0.85).

By default it renders a small catalogue into a temporary folder first, as PNG and as JPEG
shards (about two minutes on two cores): decoding is most of the pipeline's cost on CPU, and
JPEG decodes faster. --store and --spec reuse shards that exist.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def render_sample(root: Path, products: int, views: int, image_px: int, image_format: str) -> tuple[str, str]:
    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
    from glassfinder.render.job import render_catalog
    from glassfinder.render.spec import RenderSpec
    from glassfinder.store.local import LocalStore

    store = LocalStore(root / "store")
    if not store.exists(CATALOG_MANIFEST_KEY):
        generate_catalog(LocalStore(root / "sample"), products, seed=11)
        ingest_manifest(str(root / "sample" / "manifest.parquet"), dest=store)
    spec = RenderSpec(image_px=image_px, views_per_asset=views, fit_jitter=0.5, image_format=image_format)
    render_catalog(f"{store.uri}/{CATALOG_MANIFEST_KEY}", spec, store, progress=True)
    return store.uri, spec.spec_hash


def bench_device(store_uri: str, spec_hash: str, device: str, batch: int, train_steps: int) -> None:
    import numpy as np
    import torch

    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.job import embed_catalog
    from glassfinder.embed.model import ModelConfig, build_model, to_input, weights_bytes
    from glassfinder.embed.train import TrainConfig, load_training_views, train_model
    from glassfinder.nets.weights import model_sha
    from glassfinder.store import open_store
    from glassfinder.store.local import LocalStore

    store = open_store(store_uri)
    config = TrainConfig(spec_hashes=(spec_hash,), epochs=1, batch_size=batch)
    train_views, val_views = load_training_views(store, config)
    print(f"[{device}] {len(train_views)} training views, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        # One epoch of len(train)//batch steps; repeat the training views to reach train_steps.
        reps = max(1, -(-train_steps * batch // len(train_views)))
        idx = np.tile(np.arange(len(train_views)), reps)
        train_big = type(train_views)(
            train_views.crops[idx], train_views.meta.take(idx), train_views.geometry
        )
        empty = val_views.subset(np.zeros(len(val_views), dtype=bool))
        t0 = time.perf_counter()
        result = train_model(store, config, work_dir=Path(tmp) / "w", device=device, views=(train_big, empty))
        wall = time.perf_counter() - t0
    steps = len(train_big) // batch
    print(
        f"[{device}] training: {result.history[0]['train_img_per_s']:.0f} img/s in the epoch loop "
        f"({steps} steps of {batch}); {steps * batch / wall:.0f} img/s including model set-up and checkpoint"
    )

    model = build_model(ModelConfig(), seed=0).eval()
    embedder = Embedder(model, device=device, batch_size=batch)
    crops = train_views.crops[:batch]
    if len(crops) < batch:
        crops = np.resize(crops, (batch, *crops.shape[1:]))
    embedder.forward(crops)  # warm-up
    x = to_input(crops).to(embedder.device)
    reps = 20
    with torch.inference_mode():
        if embedder.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            with torch.autocast(embedder.device.type, dtype=torch.float16, enabled=embedder.amp):
                model(x)
        if embedder.device.type == "cuda":
            torch.cuda.synchronize()
        bare = reps * batch / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        out = LocalStore(tmp)
        report = embed_catalog(store, spec_hash, embedder, model_sha(weights_bytes(model)), out=out)
    pipeline = report.views / report.seconds
    print(f"[{device}] bare forward: {bare:.0f} img/s (batch {batch}, ready tensor)")
    print(
        f"[{device}] embed pipeline: {pipeline:.0f} img/s over {report.views} views in "
        f"{report.embedded} shards (read, decode, align, forward, write)"
    )
    print(f"[{device}] pipeline / bare forward: {pipeline / bare:.2f} (aim >= 0.85)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store URI holding rendered image shards")
    parser.add_argument("--spec", default=None, help="render spec hash in --store")
    parser.add_argument("--products", type=int, default=120)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--image-px", type=int, default=160)
    parser.add_argument(
        "--formats", default="png,jpeg", help="image formats of the rendered sample (decoding costs differ)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--device", action="append", default=None, help="cpu and/or cuda (repeatable)")
    args = parser.parse_args()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        if args.store and args.spec:
            runs = [("given shards", args.store, args.spec)]
        else:
            runs = []
            for fmt in args.formats.split(","):
                uri, spec_hash = render_sample(Path(tmp), args.products, args.views, args.image_px, fmt)
                runs.append((f"{fmt} shards", uri, spec_hash))
        for label, store_uri, spec_hash in runs:
            for device in devices:
                print(f"--- {label}, {device} ---")
                bench_device(store_uri, spec_hash, device, args.batch_size, args.train_steps)


if __name__ == "__main__":
    main()
