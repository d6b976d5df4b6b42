"""`glassfinder shard`: inspect Parquet shards."""

from __future__ import annotations

import argparse

from glassfinder.cli.common import SubParsers, add, open_args_store


def cmd_shard_show(args: argparse.Namespace) -> int:
    from glassfinder.store.shards import read_shard  # pyarrow: imported on use, keeping --help fast

    table = read_shard(open_args_store(args), args.key, args.kind)
    print(f"{args.kind} shard {args.key}: {table.num_rows} rows")
    for f in table.schema:
        print(f"  {f.name}: {f.type}")
    return 0


def register(sub: SubParsers) -> None:
    shard = sub.add_parser("shard", help="inspect Parquet shards").add_subparsers(
        dest="shard_command", required=True
    )
    p = add(shard, "show", cmd_shard_show, "validate a shard and print its schema and row count")
    p.add_argument("key")
    p.add_argument("--kind", choices=("feature", "image"), required=True)
