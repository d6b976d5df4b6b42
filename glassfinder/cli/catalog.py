"""`glassfinder catalog`: sample catalogues, contact sheets and asset ingestion."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from glassfinder.catalog.sources import roots_from_env
from glassfinder.cli.common import SubParsers, add, float_between, int_between, open_args_store, store_arg
from glassfinder.errors import BadInputError, CatalogShrinkError
from glassfinder.quarantine import format_record, read_quarantine
from glassfinder.store import open_object, open_store
from glassfinder.store.base import ObjectStore

# Spelt here so `glassfinder --help` does not import the heavy module that owns it
# (tests/test_hostile_input.py checks they agree).
MAX_ASSET_BYTES_LIMIT = 4 * 1024**3  # glassfinder.catalog.sources.MAX_ASSET_BYTES_LIMIT
STAGES = ("ingest", "render", "embed", "index")  # glassfinder.quarantine.STAGES


def cmd_catalog_generate(args: argparse.Namespace) -> int:
    from glassfinder.catalog.generate import generate_catalog  # trimesh: imported on use

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
    # trimesh and pyarrow: imported on use, keeping --help fast
    from glassfinder.render.catalog_sheet import contact_sheet

    if args.packshots:
        return _packshot_sheet(args)
    if not args.manifest:
        raise BadInputError("catalog sheet needs a manifest URI (or --packshots for the store's catalogue)")
    store, key = open_object(args.manifest)
    sheet = contact_sheet(store, key, limit=args.limit, columns=args.columns, tile_px=args.tile_px)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height} px, {min(args.limit, sheet.height)} products max)")
    return 0


def _packshot_sheet(args: argparse.Namespace) -> int:
    # trimesh and pyarrow: imported on use, keeping --help fast
    from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY
    from glassfinder.render.catalog_sheet import packshot_sheet
    from glassfinder.render.packshot import PACKSHOT_SPEC

    store = open_args_store(args)
    mstore, key = open_object(args.manifest) if args.manifest else (store, CATALOG_MANIFEST_KEY)
    made = packshot_sheet(
        mstore, key, store, PACKSHOT_SPEC, limit=args.limit, columns=args.columns, tile_px=args.tile_px
    )
    made.image.save(args.out)
    print(
        f"wrote {args.out} ({made.image.width}x{made.image.height} px): packshots of {made.products} "
        f"products, {made.from_store} from {store.uri}, {made.rendered} rendered for the sheet"
    )
    return 0


def cmd_catalog_validate(args: argparse.Namespace) -> int:
    return _ingest(args, write=False)


def cmd_catalog_ingest(args: argparse.Namespace) -> int:
    return _ingest(args, write=True)


def _ingest(args: argparse.Namespace, *, write: bool) -> int:
    from glassfinder.catalog.ingest import ingest_manifest  # trimesh: imported on use

    allow = getattr(args, "allow_shrink", False)
    if allow and not args.reason:
        raise BadInputError("--allow-shrink needs --reason: the reason is recorded under catalog/overrides/")
    dest = open_args_store(args) if write else None
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
    except CatalogShrinkError as exc:
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
    if summary["dropped_fields"]:
        print(f"{summary['dropped_fields']} bad optional field(s) dropped (rows kept; see the report)")
    if summary["duplicate_ids"]:
        print(f"{summary['duplicate_ids']} product id(s) given by several rows: the last valid row won")
    if summary["refused_products"]:
        sample = ", ".join(summary["refused_products_sample"][:5])  # ids passed the id rule: printable
        print(f"{summary['refused_products']} product(s) with no valid row are not ingested (e.g. {sample})")
    if report.shrink and report.shrink.get("allowed_reason"):
        print(f"catalogue shrink allowed ({report.shrink['before']} -> {report.shrink['after']} products)")
    _write_ingest_report(args, report, dest)
    return 0


def _write_ingest_report(args: argparse.Namespace, report: Any, dest: ObjectStore | None) -> None:
    """Write the quarantine report where the operator looks: --report, the catalogue, or beside
    the manifest (also when the ingest was refused, since it says why every row was bad)."""
    from glassfinder.catalog.ingest import QUARANTINE_KEY  # trimesh: imported on use

    if args.report:
        Path(args.report).write_text(report.to_json())
        print(f"report: {args.report}")
    elif dest is not None:
        dest.put(QUARANTINE_KEY, report.to_json().encode())
        print(f"report: {dest.uri}/{QUARANTINE_KEY}")
    else:
        store, key = open_object(args.manifest)
        report_key = key.rsplit(".", 1)[0] + ".quarantine.json"
        store.put(report_key, report.to_json().encode())
        print(f"report: {store.uri}/{report_key}")


def cmd_catalog_quarantine(args: argparse.Namespace) -> int:
    records = read_quarantine(open_args_store(args), args.stage or STAGES)
    if args.product:
        records = [r for r in records if r.product_id == args.product]
    for r in records:
        # JSON is ASCII-escaped and text lines escape control and bidi characters: an id or a
        # message from a shop's export cannot forge another line.
        print(json.dumps(r.to_dict(), ensure_ascii=True) if args.json else format_record(r))
    if not args.json:
        print(f"{len(records)} quarantine record(s)", file=sys.stderr)
    return 0


def _ingest_args(p: argparse.ArgumentParser) -> None:
    """The options validate and ingest share."""
    p.add_argument("manifest", help="manifest URI: .parquet, .csv or .json")
    p.add_argument("--max-triangles", type=int_between(1, 100_000_000), default=300_000)
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
        type=int_between(1, MAX_ASSET_BYTES_LIMIT),
        default=None,
        help="largest asset file read (default $GLASSFINDER_MAX_ASSET_BYTES or 256 MiB)",
    )


def register(sub: SubParsers) -> None:
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
    p.add_argument(
        "manifest",
        nargs="?",
        help="manifest URI (e.g. out/manifest.parquet); with --packshots, default the store's catalogue",
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--packshots",
        action="store_true",
        help="the packshots results show (from --store; any it lacks rendered for the sheet)",
    )
    store_arg(p)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--tile-px", type=int, default=256)
    p = add(
        catalog,
        "validate",
        cmd_catalog_validate,
        "check every row and asset of a manifest; write the quarantine report",
    )
    _ingest_args(p)
    p = add(
        catalog,
        "quarantine",
        cmd_catalog_quarantine,
        "list every stage's quarantine records in a store (ingest, render, embed, index)",
    )
    p.add_argument("--stage", action="append", choices=STAGES, help="only this stage (repeatable)")
    p.add_argument("--product", default=None, help="only this product id")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = add(
        catalog,
        "ingest",
        cmd_catalog_ingest,
        "validate, normalise and store a manifest's assets in the catalogue",
    )
    _ingest_args(p)
    p.add_argument(
        "--max-shrink",
        type=float_between(0.0, 1.0),
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
