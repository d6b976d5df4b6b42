"""`glassfinder render`: try-on image shards of a catalogue, or a sheet of one product."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glassfinder.cli.common import SubParsers
from glassfinder.errors import BadInputError
from glassfinder.layout import PORTRAIT_BANK_PREFIX, render_quarantine_report_key
from glassfinder.settings import portraits_dir
from glassfinder.store import open_store


def cmd_render(args: argparse.Namespace) -> int:
    from glassfinder.render.spec import load_spec  # numpy: imported on use, keeping --help fast

    if args.action == "photo-bank":
        return cmd_photo_bank(args)
    if not args.manifest:
        raise BadInputError("render needs --manifest URI (the catalogue manifest from catalog ingest)")
    spec = load_spec(args.spec)
    if args.action == "sheet":
        from glassfinder.render.sheet import tryon_sheet  # pyrender: imported on use

        if not args.product:
            raise BadInputError("render sheet needs --product ID")
        sheet = tryon_sheet(args.manifest, args.product, spec, views=args.views)
        sheet.save(args.out)
        print(f"wrote {args.out}: {args.product} in {args.views} views (spec {spec.spec_hash})")
        return 0
    from glassfinder.render.job import render_catalog  # trimesh: imported on use

    out = open_store(args.out)
    report = render_catalog(
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


def cmd_photo_bank(args: argparse.Namespace) -> int:
    # PIL and numpy: imported on use, keeping --help fast
    from glassfinder.heads.portraits import load_portraits, split_portraits, write_photo_bank
    from glassfinder.render.spec import OUTPUT_STORE_BANK

    store = open_store(args.out)
    train = split_portraits(load_portraits(args.portraits or portraits_dir()))["train"]
    written = write_photo_bank(train, store)
    bare = sum(p.glasses == "no" for p in train)
    print(
        f"photo bank {store.uri}/{PORTRAIT_BANK_PREFIX}: {len(written)} bare portraits written, "
        f"{bare - len(written)} already there (the train split only); render onto it with a spec "
        f'holding "face_source": "{OUTPUT_STORE_BANK}{PORTRAIT_BANK_PREFIX}" when it renders into this '
        f'store, else "photos:{store.uri}/{PORTRAIT_BANK_PREFIX}"'
    )
    return 0


def register(sub: SubParsers) -> None:
    p = sub.add_parser("render", help="render try-on image shards of a catalogue (or a sheet of one product)")
    p.set_defaults(func=cmd_render)
    p.add_argument(
        "action",
        nargs="?",
        choices=("sheet", "photo-bank"),
        help="'sheet': a contact sheet of one product; 'photo-bank': put the bare real portraits "
        "(train split) into the store --out as faces that renders can wear frames on",
    )
    p.add_argument("--manifest", default=None, help="catalogue manifest URI (from catalog ingest)")
    p.add_argument("--portraits", default=None, type=Path, help="'photo-bank': labelled portraits folder")
    p.add_argument("--spec", default="default", help="render spec: 'default', a JSON file or a store URI")
    p.add_argument("--out", required=True, help="store URI for shards, or the PNG for 'sheet'")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--limit", type=int, default=None, help="render only the first N products")
    p.add_argument("--product", default=None, help="product id ('sheet')")
    p.add_argument("--views", type=int, default=16, help="views on the sheet")
