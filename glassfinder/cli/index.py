"""`glassfinder index`: build, publish and manage versioned FAISS indexes; one command per action."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from glassfinder.cli.common import Command, SubParsers, add, open_args_store
from glassfinder.errors import BadInputError

if TYPE_CHECKING:
    from glassfinder.index.versions import GateConfig


def _gate(args: argparse.Namespace) -> tuple[GateConfig, str | None]:
    from glassfinder.index.versions import GateConfig  # faiss: imported on use, keeping --help fast

    if args.force and not args.reason:
        raise BadInputError("--force needs --reason: the reason is recorded in the version's manifest")
    noise = {} if args.noise_confidence is None else {"noise_confidence": args.noise_confidence}
    return GateConfig(args.max_top1_drop, args.max_top10_drop, **noise), (args.reason if args.force else None)


def _print_eval(evaluation: dict | None) -> None:
    if not evaluation:
        print("  evaluation: none (no --query-spec)")
        return
    for agg, f in evaluation["by_aggregation"].items():
        mark = "*" if agg == evaluation["aggregation"] else " "
        print(
            f"  {mark} {agg:<5} top1 {f['top1']:.4f} top5 {f['top5']:.4f} top10 {f['top10']:.4f} "
            f"mAP@10 {f['mAP@10']:.4f} ({f['queries']} queries)"
        )


def _build(args: argparse.Namespace, *, publish: bool) -> int:
    # faiss: imported on use, keeping --help fast
    from glassfinder.index.build import IndexParams
    from glassfinder.index.pipeline import PublishRequest, build_and_publish

    store = open_args_store(args)
    gate, reason = _gate(args)
    params = IndexParams(exact_max_vectors=args.exact_max_vectors, recall_target=args.recall_target)
    request = PublishRequest(
        name=args.name,
        manifest_uri=args.manifest,
        model_ref=args.model,
        spec_hash=args.spec,
        query_spec=args.query_spec,
        gate=gate,
        force_reason=reason,
        device=args.device,
    )
    built, info, result, features = build_and_publish(store, request, params=params, publish=publish)
    print(
        f"index {args.name}: {len(built)} vectors of {info['model']}@{info['model_sha']} spec "
        f"{info['spec_hash']}, {built.factory} {built.search_params or ''} built in "
        f"{built.build_seconds:.1f} s; {len(features.missing)} products not indexed"
    )
    _print_eval(info["evaluation"])
    if result is not None:
        print(f"published {args.name} v{result.version} (parent v{result.parent}) and made it CURRENT")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    return _build(args, publish=False)


def cmd_index_publish(args: argparse.Namespace) -> int:
    return _build(args, publish=True)


def cmd_index_update(args: argparse.Namespace) -> int:
    from glassfinder.index.pipeline import update_and_publish  # faiss: imported on use

    store = open_args_store(args)
    gate, reason = _gate(args)
    result, counts = update_and_publish(
        store,
        args.name,
        manifest_uri=args.manifest,
        remove_products=[p for p in (args.remove or "").split(",") if p],
        query_spec=args.query_spec,
        gate=gate,
        force_reason=reason,
        device=args.device,
    )
    print(
        f"published {args.name} v{result.version} from v{result.parent}: +{counts['added_rows']} "
        f"-{counts['removed_rows']} vectors, now CURRENT"
    )
    _print_eval(result.manifest.get("evaluation"))
    return 0


def cmd_index_list(args: argparse.Namespace) -> int:
    from glassfinder.index import versions  # faiss: imported on use, keeping --help fast

    store = open_args_store(args)
    current, _ = versions.read_current(store, args.name)
    cur = int(current["version"]) if current else None
    for version, complete in versions.list_versions(store, args.name).items():
        if not complete:
            print(f"  v{version:<5} partial (abandoned publish; gc removes it)")
            continue
        m = versions.read_manifest(store, args.name, version)
        ev = m.get("evaluation") or {}
        print(
            f"{'*' if version == cur else ' '} v{version:<5} {m['created_at']}  "
            f"{m.get('kind', '-'):<11} parent "
            f"{m.get('parent')!s:<5} {m['counts']['products']:>6} products {m['counts']['vectors']:>8} "
            f"vectors  {m['factory']:<14} top1 {ev.get('top1', '-')} top10 {ev.get('top10', '-')}"
        )
    return 0


def cmd_index_show(args: argparse.Namespace) -> int:
    from glassfinder.index import versions  # faiss: imported on use, keeping --help fast

    store = open_args_store(args)
    if args.version is None:  # what readers serve: verified from CURRENT down
        _, _, manifest, _ = versions.fetch_current_verified(store, args.name)
    else:
        manifest, _ = versions.fetch_verified(store, args.name, args.version)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def cmd_index_promote(args: argparse.Namespace) -> int:
    from glassfinder.index import versions  # faiss: imported on use, keeping --help fast

    store = open_args_store(args)
    gate, reason = _gate(args)
    versions.promote(store, args.name, args.version, gate=gate, force_reason=reason)
    print(f"{args.name} CURRENT is now v{args.version}")
    return 0


def cmd_index_rollback(args: argparse.Namespace) -> int:
    from glassfinder.index import versions  # faiss: imported on use, keeping --help fast

    target = versions.rollback(open_args_store(args), args.name, to=args.to, reason=args.reason)
    print(f"{args.name} CURRENT rolled back to v{target}")
    return 0


def cmd_index_pin(args: argparse.Namespace) -> int:
    from glassfinder.index import versions  # faiss: imported on use, keeping --help fast

    versions.pin(open_args_store(args), args.name, args.version, args.reason)
    print(f"{args.name} v{args.version} pinned: gc keeps it")
    return 0


def cmd_index_gc(args: argparse.Namespace) -> int:
    from glassfinder.index import versions  # faiss: imported on use, keeping --help fast

    doomed = versions.gc(open_args_store(args), args.name, keep=args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(doomed)} version(s): {', '.join(f'v{v}' for v in doomed) or 'none'}")
    return 0


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-top1-drop", type=float, default=0.01, help="largest top-1 drop vs CURRENT")
    p.add_argument("--max-top10-drop", type=float, default=0.01, help="largest top-10 drop vs CURRENT")
    p.add_argument(
        "--noise-confidence",
        type=float,
        default=None,
        help="refuse only drops beyond the allowed one at this confidence (paired bootstrap over the "
        "shared queries; default 0.95); 0: the measured drop alone decides",
    )
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    p.add_argument("--reason", default=None, help="why (recorded); required with --force")


def register(sub: SubParsers) -> None:
    index = sub.add_parser("index", help="build, publish and manage versioned FAISS indexes").add_subparsers(
        dest="index_command", required=True
    )

    def index_cmd(name: str, fn: Command, text: str) -> argparse.ArgumentParser:
        p = add(index, name, fn, text)
        p.add_argument("--name", default="catalog", help="index name (indexes/NAME/)")
        return p

    for name, fn, text in (
        ("build", cmd_index_build, "build and evaluate an index from feature shards (publishes nothing)"),
        ("publish", cmd_index_publish, "build, evaluate and publish a new version through the quality gate"),
    ):
        p = index_cmd(name, fn, text)
        p.add_argument("--manifest", required=True, help="catalogue manifest URI")
        p.add_argument("--model", default="glasses", help="NAME or NAME@SHA of the embedding model")
        p.add_argument("--spec", required=True, help="render spec hash of the catalogue views")
        p.add_argument("--query-spec", default=None, help="render spec hash of held-out query views")
        p.add_argument("--exact-max-vectors", type=int, default=200_000)
        p.add_argument("--recall-target", type=float, default=0.95)
        p.add_argument("--device", default=None)
        _gate_args(p)
    p = index_cmd(
        "update", cmd_index_update, "publish a child of CURRENT with products added or removed (incremental)"
    )
    p.add_argument("--manifest", default=None, help="manifest URI of the products to add or replace")
    p.add_argument("--remove", default=None, help="product ids to remove, comma-separated")
    p.add_argument("--query-spec", default=None, help="default: CURRENT's evaluation query spec")
    p.add_argument("--device", default=None)
    _gate_args(p)
    index_cmd("list", cmd_index_list, "list versions (* marks CURRENT)")
    p = index_cmd("show", cmd_index_show, "print a version's manifest after verifying its files")
    p.add_argument("version", nargs="?", type=int, default=None, help="default: CURRENT")
    p = index_cmd("promote", cmd_index_promote, "make a published version CURRENT (through the gate)")
    p.add_argument("version", type=int)
    _gate_args(p)
    p = index_cmd("rollback", cmd_index_rollback, "move CURRENT back to its parent (or --to a version)")
    p.add_argument("--to", type=int, default=None)
    p.add_argument("--reason", required=True)
    p = index_cmd("pin", cmd_index_pin, "keep a version through gc")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p = index_cmd("gc", cmd_index_gc, "delete old versions, keeping the newest K, CURRENT and pinned ones")
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--dry-run", action="store_true")
