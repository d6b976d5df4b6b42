"""`glassfinder store`: inspect and test an object store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glassfinder.cli.common import SubParsers, add, open_args_store
from glassfinder.errors import BadInputError
from glassfinder.store.check import check_store
from glassfinder.store.s3 import S3Store


def cmd_store_check(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    if args.create_bucket and isinstance(store, S3Store):
        store.create_bucket()
    report = check_store(store)
    print(f"store {report.uri}: every check passed")
    for what, seconds in report.steps:
        print(f"  ok  {what}  ({seconds * 1000:.1f} ms)")
    return 0


def cmd_store_ls(args: argparse.Namespace) -> int:
    for info in open_args_store(args).list(args.prefix):
        print(f"{info.size:>14}  {info.etag:<36}  {info.key}")
    return 0


def cmd_store_head(args: argparse.Namespace) -> int:
    info = open_args_store(args).head(args.key)
    print(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))
    return 0


def cmd_store_get(args: argparse.Namespace) -> int:
    store = open_args_store(args)
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
    store = open_args_store(args)
    path = Path(args.file)
    if not path.is_file():
        raise BadInputError(f"file to upload not found: {path}")
    info = store.put_file(args.key, path, create_only=args.create_only, if_match=args.if_match)
    print(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))
    return 0


def cmd_store_rm(args: argparse.Namespace) -> int:
    open_args_store(args).delete(args.key)
    return 0


def register(sub: SubParsers) -> None:
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
