"""The `glassfinder` command: parses arguments, calls the library, formats what comes back.

Every expected failure is a GlassFinderError, printed as one line with exit status 1; tracebacks
only with --debug. Each command group is a module that registers its sub-parsers beside its
commands; common.py holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from glassfinder.cli import airflow, catalog, demo, index, models, render, search, shard, store
from glassfinder.cli.catalog import MAX_ASSET_BYTES_LIMIT
from glassfinder.cli.common import JSON_ERRORS, USAGE_EXIT, Parser, configure_logging, run
from glassfinder.cli.search import MAX_MEGAPIXELS, MAX_TOP_K, REFUSED_EXIT

__all__ = [
    "MAX_ASSET_BYTES_LIMIT",
    "MAX_MEGAPIXELS",
    "MAX_TOP_K",
    "REFUSED_EXIT",
    "USAGE_EXIT",
    "build_parser",
    "main",
]

#: The command groups, in the order `glassfinder --help` lists their commands.
GROUPS = (airflow, demo, store, catalog, render, models, index, search, shard)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(prog="glassfinder", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show libraries' INFO lines on the console too (default: in .glassfinder/glassfinder.log)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    token = JSON_ERRORS.set("--json" in argv)
    try:
        return _main(argv)
    finally:
        JSON_ERRORS.reset(token)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(debug=args.debug, verbose=args.verbose)
    return run(args)
