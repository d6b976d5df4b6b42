"""Real-photo benchmark: catalogue frames worn on real faces, searched through the real query path.

The figure that counts for the product. A generated catalogue (seed --seed; the packaged model
never trained on it) is rendered on procedural heads 0-799 at 256 px (bench/embed_eval_bench.py's
catalogue spec, so a shared --work renders it once) and indexed with
each model compared. The product's renderer then puts catalogue frames on the photo bank's two
public-domain faces - the astronaut (scikit-image; no packaged model ever saw it: the unseen
face) and Grace Hopper (matplotlib; reported beside it, marked 'seen' only if a model trained on
her) - and every photo is damaged like a phone photo (reframing crop, rescale, colour cast,
blur, sensor noise, JPEG). Each goes through `QueryEngine.search`: decode, detect, align,
glasses presence, embed, search. Reported per model and face: top-1, top-10, refusals by reason.

    .venv/bin/python bench/photo_bench.py --products 300 --photos-per-face 60

Models: 'packaged' (the default model shipped in glassfinder/models/), 'imagenet' (the same
architecture straight from ImageNet, before fine-tuning), and any NAME@SHA published in the
work store (--models packaged,imagenet,glasses@abcd...). Every stage skips what exists.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from glassfinder.embed.augment import phone_damage_mapped

FACES = ("astronaut", "hopper")
#: Faces a packaged model trained on: both the embedding (views rendered onto her photo with her
#: frames inpainted away, embed/default_model.py) and the face-analysis model (eyes, presence,
#: face/training/photo_data.py) trained on Hopper's photo.
SEEN_BY_PACKAGED: frozenset[str] = frozenset({"hopper"})


def face_photos() -> dict[str, bytes]:
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, format="PNG")
    training_face = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    return {"astronaut": buf.getvalue(), "hopper": training_face}


def phone_damage(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    """(h, w, 3) uint8 -> JPEG bytes: reframed, rescaled, colour-cast, blurred, noisy, compressed."""
    return phone_damage_mapped(rgb, rng)[0]


def prepare(
    work: Path, products: int, seed: int, gallery_views: int
) -> tuple[Any, str, list[dict[str, Any]]]:
    """Catalogue + gallery renders on procedural heads (skipping what exists)."""
    from embed_eval_bench import gallery_spec, spec_of

    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.render.job import render_catalog
    from glassfinder.store.local import LocalStore

    store = LocalStore(work / "store")
    if not store.exists(CATALOG_MANIFEST_KEY):
        generate_catalog(LocalStore(work / "src"), products, seed, progress=True)
        ingest_manifest(str(work / "src" / "manifest.parquet"), dest=store, progress=True)
    # The embed eval bench's gallery spec: run both with the same --work and they share renders.
    spec = spec_of(gallery_spec(gallery_views))
    report = render_catalog(f"{store.uri}/{CATALOG_MANIFEST_KEY}", spec, store, progress=True)
    rate = report.views / report.seconds if report.rendered and report.seconds else 0.0
    print(
        f"gallery spec {spec.spec_hash} ({spec.image_px} px): {report.rendered} rendered "
        f"({report.views} views, {rate:.1f} views/s), {report.skipped} there already"
    )
    return store, spec.spec_hash, read_manifest_rows(store, CATALOG_MANIFEST_KEY)


def make_photos(work: Path, store: Any, rows: list[dict[str, Any]], per_face: int) -> list[dict[str, Any]]:
    """The damaged photos (cached as files): the i-th wears product i (cycling), its own view seed."""
    from glassfinder.search.samples import photo_wearing

    out = work / "photos"
    out.mkdir(parents=True, exist_ok=True)
    faces = face_photos()
    photos = []
    t0, made = time.perf_counter(), 0
    for face in FACES:
        for i in range(per_face):
            row = rows[i % len(rows)]
            path = out / f"{face}-{i:03d}-{row['product_id']}.jpg"
            if not path.exists():
                rgb = photo_wearing(store, row, faces[face], f"{face}.png", seed=1000 + i)
                path.write_bytes(phone_damage(rgb, np.random.default_rng([i, FACES.index(face)])))
                made += 1
            photos.append({"face": face, "product_id": str(row["product_id"]), "path": path})
    if made:
        print(f"photos: {made} rendered and damaged in {time.perf_counter() - t0:.0f} s")
    return photos


def model_refs(store: Any, wanted: list[str]) -> dict[str, str]:
    """label -> NAME@SHA published in the store (the ImageNet baseline is published on demand)."""
    from glassfinder.embed.model import ModelConfig, build_model
    from glassfinder.embed.registry import load_model, publish_model
    from glassfinder.nets.packaged import read_packaged

    refs = {}
    default = read_packaged("glasses")
    for label in wanted:
        if label == "packaged":
            refs[label] = f"glasses@{default.sha}"
        elif label == "imagenet":
            config = ModelConfig.from_dict(default.card["config"])
            model = build_model(config, seed=int(default.card["training"]["seed"])).eval()
            sha = publish_model(
                store, "imagenet-baseline", model, {"note": "ImageNet-initialised, untrained"}
            )
            refs[label] = f"imagenet-baseline@{sha}"
        else:  # loaded now, so a mistyped reference fails before the queries are made, not after
            loaded = load_model(store, label)
            refs[label] = f"{loaded.name}@{loaded.sha}"
    return refs


def index_for(store: Any, label: str, ref: str, manifest_uri: str, spec_hash: str) -> str:
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.job import embed_catalog
    from glassfinder.embed.registry import load_model
    from glassfinder.index.pipeline import PublishRequest, build_and_publish

    loaded = load_model(store, ref)
    report = embed_catalog(store, spec_hash, Embedder(loaded.model), loaded.sha, progress=True)
    if report.embedded:
        print(f"{label}: {report.views} views embedded in {report.seconds:.0f} s")
    name = f"photo-bench-{label.replace('@', '-')}"
    build_and_publish(
        store,
        PublishRequest(
            name,
            manifest_uri=manifest_uri,
            model_ref=f"{loaded.name}@{loaded.sha}",
            spec_hash=spec_hash,
            force_reason="photo bench",
        ),
    )
    return name


def search_all(store: Any, index: str, photos: list[dict[str, Any]]) -> dict[str, Any]:
    from glassfinder.errors import QueryRefusedError
    from glassfinder.search.query import QueryEngine

    engine = QueryEngine(store, index)
    by_face: dict[str, dict[str, Any]] = {}
    for p in photos:
        f = by_face.setdefault(p["face"], {"ranks": [], "refused": Counter(), "ms": [], "photos": 0})
        f["photos"] += 1
        try:
            result = engine.search(p["path"].read_bytes(), p["path"].name, k=10)
        except QueryRefusedError as exc:
            f["refused"][exc.reason] += 1
            f["ranks"].append(None)
            continue
        ids = [h.product_id for h in result.hits]
        f["ranks"].append(ids.index(p["product_id"]) + 1 if p["product_id"] in ids else None)
        f["ms"].append(result.timings_ms["total"])
    out = {}
    for face, f in by_face.items():
        ranks = [r or 0 for r in f["ranks"]]
        n = f["photos"]
        out[face] = {
            "photos": n,
            "top1": round(sum(r == 1 for r in ranks) / n, 3),
            "top10": round(sum(1 <= r <= 10 for r in ranks) / n, 3),
            "refused": sum(f["refused"].values()),
            "refusals": dict(f["refused"]),
            "p50_ms": round(float(np.median(f["ms"])), 1) if f["ms"] else None,
        }
    return out


def main() -> None:
    from embed_eval_bench import GALLERY_VIEWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=".glassfinder/embed-bench")
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7, help="catalogue seed (the packaged model's is 4242)")
    parser.add_argument("--photos-per-face", type=int, default=60)
    parser.add_argument(
        "--gallery-views",
        type=int,
        default=GALLERY_VIEWS,
        help="catalogue views per product (fewer: cheaper, harder)",
    )
    parser.add_argument("--models", default="packaged,imagenet", help="packaged, imagenet, or NAME@SHA")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY

    work = Path(args.work)
    store, spec_hash, rows = prepare(work, args.products, args.seed, args.gallery_views)
    photos = make_photos(work, store, rows, args.photos_per_face)
    from glassfinder.face.net import packaged_analyser

    face_model = packaged_analyser()[0]
    refs = model_refs(store, [m for m in args.models.split(",") if m])
    report: dict[str, Any] = {
        "products": len(rows),
        "catalogue_seed": args.seed,
        "gallery_spec": spec_hash,
        "face_model_sha": face_model,
        "photos_per_face": args.photos_per_face,
        "gallery_views": args.gallery_views,
        "models": {},
    }
    for label, ref in refs.items():
        index = index_for(store, label, ref, f"{store.uri}/{CATALOG_MANIFEST_KEY}", spec_hash)
        report["models"][label] = {"ref": ref, "faces": search_all(store, index, photos)}
    print(
        f"\n{len(rows)} products, {args.gallery_views} views each; {args.photos_per_face} photos per face; "
        f"face analysis {face_model}"
    )
    print(f"{'model':<40} {'face':<18} {'top1':>6} {'top10':>6} {'refused':>8}  p50 ms  refusals")
    for label, entry in report["models"].items():
        for face, f in entry["faces"].items():
            tag = f"{face} (seen)" if face in SEEN_BY_PACKAGED else f"{face} (unseen)"
            print(
                f"{label + ' ' + entry['ref']:<40.40} {tag:<18} {f['top1']:>6.3f} {f['top10']:>6.3f} "
                f"{f['refused']:>4}/{f['photos']:<3}  {f['p50_ms']}  {f['refusals']}"
            )
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {work / 'report.json'}")


if __name__ == "__main__":
    main()
