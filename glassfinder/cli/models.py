"""`glassfinder train`, `embed` and `eval`: the embedding model, its feature shards and its quality."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glassfinder.cli.common import SubParsers, add, open_args_store


def cmd_train(args: argparse.Namespace) -> int:
    # torch: imported on use, keeping --help fast
    from glassfinder.embed.train import TrainConfig, parse_specs, resolve_init, train_and_publish

    store = open_args_store(args)
    model_config, init_from = resolve_init(store, args.init, args.dim)
    config = TrainConfig(
        spec_hashes=parse_specs(args.specs),
        loss=args.loss,
        epochs=args.epochs,
        batch_size=args.batch_size,
        m_per_class=args.m_per_class,
        lr=args.lr,
        seed=args.seed,
        model=model_config,
        init_from=init_from,
        imprint=args.imprint,
    )
    result, sha = train_and_publish(
        store,
        config,
        name=args.name,
        work_dir=Path(args.work_dir),
        resume=args.resume,
        device=args.device,
        progress=sys.stderr.isatty(),
        publish=not args.no_publish,
    )
    print(
        f"trained {config.loss} on {result.train_products} products ({result.train_views} views) "
        f"in {result.seconds:.0f} s; best epoch {result.best_epoch}: {json.dumps(result.best_val)}"
    )
    if sha:
        print(f"published model {args.name}@{sha} (now CURRENT)")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    # torch: imported on use, keeping --help fast
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.job import embed_catalog
    from glassfinder.embed.registry import load_model

    store = open_args_store(args)
    loaded = load_model(store, args.model)
    embedder = Embedder(loaded.model, device=args.device, batch_size=args.batch_size)
    report = embed_catalog(store, args.spec, embedder, loaded.sha, progress=sys.stderr.isatty())
    rate = report.views / report.seconds if report.seconds else 0.0
    print(
        f"model {loaded.name}@{loaded.sha} spec {report.spec_hash}: {report.shards} shards, "
        f"{report.embedded} embedded ({report.views} views, {rate:.0f} views/s), {report.skipped} already "
        f"there, {len(report.quarantined)} unreadable in {report.seconds:.1f} s"
    )
    for q in report.quarantined:
        print(f"  unreadable {q['shard']}: {q['message']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from glassfinder.embed.evaluate import run_eval  # torch: imported on use, keeping --help fast

    report, json_path, png_path = run_eval(
        open_args_store(args),
        gallery_spec=args.gallery_spec,
        query_spec=args.query_spec,
        model_ref=args.model,
        out_dir=Path(args.out_dir),
        manifest_uri=args.manifest,
        seed=args.seed,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    print(
        f"{report['gallery_products']} products ({report['gallery_views']} catalogue views); queries: "
        f"closed-set {report['query_views']['closed_set']}, open-set {report['query_views']['open_set']}"
    )
    print(f"{'model':<34} {'setting':<11} {'top1':>6} {'top5':>6} {'top10':>6} {'mAP':>6}")
    for label, entry in report["models"].items():
        for setting in ("closed_set", "open_set"):
            f = entry[setting]
            if f.get("queries"):
                print(
                    f"{label:<34} {setting:<11} {f['top1']:>6.3f} {f['top5']:>6.3f} {f['top10']:>6.3f} "
                    f"{f['mAP']:>6.3f}"
                )
    print(f"report: {json_path}\ncurve: {png_path}")
    return 0


def register(sub: SubParsers) -> None:
    p = add(sub, "train", cmd_train, "train the embedding model on rendered image shards and publish it")
    p.add_argument(
        "--specs", required=True, help="render spec hash(es) whose train/val views to use, comma-separated"
    )
    p.add_argument("--name", default="glasses", help="model name to publish under (models/NAME/SHA/)")
    p.add_argument("--loss", choices=("arcface", "subcenter", "proxyanchor"), default="arcface")
    p.add_argument(
        "--init",
        default="default",
        help="what to start from: 'default' (fine-tune the packaged model), 'imagenet' (a fresh "
        "MobileNetV2), 'scratch' (the small CNN), or NAME[@SHA] of a published model",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--m-per-class", type=int, default=4, help="views per product in a batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--dim", type=int, default=None, help="embedding dimension of a new network (imagenet/scratch; 128)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--imprint",
        action="store_true",
        help="start each product's proxy at its mean embedding under the --init model, not at random",
    )
    p.add_argument("--work-dir", default=".glassfinder/train", help="local folder for checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's last checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--no-publish", action="store_true", help="train only; keep weights in the work dir")

    p = add(
        sub, "embed", cmd_embed, "embed a render spec's image shards into feature shards (skips existing)"
    )
    p.add_argument("--spec", required=True, help="render spec hash")
    p.add_argument("--model", default="glasses", help="NAME (its CURRENT) or NAME@SHA")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")

    p = add(sub, "eval", cmd_eval, "top-k/mAP of damaged held-out-face queries, closed- and open-set")
    p.add_argument("--gallery-spec", required=True, help="render spec hash of the catalogue views")
    p.add_argument("--query-spec", required=True, help="render spec hash of the query views (other faces)")
    p.add_argument("--model", default="glasses", help="NAME (its CURRENT) or NAME@SHA")
    p.add_argument("--manifest", default=None, help="catalogue manifest URI, to name confused families")
    p.add_argument("--out-dir", default=".glassfinder/eval", help="where report.json and topn.png go")
    p.add_argument("--seed", type=int, default=0, help="seed of the query damage")
    p.add_argument("--device", default=None)
