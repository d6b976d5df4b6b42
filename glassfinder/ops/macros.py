"""Template macros: the live index version and where it lives, for operators' own DAGs and tasks.

In a template: `{{ macros.glassfinder.current_index_version() }}` or
`{{ macros.glassfinder.current_index_uri("catalog") }}`.
"""

from __future__ import annotations

from glassfinder import layout, settings
from glassfinder.index.versions import read_current
from glassfinder.store import open_store


def current_index_version(name: str | None = None, store: str | None = None) -> int | None:
    """The CURRENT version number of an index (default: the pipeline's), None before the first publish."""
    current, _ = read_current(open_store(store or settings.store_uri()), name or settings.index_name())
    return int(current["version"]) if current else None


def current_index_uri(name: str | None = None, store: str | None = None) -> str | None:
    """The URI of the CURRENT version's folder (what a reader loads), None before the first publish."""
    s = open_store(store or settings.store_uri())
    name = name or settings.index_name()
    current, _ = read_current(s, name)
    if current is None:
        return None
    return f"{s.uri.rstrip('/')}/{layout.index_version_prefix(name, int(current['version']))}"
