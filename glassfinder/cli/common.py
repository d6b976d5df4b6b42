"""What every command group shares: the parser class, bounded argument types, the --store option
and the handling that turns an expected failure into one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import NoReturn, TypeAlias

from glassfinder import settings
from glassfinder.errors import GlassFinderError
from glassfinder.store import open_store
from glassfinder.store.base import ObjectStore

#: A command: the parsed arguments in, the exit status out.
Command: TypeAlias = Callable[[argparse.Namespace], int]
#: What add_subparsers returns; each command group registers its sub-commands on one.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Whether this invocation asked for --json: then argument errors are JSON too.
JSON_ERRORS: ContextVar[bool] = ContextVar("glassfinder_json_errors", default=False)
#: Exit status of an argument error (argparse's own).
USAGE_EXIT = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one JSON line under --json, so a script that asked
    for JSON never has to parse usage text."""

    def error(self, message: str) -> NoReturn:
        if JSON_ERRORS.get():
            print(json.dumps({"error": "bad_argument", "message": f"{self.prog}: {message}"}))
            raise SystemExit(USAGE_EXIT)
        super().error(message)


def int_between(lo: int, hi: int) -> Callable[[str], int]:
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


def float_between(lo: float, hi: float, *, open_low: bool = False) -> Callable[[str], float]:
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


def store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        help=f"store URI (s3://bucket/prefix, file:///path or a path); default $GLASSFINDER_STORE_URI "
        f"or {settings.DEFAULT_STORE_URI}",
    )


def open_args_store(args: argparse.Namespace) -> ObjectStore:
    """The store --store names, else $GLASSFINDER_STORE_URI's, else the default."""
    return open_store(args.store or settings.store_uri())


def add(group: SubParsers, name: str, fn: Command, help: str) -> argparse.ArgumentParser:
    """A sub-command running fn, its help also its description, with --store."""
    p = group.add_parser(name, help=help, description=help)
    p.set_defaults(func=fn)
    store_arg(p)
    return p


#: Where third-party INFO lines go (Airflow's configuration, faiss's loader, PyOpenGL...): a
#: new operator reads the project's own lines on the console; these stay for whoever looks.
DEFAULT_LOG_FILE = ".glassfinder/glassfinder.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ConsoleFilter(logging.Filter):
    """What the console shows: every WARNING and above, and INFO of the project's own loggers
    from `project_level` up (a command that says its own lines, as the demo, raises it)."""

    def __init__(self, project_level: int = logging.INFO) -> None:
        super().__init__()
        self.project_level = project_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.split(".")[0] == "glassfinder" and record.levelno >= self.project_level


CONSOLE_FILTER = ConsoleFilter()


def configure_logging(*, debug: bool, verbose: bool) -> None:
    """Console: the project's lines and every warning; everything else at INFO (DEBUG with
    --debug) to $GLASSFINDER_LOG_FILE or .glassfinder/glassfinder.log, created on the first line.
    -v or --debug show it all on the console. Leaves alone a process whose logging is already
    set up (an embedding program, pytest), as logging.basicConfig does."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    if not (verbose or debug):
        console.addFilter(CONSOLE_FILTER)
        path = settings.env(settings.LOG_FILE_ENV) or DEFAULT_LOG_FILE
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            file = logging.FileHandler(path, delay=True)
            file.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(file)
        except OSError:
            pass  # an unwritable folder costs only the library lines, never the command
    root.addHandler(console)
    if not debug:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command. A GlassFinderError is one line (one JSON object under --json) and
    exit status 1; its traceback only with --debug."""
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
