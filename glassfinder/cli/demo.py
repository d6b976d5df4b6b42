"""`glassfinder demo`: the main job on embedded defaults."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from glassfinder import settings
from glassfinder.cli.common import CONSOLE_FILTER, SubParsers, add


def cmd_demo(args: argparse.Namespace) -> int:
    from glassfinder.demo import run_demo  # airflow, trimesh: imported on use, keeping --help fast

    # The demo says what each stage did; the stages' own INFO lines go to the log file with the rest.
    CONSOLE_FILTER.project_level = logging.WARNING

    run_demo(
        args.store or settings.store_uri(),
        sheet_path=Path(args.sheet),
        say=lambda line: print(line, flush=True),
    )
    return 0


def register(sub: SubParsers) -> None:
    p = add(sub, "demo", cmd_demo, "run the main job on embedded defaults and show the result")
    p.add_argument(
        "--sheet", default=".glassfinder/contact-sheet.png", help="where to write the contact sheet"
    )
