"""Defaults that more than one module needs, each read from one environment variable.

Every default lives here so that the CLI, the DAGs and the tests agree on them.
"""

from __future__ import annotations

import os

#: Where artefacts go when no store URI is given: a directory beside the working dir.
DEFAULT_STORE_URI = ".glassfinder/store"


def store_uri() -> str:
    """The store URI to use: $GLASSFINDER_STORE_URI, else the local default."""
    return os.environ.get("GLASSFINDER_STORE_URI") or DEFAULT_STORE_URI
