"""The serving side's view of one index version: CURRENT resolved once, verified, never changed.

A reader never serves a version whose manifest does not match the sha256 CURRENT records (and,
with a signing key, its HMAC), or whose files do not match their manifest. It does not reload
itself: the one reload path is the search service's (glassfinder.search.query.QueryEngine.refresh),
which builds a new reader when CURRENT moves and keeps the old one serving if that fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from glassfinder.index.build import apply_search_params
from glassfinder.index.search import ProductHit, ProductSearcher
from glassfinder.index.versions import fetch_current_verified, fetch_verified, load_files
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVersion:
    version: int
    etag: str
    manifest: dict[str, Any]
    searcher: ProductSearcher


class IndexReader:
    """Search one version of an index (CURRENT's when it was opened); safe to share between threads."""

    def __init__(self, store: ObjectStore, name: str, *, version: int | None = None) -> None:
        self.store = store
        self.name = name
        self._pinned = version
        self._loaded = self._load()

    def _load(self) -> LoadedVersion:
        if self._pinned is None:  # from the pointer down: CURRENT -> manifest sha256 -> every file
            current, etag, manifest, files = fetch_current_verified(self.store, self.name)
            version = int(current["version"])
        else:
            version, etag = self._pinned, None
            manifest, files = fetch_verified(self.store, self.name, version)
        index, ids, vectors = load_files(files, where=f"index {self.name} v{version} in {self.store.uri}")
        apply_search_params(index, manifest.get("search_params", {}))
        searcher = ProductSearcher(index, ids, vectors, manifest.get("aggregation", "max"))
        log.info("index %s: serving v%d (%d vectors)", self.name, version, index.ntotal)
        return LoadedVersion(version, etag or "", manifest, searcher)

    @property
    def version(self) -> int:
        return self._loaded.version

    @property
    def etag(self) -> str:
        """The etag of CURRENT when the served version was loaded (moves when CURRENT does)."""
        return self._loaded.etag

    @property
    def manifest(self) -> dict[str, Any]:
        return self._loaded.manifest

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[ProductHit]]:
        return self._loaded.searcher.search(queries, k)

    def views_of(self, product_id: str) -> list[str]:
        return self._loaded.searcher.views_of(product_id)
