"""Closed-set retrieval of the packaged embedding: queries of products it trained on, 3,200 in all.

bench/embed_eval_bench.py --packaged-only measures the packaged model on a catalogue it never
saw (open-set). This measures the other setting the embedding issue asks for: the shop's own
catalogue after training on it. The gallery is the packaged model's training catalogue
(glassfinder.embed.default_model: seed TRAINING_SEED, its training render spec), grown to
--products so the search runs against as many products as the open-set bench; the queries are
damaged renders on held-out faces 900-999 (embed_eval_bench's QUERY_SPEC: other faces, poses, lens
colours and seed) of the first --query-products products. Those in the training split are the
closed-set figure; those the training held out for validation are left out.

    .venv/bin/python bench/closed_set_bench.py --products 3200 --query-products 200

The training work folder's renders (--training-work) are hard-linked rather than rendered again
when it is there: the same spec and asset give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def link_renders(source: Path, dest: Path, spec_hash: str, assets: set[str]) -> int:
    """Hard-link source's render shards of spec_hash for `assets` (sha256s) into dest, skipping
    those there; how many. Only the manifest's assets: the gallery loads every shard of a spec."""
    src = source / "renders" / spec_hash
    if not src.is_dir():
        return 0
    out = dest / "renders" / spec_hash
    out.mkdir(parents=True, exist_ok=True)
    linked = 0
    for shard in src.glob("*.parquet"):
        target = out / shard.name
        if shard.stem not in assets:
            continue
        if not target.exists():
            os.link(shard, target)
            linked += 1
    return linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=".glassfinder/closed-set")
    parser.add_argument("--training-work", default=".glassfinder/default-model")
    parser.add_argument("--products", type=int, default=3200)
    parser.add_argument("--query-products", type=int, default=200)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from embed_eval_bench import QUERY_SPEC, spec_of

    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.catalog.manifest import read_manifest_rows
    from glassfinder.embed.default_model import TRAINING_SEED, prepare_catalog, training_spec
    from glassfinder.embed.evaluate import evaluate_models, load_eval_sets, write_report
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.registry import load_model
    from glassfinder.nets import packaged
    from glassfinder.render.job import render_catalog

    work = Path(args.work)
    store = prepare_catalog(work, args.products, TRAINING_SEED)
    manifest_uri = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
    gallery, query = training_spec(), spec_of(QUERY_SPEC)
    rows = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    assets = {str(r["asset_sha256"]) for r in rows}
    linked = link_renders(Path(args.training_work) / "store", work / "store", gallery.spec_hash, assets)
    print(f"linked {linked} render shards of {gallery.spec_hash} from {args.training_work}")
    for name, spec, limit in (("gallery", gallery, None), ("query", query, args.query_products)):
        rendered = render_catalog(manifest_uri, spec, store, progress=True, limit=limit)
        print(f"render {name} {spec.spec_hash}: {rendered.rendered} rendered, {rendered.skipped} there")

    model = load_model(store, f"glasses@{packaged.packaged_sha('glasses')}")
    card_seed = model.card.get("training_data", {}).get("catalogue_seed")
    if card_seed != TRAINING_SEED:
        raise SystemExit(f"the packaged model trained on catalogue seed {card_seed}, not {TRAINING_SEED}")
    embedder = Embedder(model.model, device=args.device)
    sets = load_eval_sets(store, gallery.spec_hash, query.spec_hash, embedder, progress=True)
    # Gallery products carry the training split ('train' / 'val'); only 'train' ones were trained on.
    trained = {p for p, s in sets.split_of.items() if s == "train"}
    query_products = set(sets.queries.product_ids.tolist())
    manifest = {str(r["product_id"]): r for r in rows}
    report = evaluate_models(sets, {f"packaged@{model.sha}": embedder}, manifest=manifest)
    report["query_products_trained"] = len(query_products & trained)
    report["query_products_held_out_for_validation"] = len(query_products - trained)
    write_report(report, work / "eval")
    closed = report["models"][f"packaged@{model.sha}"]["closed_set"]
    print(
        f"\n{report['gallery_products']} products ({report['gallery_views']} views, the training "
        f"spec {gallery.spec_hash}); {report['query_views']['closed_set']} damaged query views of "
        f"{report['query_products']['closed_set']} trained products on held-out faces"
    )
    print(json.dumps({f"packaged@{model.sha}": closed}, indent=2))
    print(f"report: {work / 'eval' / 'report.json'}")


if __name__ == "__main__":
    main()
