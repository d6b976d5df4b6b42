"""Watch the shop's catalogue export and announce each new version of it as an Airflow Asset event.

Runs in the Airflow triggerer (an AssetWatcher on the onboarding DAG's schedule). It compares the
export's etag with the last one it announced, kept in the object store beside the catalogue, so
a restarted triggerer neither misses a change nor announces the same one twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from glassfinder import layout
from glassfinder.errors import GlassFinderError, ObjectNotFoundError
from glassfinder.store import open_object, open_store

log = logging.getLogger(__name__)


def marker_key(source_uri: str) -> str:
    """Where the last announced etag of one source manifest is kept."""
    return layout.source_watch_key(source_uri)


def check_source(source_uri: str, store_uri: str) -> dict[str, Any] | None:
    """The event to announce if the source changed since the last announcement, else None.

    Records the announcement before returning it: at most one event per version of the export.
    """
    source_store, source_key = open_object(source_uri)
    try:
        info = source_store.head(source_key)
    except ObjectNotFoundError:
        return None  # nothing exported yet
    store = open_store(store_uri)
    key = marker_key(source_uri)
    try:
        last = json.loads(store.get(key)).get("etag")
    except (ObjectNotFoundError, json.JSONDecodeError):
        last = None
    if info.etag == last:
        return None
    event = {"source_manifest": source_uri, "etag": info.etag, "size": info.size}
    store.put(key, json.dumps(event).encode())
    return event


class SourceManifestTrigger(BaseEventTrigger):
    """Fires once per new version (etag) of the source manifest at `source_uri`."""

    def __init__(self, source_uri: str, store_uri: str, poll_interval_s: float = 60.0) -> None:
        super().__init__()
        self.source_uri = source_uri
        self.store_uri = store_uri
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "source_uri": self.source_uri,
                "store_uri": self.store_uri,
                "poll_interval_s": self.poll_interval_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                event = await asyncio.to_thread(check_source, self.source_uri, self.store_uri)
            except GlassFinderError as exc:  # an unreachable store: say so and keep watching
                log.warning("cannot check %s for changes: %s", self.source_uri, exc)
                event = None
            if event is not None:
                log.info("catalogue export %s changed (etag %s)", self.source_uri, event["etag"])
                yield TriggerEvent(event)
                return
            await asyncio.sleep(self.poll_interval_s)
