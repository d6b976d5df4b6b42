"""Embed a rendered catalogue: image shards in, feature shards out, skipping what exists.

Feature shards are content-addressed by (model sha, spec hash, asset sha256) and written
create-only, so a re-run or a retried task embeds only what is missing and never leaves half a
shard. Reading, decoding and aligning the next shards runs in a thread pool while the model
works on the current batch (cv2, pyarrow and torch all release the GIL).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from glassfinder import layout
from glassfinder.embed.data import iter_shard_crops, shard_keys, view_columns
from glassfinder.embed.infer import Embedder
from glassfinder.errors import BadInputError, ObjectExistsError, ShardCorruptError, ShardError
from glassfinder.quarantine import QuarantineRecord
from glassfinder.store.base import ObjectStore
from glassfinder.store.shards import feature_table, write_shard

if TYPE_CHECKING:  # tqdm only draws a progress bar: imported when one is asked for
    from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    model_sha: str
    spec_hash: str
    shards: int = 0
    embedded: int = 0
    skipped: int = 0
    views: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


#: What makes an image shard unembeddable (quarantined, retried next run); anything else
#: propagates, so the task fails or retries as its error class says.
UNEMBEDDABLE: tuple[type[Exception], ...] = (ShardError, BadInputError)


def _load_one(store: ObjectStore, key: str, embedder: Embedder) -> tuple[str, pa.Table, np.ndarray]:
    for item in iter_shard_crops(store, [key], embedder.geometry):
        return item
    raise ShardCorruptError(f"image shard {store.uri}/{key} has no rows")


def _quarantine(out: ObjectStore, model_sha: str, spec_hash: str, key: str, exc: Exception) -> dict[str, Any]:
    """The record of an image shard that could not be embedded, also written beside the features
    (glassfinder.quarantine reads it back); the next run tries the shard again."""
    asset = key.rsplit("/", 1)[-1].removesuffix(".parquet")
    record = QuarantineRecord(
        "embed", type(exc).__name__, str(exc), source=key, asset_sha256=asset, retry=True
    ).to_dict()
    with contextlib.suppress(BadInputError):  # a key naming no asset: the record stays in the report
        out.put(layout.feature_quarantine_key(model_sha, spec_hash, asset), json.dumps(record).encode())
    return record


def default_decode_workers() -> int:
    """Threads that read and decode shards: every core but the one feeding the model."""
    return max(1, (os.cpu_count() or 2) - 1)


def prefetched_shards(
    store: ObjectStore, keys: Sequence[str], embedder: Embedder, *, decode_workers: int = 1
) -> Iterator[tuple[str, tuple[str, pa.Table, np.ndarray] | Exception]]:
    """(key, (key, meta, crops) or the error) per shard, in order, decoded ahead by a thread pool.

    At most 2 x decode_workers shards are in flight, so memory stays bounded on any catalogue.
    """
    with ThreadPoolExecutor(decode_workers) as pool:
        window: deque[tuple[str, Future[tuple[str, pa.Table, np.ndarray]]]] = deque()
        todo = iter(keys)
        for key in todo:
            window.append((key, pool.submit(_load_one, store, key, embedder)))
            if len(window) >= 2 * decode_workers:
                break
        while window:
            key, fut = window.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                window.append((nxt, pool.submit(_load_one, store, nxt, embedder)))
            try:
                yield key, fut.result()
            except Exception as exc:
                yield key, exc


def embed_catalog(
    store: ObjectStore,
    spec_hash: str,
    embedder: Embedder,
    model_sha: str,
    *,
    out: ObjectStore | None = None,
    progress: bool = False,
    decode_workers: int | None = None,
    assets: Collection[str] | None = None,
) -> EmbedReport:
    """Write a feature shard for every image shard of `spec_hash` that has none for this model.

    assets: only the image shards of these asset sha256s (a batch of a mapped task).
    """
    start = time.perf_counter()
    out = out or store
    report = EmbedReport(model_sha=model_sha, spec_hash=spec_hash)
    keys = _image_shard_keys(store, spec_hash, assets)
    report.shards = len(keys)
    todo = _without_features(out, keys, report)
    bar = _progress_bar(len(todo), f"embedding {spec_hash} with {model_sha}") if progress and todo else None
    writer = _FeatureWriter(out, embedder, report, bar)
    for key, item in prefetched_shards(
        store, todo, embedder, decode_workers=decode_workers or default_decode_workers()
    ):
        if isinstance(item, Exception):
            _skip_unembeddable(store, out, report, key, item)
            if bar is not None:
                bar.update(1)
            continue
        writer.add(item)
    writer.flush()
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _image_shard_keys(store: ObjectStore, spec_hash: str, assets: Collection[str] | None) -> list[str]:
    """The spec's image shards, or only those of `assets` when a mapped task names a batch."""
    keys = shard_keys(store, spec_hash)
    if assets is not None:
        wanted = {layout.render_shard_key(spec_hash, a) for a in assets}
        keys = [k for k in keys if k in wanted]
    return keys


def _without_features(out: ObjectStore, keys: list[str], report: EmbedReport) -> list[str]:
    """The image shards that have no feature shard yet; the others are counted as skipped."""
    existing = {i.key for i in out.list(layout.feature_prefix(report.model_sha, report.spec_hash))}
    todo = []
    for key in keys:
        asset = key.rsplit("/", 1)[-1].removesuffix(".parquet")
        if layout.feature_shard_key(report.model_sha, report.spec_hash, asset) in existing:
            report.skipped += 1
        else:
            todo.append(key)
    return todo


def _progress_bar(total: int, desc: str) -> tqdm:
    from tqdm import tqdm  # only when a progress bar is asked for (DAG tasks never draw one)

    return tqdm(total=total, unit="shard", desc=desc)


def _skip_unembeddable(
    store: ObjectStore, out: ObjectStore, report: EmbedReport, key: str, exc: Exception
) -> None:
    """Quarantine a shard that cannot be embedded; any other error is raised, not the shard's fault."""
    if not isinstance(exc, UNEMBEDDABLE):
        # An outage (retryable) or a bug is not the shard's fault: quarantining it would
        # turn a store hiccup into a product missing from tonight's index.
        raise exc
    report.quarantined.append(_quarantine(out, report.model_sha, report.spec_hash, key, exc))
    log.warning("skipped image shard %s/%s: %s", store.uri, key, exc)


@dataclass
class _FeatureWriter:
    """Decoded shards held back until they fill a model batch, then embedded and written together:
    the model is fastest on full batches, and each shard's features still go to its own shard."""

    out: ObjectStore
    embedder: Embedder
    report: EmbedReport
    bar: tqdm | None
    pending: list[tuple[str, pa.Table, np.ndarray]] = field(default_factory=list)
    queued: int = 0

    def add(self, item: tuple[str, pa.Table, np.ndarray]) -> None:
        self.pending.append(item)
        self.queued += len(item[2])
        if self.queued >= self.embedder.batch_size:
            self.flush()
            self.queued = 0

    def flush(self) -> None:
        if not self.pending:
            return
        embeddings = self.embedder.embed(np.concatenate([c for _, _, c in self.pending]))
        row = 0
        for _key, meta, crops in self.pending:
            emb = embeddings[row : row + len(crops)]
            row += len(crops)
            self._write(meta, emb, len(crops))
            if self.bar is not None:
                self.bar.update(1)
        self.pending.clear()

    def _write(self, meta: pa.Table, emb: np.ndarray, views: int) -> None:
        model_sha, spec_hash = self.report.model_sha, self.report.spec_hash
        asset = str(meta.column("asset_sha256")[0])
        table = feature_table(view_columns(meta), model_sha=model_sha, embeddings=emb)
        try:
            write_shard(
                self.out,
                layout.feature_shard_key(model_sha, spec_hash, asset),
                table,
                "feature",
                create_only=True,
            )
            self.report.embedded += 1
            self.report.views += views
        except ObjectExistsError:
            self.report.skipped += 1  # another worker finished it first: same model, same bytes
