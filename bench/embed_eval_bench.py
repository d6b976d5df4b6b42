"""Retrieval accuracy of the embedding on a generated catalogue, beside the untrained baseline.

The benchmark of record for the embedding issue. It generates a catalogue (default 3,200
products), renders it under a catalogue spec (faces 0-799) and a query spec (held-out faces
900-999, other poses and lens colours, another seed), then:

1. compares the margin losses on a subset of products (--compare-products, short training);
2. trains the best loss on every training product, publishes it, and
3. evaluates it against the whole catalogue: closed-set (training products) and open-set
   (test products, never seen), with damaged queries, beside the same network untrained.

Everything lands under --work (default .glassfinder/embed-bench), and every stage skips what
exists, so a re-run after an interruption picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

#: The 'catalog' preset's look (256 px, tighter framing, mostly clear optical lenses) on faces
#: 0-799; queries on held-out faces 900-999 (bench/photo_bench.py renders the same gallery).
GALLERY_VIEWS = 6
CATALOG_SPEC = {
    "image_px": 256,
    "views_per_asset": GALLERY_VIEWS,
    "face_first": 0,
    "face_count": 800,
    "fit_jitter": 0.5,
    "framing_m": [0.20, 0.26],
    "lens_palette": "optical",
}
QUERY_SPEC = {**CATALOG_SPEC, "views_per_asset": 2, "face_first": 900, "face_count": 100, "seed": 1}
#: Training set-ups compared (TrainConfig fields; "arch": "resnet" is the small CNN trained from
#: scratch - the network before the ImageNet backbone -, "effl0" the ImageNet EfficientNet-Lite0
#: with the MobileNetV2 default's head, crop and pooling, else the ImageNet MobileNetV2 default;
#: "epochs" overrides --compare-epochs).
CANDIDATES: dict[str, dict] = {
    "arcface-m28.6-s32": {"arch": "resnet", "loss": "arcface", "margin": 28.6, "scale": 32.0, "lr": 2e-3},
    "arcface-m10-s16": {"arch": "resnet", "loss": "arcface", "margin": 10.0, "scale": 16.0, "lr": 4e-3},
    "arcface-m20-s30": {"arch": "resnet", "loss": "arcface", "margin": 20.0, "scale": 30.0, "lr": 4e-3},
    "subcenter-m10-s16": {"arch": "resnet", "loss": "subcenter", "margin": 10.0, "scale": 16.0, "lr": 4e-3},
    "proxyanchor-a32": {
        "arch": "resnet",
        "loss": "proxyanchor",
        "margin": 0.1,
        "scale": 32.0,
        "loss_lr": 1e-1,
        "lr": 4e-3,
    },
    "resnet-20ep": {"arch": "resnet", "lr": 4e-3, "batch_size": 128, "epochs": 20},
    "mnv2-8ep": {"lr": 1e-3, "batch_size": 64, "epochs": 8},
    # mnv2-8ep's recipe on the other ImageNet backbone, whole trunk to 1280 channels (like mnv2's).
    "effl0-8ep": {"arch": "effl0", "lr": 1e-3, "batch_size": 64, "epochs": 8},
}


def gallery_spec(views: int = GALLERY_VIEWS) -> dict:
    """The catalogue spec with `views` per product: fewer views make a 3,200-product gallery
    affordable on 2 cores (rendering is most of the time), at some cost in accuracy."""
    return {**CATALOG_SPEC, "views_per_asset": views}


def spec_of(raw: dict) -> Any:
    from glassfinder.render.spec import OPTICAL_LENS_PALETTE, RenderSpec

    fields = dict(raw)
    if fields.get("lens_palette") == "optical":
        fields["lens_palette"] = [[name, list(rgba)] for name, rgba in OPTICAL_LENS_PALETTE]
    return RenderSpec.from_json(json.dumps(fields))


def train_config(cat_spec: str, candidate: str, epochs: int) -> Any:
    from glassfinder.embed.model import ModelConfig, efficientnet_lite0_config
    from glassfinder.embed.train import TrainConfig

    fields = dict(CANDIDATES[candidate])
    arch = fields.pop("arch", "mnv2")
    if arch == "resnet":
        fields.setdefault("batch_size", 128)
        fields["model"] = ModelConfig()
    elif arch == "effl0":
        fields["model"] = efficientnet_lite0_config()
    fields["epochs"] = fields.get("epochs", epochs)
    return TrainConfig(spec_hashes=(cat_spec,), **fields)


def embed_latency_ms(model: Any, batch_sizes: tuple[int, ...] = (1, 64), rounds: int = 5) -> dict[int, float]:
    """CPU milliseconds per crop through the Embedder, per batch size: median of `rounds` timings.

    Random crops of the model's size (the network's cost does not depend on content); one
    warm-up forward per batch size, so first-call allocation is not counted.
    """
    import time

    from glassfinder.embed.infer import Embedder

    geometry = model.config.crop
    rng = np.random.default_rng(0)
    out = {}
    for bs in batch_sizes:
        embedder = Embedder(model, device="cpu", batch_size=bs)
        crops = rng.integers(0, 256, (bs, geometry.height, geometry.width, 3), dtype=np.uint8)
        embedder.embed(crops)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            embedder.embed(crops)
            times.append((time.perf_counter() - start) * 1000 / bs)
        out[bs] = round(float(np.median(times)), 2)
    return out


def prepare(
    work: Path, products: int, seed: int, query_products: int | None, gallery_views: int
) -> tuple[str, str, str]:
    """Generate, ingest and render (skipping what exists); (store uri, catalogue spec, query spec)."""
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.embed.default_model import prepare_catalog
    from glassfinder.render.job import render_catalog

    store = prepare_catalog(work, products, seed)
    manifest = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
    hashes = []
    for name, raw in (("catalogue", gallery_spec(gallery_views)), ("query", QUERY_SPEC)):
        spec = spec_of(raw)
        limit = query_products if name == "query" else None
        report = render_catalog(manifest, spec, store, progress=True, limit=limit)
        print(
            f"render {name} spec {spec.spec_hash}: {report.rendered} rendered ({report.views} views) "
            f"{report.skipped} already there in {report.seconds:.0f} s"
        )
        hashes.append(spec.spec_hash)
    return store.uri, hashes[0], hashes[1]


def packaged_only(
    work: Path,
    sets: Any,
    model: Any,
    packaged: dict[str, Any],
    manifest: dict,
    device: str | None,
    baseline: bool = True,
) -> None:
    """Every product of this catalogue is unseen by the packaged model, so every query is open-set;
    its ImageNet start (same architecture, no fine-tuning) is the baseline beside it (skippable: it
    does not change when the packaged model is retrained, and embedding a big gallery twice costs)."""
    from glassfinder.embed.evaluate import EvalSets, evaluate_models, write_report
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.model import build_model

    unseen = EvalSets(sets.gallery, sets.queries, {p: "test" for p in sets.split_of})
    models = dict(packaged)
    if baseline:
        models["imagenet-baseline"] = Embedder(build_model(model.config, seed=0).eval(), device=device)
    report = evaluate_models(unseen, models, manifest=manifest)
    write_report(report, work / "eval" / "packaged-only")
    print(
        f"\n{report['gallery_products']} products, {report['gallery_views']} catalogue views; "
        f"{report['query_views']['open_set']} damaged query views of {report['query_products']['open_set']} "
        "products on held-out faces, all unseen by the packaged model"
    )
    print(f"{'model':<28} {'top1':>6} {'top5':>6} {'top10':>6} {'mAP':>6}  mean-agg top1/top10")
    for label, entry in report["models"].items():
        f = entry["open_set"]
        mean = f.get("mean_aggregation", {})
        print(
            f"{label:<28} {f['top1']:>6.3f} {f['top5']:>6.3f} {f['top10']:>6.3f} {f['mAP']:>6.3f}"
            f"  {mean.get('top1')}/{mean.get('top10')}"
        )
    print(f"report: {work / 'eval' / 'packaged-only' / 'report.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=".glassfinder/embed-bench")
    parser.add_argument("--products", type=int, default=3200)
    parser.add_argument("--seed", type=int, default=7, help="catalogue seed")
    parser.add_argument(
        "--query-products",
        type=int,
        default=None,
        help="render queries for the first N products only (rendering is most of the time on CPU)",
    )
    parser.add_argument(
        "--gallery-views",
        type=int,
        default=GALLERY_VIEWS,
        help="catalogue views per product (fewer: a cheaper gallery, lower figures)",
    )
    parser.add_argument(
        "--packaged-only",
        action="store_true",
        help="no training: the packaged model and its ImageNet start on this catalogue (all of it unseen)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="--packaged-only without the ImageNet baseline"
    )
    parser.add_argument(
        "--candidates",
        default=",".join(CANDIDATES),
        help=f"training set-ups to compare: {', '.join(CANDIDATES)}",
    )
    parser.add_argument("--compare-products", type=int, default=800, help="products in the loss comparison")
    parser.add_argument("--compare-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--compare-only", action="store_true", help="report the comparison; skip the full run of the best"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("PML").setLevel(logging.WARNING)

    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.embed.data import ViewSet
    from glassfinder.embed.evaluate import EvalSets, evaluate_models, load_eval_sets, write_report
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.model import build_model
    from glassfinder.embed.registry import publish_model
    from glassfinder.embed.train import TrainConfig, load_training_views, train_model
    from glassfinder.store import open_store

    work = Path(args.work)
    store_uri, cat_spec, query_spec = prepare(
        work, args.products, args.seed, args.query_products, args.gallery_views
    )
    store = open_store(store_uri)
    manifest = {str(r["product_id"]): r for r in read_manifest_rows(store, CATALOG_MANIFEST_KEY)}
    base = TrainConfig(spec_hashes=(cat_spec,), epochs=args.epochs)
    probe = Embedder(build_model(base.model, seed=base.seed, pretrained=False).eval(), device=args.device)
    sets = load_eval_sets(store, cat_spec, query_spec, probe, progress=True)
    extra: dict[str, Embedder] = {}
    from glassfinder.nets import packaged

    if packaged.available("glasses"):  # the shipped model never trained on this catalogue's seed
        from glassfinder.embed.registry import load_model

        default = load_model(store, f"glasses@{packaged.packaged_sha('glasses')}")
        extra[f"packaged@{default.sha}"] = Embedder(default.model, device=args.device)
    if args.packaged_only:
        if not extra:
            parser.error("--packaged-only: no packaged model in glassfinder/models/")
        packaged_only(work, sets, default.model, extra, manifest, args.device, not args.no_baseline)
        return
    train_views, val_views = load_training_views(store, base, progress=True)

    def subset(views: ViewSet, keep: set[str]) -> ViewSet:
        return views.subset(np.array([p in keep for p in views.product_ids]))

    def run(candidate: str, epochs: int, keep: set[str] | None, tag: str) -> dict:
        config = train_config(cat_spec, candidate, epochs)
        tv, vv, es = train_views, val_views, sets
        if keep is not None:
            tv, vv = subset(train_views, keep), subset(val_views, keep)
            es = EvalSets(subset(sets.gallery, keep), subset(sets.queries, keep), sets.split_of)
        work_dir = work / "train" / tag
        result = train_model(
            store, config, work_dir=work_dir, views=(tv, vv), device=args.device, resume=work_dir.exists()
        )
        trained = Embedder(result.model, device=args.device)
        baseline = Embedder(build_model(config.model, seed=config.seed).eval(), device=args.device)
        label = (
            "imagenet-baseline"
            if config.model.architecture != "glassfinder-resnet-v1"
            else "untrained-baseline"
        )
        report = evaluate_models(es, {candidate: trained, label: baseline, **extra}, manifest=manifest)
        report["training"] = result.card()
        write_report(report, work / "eval" / tag)
        # Published under its own name so bench/photo_bench.py can search photos with it too.
        sha = publish_model(store, f"bench-{tag}", result.model, result.card())
        print(f"  published bench-{tag}@{sha}")
        return {"report": report, "result": result}

    losses = [x for x in args.candidates.split(",") if x]
    unknown = sorted(set(losses) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    best_loss = losses[0]
    if len(losses) > 1:
        keep = sorted(set(sets.gallery.product_ids.tolist()))[: args.compare_products]
        scores = {}
        print(f"\nloss comparison on {len(keep)} products, {args.compare_epochs} epochs:")
        for loss in losses:
            out = run(loss, args.compare_epochs, set(keep), f"compare-{loss}")
            m = out["report"]["models"][loss]
            scores[loss] = m["open_set"].get("mAP", 0.0) + m["closed_set"].get("mAP", 0.0)
            res = out["result"]
            ms = embed_latency_ms(res.model)
            print(
                f"  {loss}: {len(res.history)} epochs in {res.seconds:.0f} s, "
                f"{res.history[-1]['train_img_per_s']} img/s; embedding on CPU "
                + ", ".join(f"{v} ms/crop at batch {k}" for k, v in ms.items())
            )
            for label, entry in out["report"]["models"].items():
                c, o = entry["closed_set"], entry["open_set"]
                print(
                    f"    {label:<28} closed top1 {c.get('top1')} top10 {c.get('top10')}"
                    f" | open top1 {o.get('top1')} top10 {o.get('top10')}"
                )
        best_loss = max(scores, key=lambda k: scores[k])
        print(f"  kept {best_loss} (best closed + open mAP)")
        if args.compare_only:
            return
    full = run(best_loss, args.epochs, None, f"full-{best_loss}")
    sha = publish_model(store, "glasses", full["result"].model, full["result"].card())
    report = full["report"]
    views, prods = report["query_views"], report["query_products"]
    print(
        f"\n{report['gallery_products']} products, {report['gallery_views']} catalogue views; queries "
        f"closed-set {views['closed_set']} ({prods['closed_set']} products), "
        f"open-set {views['open_set']} ({prods['open_set']} products)"
    )
    print(f"model glasses@{sha} ({best_loss}, {args.epochs} epochs, {full['result'].seconds:.0f} s training)")
    print(
        f"{'model':<20} {'setting':<11} {'top1':>6} {'top5':>6} {'top10':>6} {'mAP':>6}  mean-agg top1/top10"
    )
    for label, entry in report["models"].items():
        for setting in ("closed_set", "open_set"):
            f = entry[setting]
            mean = f.get("mean_aggregation", {})
            print(
                f"{label:<20} {setting:<11} {f['top1']:>6.3f} {f['top5']:>6.3f} {f['top10']:>6.3f} "
                f"{f['mAP']:>6.3f}  {mean.get('top1')}/{mean.get('top10')}"
            )
    conf = report["models"][best_loss]["open_set"].get("confusions", {})
    print(
        f"open-set top-1 misses: {conf.get('misses')}, of which same shape other colourway: "
        f"{conf.get('same_shape_other_colourway')}"
    )
    print(f"missed by shape family: {conf.get('missed_by_shape_family')}")
    print(f"most confused: {conf.get('top_confused_pairs')}")
    print(f"report: {work / 'eval' / f'full-{best_loss}' / 'report.json'}")


if __name__ == "__main__":
    main()
