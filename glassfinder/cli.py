"""The `glassfinder` command: parses arguments, calls the library, formats what comes back.

Every expected failure is a GlassFinderError, printed as one line with exit status 1; tracebacks
only with --debug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from glassfinder import settings
from glassfinder.errors import GlassFinderError
from glassfinder.store.base import ObjectStore

if TYPE_CHECKING:
    from glassfinder.index.versions import GateConfig

#: Exit status of `glassfinder search` when the photo is refused (errors exit 1).
REFUSED_EXIT = 3


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        help=f"store URI (s3://bucket/prefix, file:///path or a path); default $GLASSFINDER_STORE_URI "
        f"or {settings.DEFAULT_STORE_URI}",
    )


def _open(args: argparse.Namespace) -> ObjectStore:
    from glassfinder.store import open_store

    return open_store(args.store or settings.store_uri())


# --- commands -------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from glassfinder.demo import run_demo

    run_demo(
        args.store or settings.store_uri(),
        sheet_path=Path(args.sheet),
        say=lambda line: print(line, flush=True),
    )
    return 0


def cmd_store_check(args: argparse.Namespace) -> int:
    from glassfinder.store.check import check_store
    from glassfinder.store.s3 import S3Store

    store = _open(args)
    if args.create_bucket and isinstance(store, S3Store):
        store.create_bucket()
    report = check_store(store)
    print(f"store {report.uri}: every check passed")
    for what, seconds in report.steps:
        print(f"  ok  {what}  ({seconds * 1000:.1f} ms)")
    return 0


def cmd_store_ls(args: argparse.Namespace) -> int:
    for info in _open(args).list(args.prefix):
        print(f"{info.size:>14}  {info.etag:<36}  {info.key}")
    return 0


def cmd_store_head(args: argparse.Namespace) -> int:
    info = _open(args).head(args.key)
    print(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))
    return 0


def cmd_store_get(args: argparse.Namespace) -> int:
    store = _open(args)
    with store.open_read(args.key) as src:
        out = open(args.out, "wb") if args.out != "-" else sys.stdout.buffer  # noqa: SIM115
        try:
            while chunk := src.read(8 * 1024 * 1024):
                out.write(chunk)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    return 0


def cmd_store_put(args: argparse.Namespace) -> int:
    store = _open(args)
    path = Path(args.file)
    if not path.is_file():
        raise GlassFinderError(f"file to upload not found: {path}")
    info = store.put_file(args.key, path, create_only=args.create_only, if_match=args.if_match)
    print(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))
    return 0


def cmd_store_rm(args: argparse.Namespace) -> int:
    _open(args).delete(args.key)
    return 0


def cmd_shard_show(args: argparse.Namespace) -> int:
    from glassfinder.store.shards import read_shard

    table = read_shard(_open(args), args.key, args.kind)
    print(f"{args.kind} shard {args.key}: {table.num_rows} rows")
    for f in table.schema:
        print(f"  {f.name}: {f.type}")
    return 0


def cmd_catalog_generate(args: argparse.Namespace) -> int:
    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.store import open_store

    report = generate_catalog(
        open_store(args.out), args.count, args.seed, workers=args.workers, progress=sys.stderr.isatty()
    )
    print(
        f"wrote {report.products} products in {report.families} colourway families "
        f"({report.bytes_written / 1e6:.1f} MB) to {args.out} in {report.seconds:.1f} s "
        f"({report.products / report.seconds:.1f} assets/s); "
        f"manifest {args.out.rstrip('/')}/{report.manifest_key}"
    )
    return 0


def cmd_catalog_sheet(args: argparse.Namespace) -> int:
    from glassfinder.catalog.ingest import split_uri
    from glassfinder.render.catalog_sheet import contact_sheet

    store, key = split_uri(args.manifest)
    sheet = contact_sheet(store, key, limit=args.limit, columns=args.columns, tile_px=args.tile_px)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height} px, {min(args.limit, sheet.height)} products max)")
    return 0


def _ingest(args: argparse.Namespace, *, write: bool) -> int:
    from glassfinder.catalog.ingest import ingest_manifest
    from glassfinder.catalog.sources import roots_from_env
    from glassfinder.errors import CatalogueShrinkError

    allow = getattr(args, "allow_shrink", False)
    if allow and not args.reason:
        raise GlassFinderError(
            "--allow-shrink needs --reason: the reason is recorded under catalog/overrides/"
        )
    dest = _open(args) if write else None
    try:
        report = ingest_manifest(
            args.manifest,
            dest=dest,
            max_triangles=args.max_triangles,
            progress=sys.stderr.isatty(),
            asset_roots=[*roots_from_env(), *(args.asset_root or [])],
            max_asset_bytes=args.max_asset_bytes,
            max_shrink_fraction=getattr(args, "max_shrink", None),
            allow_shrink_reason=args.reason if allow else None,
        )
    except CatalogueShrinkError as exc:
        if exc.report is not None:
            _write_ingest_report(args, exc.report, dest)
        raise
    summary = report.summary()
    print(
        f"{summary['rows']} rows: {summary['accepted']} accepted, {summary['quarantined']} quarantined "
        f"in {summary['seconds']} s"
    )
    for reason, n in sorted(summary["reasons"].items()):
        print(f"  {n:>6}  {reason}")
    if report.shrink and report.shrink.get("allowed_reason"):
        print(f"catalogue shrink allowed ({report.shrink['before']} -> {report.shrink['after']} products)")
    _write_ingest_report(args, report, dest)
    return 0


def _write_ingest_report(args: argparse.Namespace, report: Any, dest: ObjectStore | None) -> None:
    """Write the quarantine report where the operator looks: --report, the catalogue, or beside
    the manifest (also when the ingest was refused, since it says why every row was bad)."""
    from glassfinder.catalog.ingest import QUARANTINE_KEY, split_uri

    if args.report:
        Path(args.report).write_text(report.to_json())
        print(f"report: {args.report}")
    elif dest is not None:
        dest.put(QUARANTINE_KEY, report.to_json().encode())
        print(f"report: {dest.uri}/{QUARANTINE_KEY}")
    else:
        store, key = split_uri(args.manifest)
        report_key = key.rsplit(".", 1)[0] + ".quarantine.json"
        store.put(report_key, report.to_json().encode())
        print(f"report: {store.uri}/{report_key}")


def cmd_catalog_validate(args: argparse.Namespace) -> int:
    return _ingest(args, write=False)


def cmd_catalog_ingest(args: argparse.Namespace) -> int:
    return _ingest(args, write=True)


def cmd_render(args: argparse.Namespace) -> int:
    from glassfinder.render.spec import load_spec

    spec = load_spec(args.spec)
    if args.action == "sheet":
        from glassfinder.render.sheet import tryon_sheet

        if not args.product:
            raise GlassFinderError("render sheet needs --product ID")
        sheet = tryon_sheet(args.manifest, args.product, spec, views=args.views)
        sheet.save(args.out)
        print(f"wrote {args.out}: {args.product} in {args.views} views (spec {spec.spec_hash})")
        return 0
    from glassfinder.layout import render_quarantine_report_key
    from glassfinder.render.job import render_catalogue
    from glassfinder.store import open_store

    out = open_store(args.out)
    report = render_catalogue(
        args.manifest, spec, out, workers=args.workers, progress=sys.stderr.isatty(), limit=args.limit
    )
    rate = report.views / report.seconds if report.seconds else 0.0
    print(
        f"spec {report.spec_hash}: {report.assets} assets, {report.rendered} rendered ({report.views} views, "
        f"{rate:.1f} views/s), {report.skipped} already there, {len(report.quarantined)} quarantined "
        f"in {report.seconds:.1f} s"
    )
    if report.quarantined:
        print(f"quarantine report: {out.uri}/{render_quarantine_report_key(report.spec_hash)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from glassfinder.embed.train import TrainConfig, parse_specs, resolve_init, train_and_publish

    store = _open(args)
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
    from glassfinder.embed.infer import Embedder
    from glassfinder.embed.job import embed_catalogue
    from glassfinder.embed.registry import load_model

    store = _open(args)
    loaded = load_model(store, args.model)
    embedder = Embedder(loaded.model, device=args.device, batch_size=args.batch_size)
    report = embed_catalogue(store, args.spec, embedder, loaded.sha, progress=sys.stderr.isatty())
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
    from glassfinder.embed.evaluate import run_eval

    report, json_path, png_path = run_eval(
        _open(args),
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


def _gate(args: argparse.Namespace) -> tuple[GateConfig, str | None]:
    from glassfinder.index.versions import GateConfig

    if args.force and not args.reason:
        raise GlassFinderError("--force needs --reason: the reason is recorded in the version's manifest")
    return GateConfig(args.max_top1_drop, args.max_top10_drop), (args.reason if args.force else None)


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


def cmd_index(args: argparse.Namespace) -> int:
    from glassfinder.index import versions
    from glassfinder.index.build import IndexParams
    from glassfinder.index.pipeline import build_and_publish, update_and_publish

    store = _open(args)
    action = args.index_command
    if action in ("build", "publish"):
        gate, reason = _gate(args)
        params = IndexParams(exact_max_vectors=args.exact_max_vectors, recall_target=args.recall_target)
        built, info, result, features = build_and_publish(
            store,
            args.name,
            manifest_uri=args.manifest,
            model_ref=args.model,
            spec_hash=args.spec,
            query_spec=args.query_spec,
            params=params,
            gate=gate,
            force_reason=reason,
            publish=action == "publish",
            device=args.device,
        )
        print(
            f"index {args.name}: {len(built)} vectors of {info['model']}@{info['model_sha']} spec "
            f"{info['spec_hash']}, {built.factory} {built.search_params or ''} built in "
            f"{built.build_seconds:.1f} s; {len(features.missing)} products not indexed"
        )
        _print_eval(info["evaluation"])
        if result is not None:
            print(f"published {args.name} v{result.version} (parent v{result.parent}) and made it CURRENT")
        return 0
    if action == "update":
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
    if action == "list":
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
    if action == "show":
        if args.version is None:  # what readers serve: verified from CURRENT down
            _, _, manifest, _ = versions.fetch_current_verified(store, args.name)
        else:
            manifest, _ = versions.fetch_verified(store, args.name, args.version)
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    if action == "promote":
        gate, reason = _gate(args)
        versions.promote(store, args.name, args.version, gate=gate, force_reason=reason)
        print(f"{args.name} CURRENT is now v{args.version}")
        return 0
    if action == "rollback":
        target = versions.rollback(store, args.name, to=args.to, reason=args.reason)
        print(f"{args.name} CURRENT rolled back to v{target}")
        return 0
    if action == "pin":
        versions.pin(store, args.name, args.version, args.reason)
        print(f"{args.name} v{args.version} pinned: gc keeps it")
        return 0
    if action == "gc":
        doomed = versions.gc(store, args.name, keep=args.keep, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(doomed)} version(s): {', '.join(f'v{v}' for v in doomed) or 'none'}")
        return 0
    raise GlassFinderError(f"unknown index command {action!r}")


def cmd_search(args: argparse.Namespace) -> int:
    from glassfinder.search.query import QueryEngine, QueryRefusedError, read_photo

    path = Path(args.photo)
    if not path.is_file():
        raise GlassFinderError(f"photo {path} does not exist or is not a file")
    engine = QueryEngine(_open(args), args.index or settings.index_name())
    try:
        result = engine.search(read_photo(path), path.name, k=args.top_k)
    except QueryRefusedError as exc:
        if args.json:
            print(json.dumps({"refused": True, "reason": exc.reason, "message": str(exc)}))
        else:
            print(f"glassfinder: refused ({exc.reason}): {exc}", file=sys.stderr)
        return REFUSED_EXIT
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    t = result.timings_ms
    print(
        f"{path.name}: face {result.face_box_xyxy} (score {result.detection_score:.2f}), glasses "
        f"p={result.glasses_probability:.2f}; index {result.index} v{result.index_version}; "
        f"{t['total']:.0f} ms (detect {t['detect']:.0f}, align+embed {t['align_embed']:.0f}, "
        f"search {t['search']:.1f})"
    )
    for hit in result.hits:
        name = hit.product.get("display_name") or ""
        print(f"{hit.rank:>3}. {hit.product_id:<24} {hit.score:.4f}  {name}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from glassfinder.search.query import QueryEngine
    from glassfinder.search.service import ServiceLimits, serve

    samples = {}
    for path in args.sample or []:
        p = Path(path)
        if not p.is_file():
            raise GlassFinderError(f"sample photo {p} does not exist or is not a file")
        samples[p.name] = p.read_bytes()
    limits = ServiceLimits(
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        max_pixels=args.max_megapixels * 1_000_000,
        max_concurrent=args.max_concurrent,
        reload_interval_s=args.reload_interval,
    )
    engine = QueryEngine(_open(args), args.index or settings.index_name())
    serve(engine, host=args.host, port=args.port, limits=limits, samples=samples)
    return 0


def cmd_presence_train(args: argparse.Namespace) -> int:
    from glassfinder.embed.presence import PresenceTrainConfig, train_and_publish_presence

    config = PresenceTrainConfig(pairs=args.pairs, photo_pairs=args.photo_pairs, seed=args.seed)
    sha, report = train_and_publish_presence(_open(args), config, photo_bank=args.photo_bank)
    print(json.dumps({"sha": sha, **report}, indent=2))
    return 0


# --- airflow -------------------------------------------------------------------------------------
def cmd_airflow(args: argparse.Namespace) -> int:
    from glassfinder.ops import deployment

    home = Path(args.home)
    if args.airflow_command == "up":
        cfg = deployment.DeploymentConfig(
            home=home,
            port=args.port,
            db_url=args.db_url,
            store=args.store or settings.store_uri(),
            dags_folder=Path(args.dags) if args.dags else None,
            plugins_folder=Path(args.plugins) if args.plugins else None,
            parallelism=args.parallelism,
        )
        state = deployment.up(cfg, wait_s=args.wait)
        print(
            f"Airflow is up at {state['url']}/ (log in as {state['user']}, password "
            f"{deployment.password(cfg.home)}; stored in {cfg.home / deployment.PASSWORDS_FILE})"
        )
        print(f"store: {state['store']}")
        running = [f"{name} (pid {c['pid']})" for name, c in state["components"].items()]
        print(f"components: {', '.join(running)}")
        print(
            f"Airflow CLI against it: export AIRFLOW_HOME={cfg.home}; stop it: glassfinder airflow down "
            f"--home {args.home}"
        )
        return 0
    if args.airflow_command == "down":
        stopped = deployment.stop(home)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing of ours runs from {home}")
        return 0
    report = deployment.status(home)
    if args.json:
        print(json.dumps(report, indent=2))
    elif not report["components"]:
        print(f"no deployment started from {report['home']}")
    else:
        print(
            f"{report['url']}/ ({'running' if report['running'] else 'NOT running'}), store {report['store']}"
        )
        for name, state in report["components"].items():
            print(f"  {name}: {state}")
        if report["unhealthy"]:
            print(f"  unhealthy per Airflow: {', '.join(report['unhealthy'])}")
    return 0 if report["running"] and not report["unhealthy"] else 1


# --- parser ---------------------------------------------------------------------------------------
#: Whether this invocation asked for --json: then argument errors are JSON too.
_JSON_ERRORS: ContextVar[bool] = ContextVar("glassfinder_json_errors", default=False)
#: Exit status of an argument error (argparse's own).
USAGE_EXIT = 2
#: Pillow refuses images over twice this as decompression bombs and warns above it.
MAX_MEGAPIXELS = 89
# Bounds the parser checks, spelt here so `glassfinder --help` does not import the heavy modules
# that own them (tests/test_hostile_input.py checks they agree).
MAX_TOP_K = 100  # glassfinder.search.query.MAX_TOP_K
MAX_ASSET_BYTES_LIMIT = 4 * 1024**3  # glassfinder.catalog.sources.MAX_ASSET_BYTES_LIMIT


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one JSON line under --json, so a script that asked
    for JSON never has to parse usage text."""

    def error(self, message: str) -> NoReturn:
        if _JSON_ERRORS.get():
            print(json.dumps({"error": "bad_argument", "message": f"{self.prog}: {message}"}))
            raise SystemExit(USAGE_EXIT)
        super().error(message)


def _int_between(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type for a whole number in [lo, hi]: budgets of 0 or -1 are refused here,
    at the edge, instead of quietly quarantining everything downstream."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:,} and {hi:,}, got {value:,}")
        return value

    return parse


def _float_between(lo: float, hi: float, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite number in [lo, hi] (or (lo, hi] with open_low)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = value > lo if open_low else value >= lo
        if not (low_ok and value <= hi):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if open_low else 'at least'} {lo:g} and at most {hi:g}, got {text}"
            )
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="glassfinder", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        group: argparse._SubParsersAction, name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        _store_arg(p)
        return p

    af = sub.add_parser(
        "airflow", help="a single-machine Airflow deployment of the DAGs (LocalExecutor, 127.0.0.1)"
    ).add_subparsers(dest="airflow_command", required=True)
    for name, text in (
        ("up", "migrate, create pools, start api-server, scheduler, dag-processor and triggerer"),
        ("down", "stop exactly the processes `up` started"),
        ("status", "which components run and what Airflow's health check says (exit 1 if unhealthy)"),
    ):
        p = af.add_parser(name, help=text, description=text)
        p.set_defaults(func=cmd_airflow)
        p.add_argument("--home", default=".glassfinder/airflow", help="AIRFLOW_HOME of the deployment")
    up_args = af.choices["up"]
    up_args.add_argument(
        "--port", type=_int_between(1, 65535), default=8080, help="api-server port on 127.0.0.1"
    )
    up_args.add_argument(
        "--db-url",
        default=None,
        help="metadata database URL (default: SQLite in --home; PostgreSQL to share)",
    )
    up_args.add_argument(
        "--store", default=None, help="GlassFinder store URI (default: $GLASSFINDER_STORE_URI)"
    )
    up_args.add_argument("--dags", default=None, help="DAG folder (default: the checkout's dags/)")
    up_args.add_argument("--plugins", default=None, help="plugin folder (default: the checkout's plugins/)")
    up_args.add_argument(
        "--parallelism", type=_int_between(1, 256), default=4, help="task slots of the LocalExecutor"
    )
    up_args.add_argument(
        "--wait", type=_float_between(1, 3600), default=180, help="seconds to wait for a healthy start"
    )
    af.choices["status"].add_argument("--json", action="store_true", help="print the report as JSON")

    p = add(sub, "demo", cmd_demo, "run the main job on embedded defaults and show the result")
    p.add_argument(
        "--sheet", default=".glassfinder/contact-sheet.png", help="where to write the contact sheet"
    )

    store = sub.add_parser("store", help="inspect and test an object store").add_subparsers(
        dest="store_command", required=True
    )
    p = add(store, "check", cmd_store_check, "prove put/get/list/create-only/compare-and-swap/delete work")
    p.add_argument(
        "--create-bucket",
        action="store_true",
        help="create the S3 bucket first if it is missing (new deployments)",
    )
    p = add(store, "ls", cmd_store_ls, "list objects by key prefix")
    p.add_argument("prefix", nargs="?", default="")
    p = add(store, "head", cmd_store_head, "size and etag of an object")
    p.add_argument("key")
    p = add(store, "get", cmd_store_get, "download an object (streamed)")
    p.add_argument("key")
    p.add_argument("-o", "--out", default="-", help="output file ('-' for stdout)")
    p = add(store, "put", cmd_store_put, "upload a file (multipart when large)")
    p.add_argument("key")
    p.add_argument("file")
    p.add_argument("--create-only", action="store_true", help="fail if the key exists")
    p.add_argument("--if-match", default=None, metavar="ETAG", help="replace only this version")
    p = add(store, "rm", cmd_store_rm, "delete an object")
    p.add_argument("key")

    catalog = sub.add_parser("catalog", help="sample catalogues and asset ingestion").add_subparsers(
        dest="catalog_command", required=True
    )
    p = catalog.add_parser("generate", help="write a procedural sample catalogue (GLB assets + manifest)")
    p.set_defaults(func=cmd_catalog_generate)
    p.add_argument("--count", type=int, required=True, help="number of products")
    p.add_argument("--seed", type=int, default=0, help="same seed, same catalogue")
    p.add_argument("--out", required=True, help="store URI to write to (path or s3://bucket/prefix)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p = catalog.add_parser("sheet", help="render a contact sheet of a catalogue")
    p.set_defaults(func=cmd_catalog_sheet)
    p.add_argument("manifest", help="manifest URI (e.g. out/manifest.parquet)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--tile-px", type=int, default=256)
    for name, fn, text in (
        (
            "validate",
            cmd_catalog_validate,
            "check every row and asset of a manifest; write the quarantine report",
        ),
        ("ingest", cmd_catalog_ingest, "validate, normalise and store a manifest's assets in the catalogue"),
    ):
        p = add(catalog, name, fn, text)
        p.add_argument("manifest", help="manifest URI: .parquet, .csv or .json")
        p.add_argument("--max-triangles", type=_int_between(1, 100_000_000), default=300_000)
        p.add_argument("--report", default=None, help="write the JSON report to this local file")
        p.add_argument(
            "--asset-root",
            action="append",
            metavar="URI",
            help="a folder or s3://bucket/prefix assets may also come from (repeatable; besides the "
            "export's own folder and $GLASSFINDER_ASSET_ROOTS)",
        )
        p.add_argument(
            "--max-asset-bytes",
            type=_int_between(1, MAX_ASSET_BYTES_LIMIT),
            default=None,
            help="largest asset file read (default $GLASSFINDER_MAX_ASSET_BYTES or 256 MiB)",
        )
        if name == "ingest":
            p.add_argument(
                "--max-shrink",
                type=_float_between(0.0, 1.0),
                default=None,
                help="largest share of the catalogue an export may remove (default "
                "$GLASSFINDER_MAX_CATALOGUE_SHRINK or 0.25)",
            )
            p.add_argument(
                "--allow-shrink",
                action="store_true",
                help="accept an export that empties the catalogue or shrinks it past --max-shrink",
            )
            p.add_argument("--reason", default=None, help="why (recorded); required with --allow-shrink")

    p = sub.add_parser("render", help="render try-on image shards of a catalogue (or a sheet of one product)")
    p.set_defaults(func=cmd_render)
    p.add_argument("action", nargs="?", choices=("sheet",), help="'sheet': a contact sheet of one product")
    p.add_argument("--manifest", required=True, help="catalogue manifest URI (from catalog ingest)")
    p.add_argument("--spec", default="default", help="render spec: 'default', a JSON file or a store URI")
    p.add_argument("--out", required=True, help="store URI for shards, or the PNG for 'sheet'")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--limit", type=int, default=None, help="render only the first N products")
    p.add_argument("--product", default=None, help="product id ('sheet')")
    p.add_argument("--views", type=int, default=16, help="views on the sheet")

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

    index = sub.add_parser("index", help="build, publish and manage versioned FAISS indexes").add_subparsers(
        dest="index_command", required=True
    )

    def index_cmd(name: str, text: str) -> argparse.ArgumentParser:
        p = add(index, name, cmd_index, text)
        p.add_argument("--name", default="catalog", help="index name (indexes/NAME/)")
        return p

    def gate_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-top1-drop", type=float, default=0.01, help="largest top-1 drop vs CURRENT")
        p.add_argument("--max-top10-drop", type=float, default=0.01, help="largest top-10 drop vs CURRENT")
        p.add_argument("--force", action="store_true", help="promote even if the gate refuses")
        p.add_argument("--reason", default=None, help="why (recorded); required with --force")

    for name, text in (
        ("build", "build and evaluate an index from feature shards (publishes nothing)"),
        ("publish", "build, evaluate and publish a new version through the quality gate"),
    ):
        p = index_cmd(name, text)
        p.add_argument("--manifest", required=True, help="catalogue manifest URI")
        p.add_argument("--model", default="glasses", help="NAME or NAME@SHA of the embedding model")
        p.add_argument("--spec", required=True, help="render spec hash of the catalogue views")
        p.add_argument("--query-spec", default=None, help="render spec hash of held-out query views")
        p.add_argument("--exact-max-vectors", type=int, default=200_000)
        p.add_argument("--recall-target", type=float, default=0.95)
        p.add_argument("--device", default=None)
        gate_args(p)
    p = index_cmd("update", "publish a child of CURRENT with products added or removed (incremental)")
    p.add_argument("--manifest", default=None, help="manifest URI of the products to add or replace")
    p.add_argument("--remove", default=None, help="product ids to remove, comma-separated")
    p.add_argument("--query-spec", default=None, help="default: CURRENT's evaluation query spec")
    p.add_argument("--device", default=None)
    gate_args(p)
    index_cmd("list", "list versions (* marks CURRENT)")
    p = index_cmd("show", "print a version's manifest after verifying its files")
    p.add_argument("version", nargs="?", type=int, default=None, help="default: CURRENT")
    p = index_cmd("promote", "make a published version CURRENT (through the gate)")
    p.add_argument("version", type=int)
    gate_args(p)
    p = index_cmd("rollback", "move CURRENT back to its parent (or --to a version)")
    p.add_argument("--to", type=int, default=None)
    p.add_argument("--reason", required=True)
    p = index_cmd("pin", "keep a version through gc")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p = index_cmd("gc", "delete old versions, keeping the newest K, CURRENT and pinned ones")
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--dry-run", action="store_true")

    p = add(sub, "search", cmd_search, "find the glasses in a photo: top-k products of the CURRENT index")
    p.add_argument("photo", help="a JPEG, PNG or WebP photo of a face wearing glasses")
    p.add_argument(
        "--top-k", type=_int_between(1, MAX_TOP_K), default=10, help="how many products to show (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print the result (or refusal) as JSON")
    p.add_argument("--index", default=None, help=f"index name (default {settings.DEFAULT_INDEX_NAME})")

    p = add(sub, "serve", cmd_serve, "serve search over HTTP with the evaluation page at /")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--index", default=None, help=f"index name (default {settings.DEFAULT_INDEX_NAME})")
    p.add_argument("--sample", action="append", help="a photo the page offers to pick (repeatable)")
    p.add_argument("--max-upload-mb", type=_int_between(1, 1024), default=10)
    p.add_argument("--max-megapixels", type=_int_between(1, MAX_MEGAPIXELS), default=40)
    p.add_argument(
        "--max-concurrent", type=_int_between(1, 256), default=4, help="queries computed at once; more wait"
    )
    p.add_argument(
        "--reload-interval",
        type=_float_between(0.0, 86_400.0, open_low=True),
        default=10.0,
        help="seconds between CURRENT checks",
    )

    presence = sub.add_parser(
        "presence", help="the glasses-presence check that refuses bare faces"
    ).add_subparsers(dest="presence_command", required=True)
    p = add(presence, "train", cmd_presence_train, "train, calibrate and publish the glasses-presence model")
    p.add_argument(
        "--pairs", type=int, default=600, help="render pairs (with/without glasses) on procedural heads"
    )
    p.add_argument(
        "--photo-bank", default=None, help="store URI of a folder of photos of faces without glasses"
    )
    p.add_argument("--photo-pairs", type=int, default=80, help="render pairs on the photo bank's faces")
    p.add_argument("--seed", type=int, default=0)

    shard = sub.add_parser("shard", help="inspect Parquet shards").add_subparsers(
        dest="shard_command", required=True
    )
    p = add(shard, "show", cmd_shard_show, "validate a shard and print its schema and row count")
    p.add_argument("key")
    p.add_argument("--kind", choices=("feature", "image"), required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    token = _JSON_ERRORS.set("--json" in argv)
    try:
        return _main(argv)
    finally:
        _JSON_ERRORS.reset(token)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except GlassFinderError as exc:
        if args.debug:
            raise
        if getattr(args, "json", False):
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            print(f"glassfinder: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glassfinder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
