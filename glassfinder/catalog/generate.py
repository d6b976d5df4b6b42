"""The procedural sample catalogue: N realistic products (GLB assets + manifest) from a seed.

Products come in colourway families (2-5 colours of one shape), like a real shop's. Family f is
drawn from its own generator seeded by (seed, f), so the same seed always gives the same bytes,
and a catalogue of N products is a prefix of one of N + k with the same seed (same rows, same
bytes): the family plan is drawn before it is cut at N, and a family cut short is built whole
and truncated, so its first colourways are those of the uncut family.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from glassfinder.catalog.build import build_frame, export_glb
from glassfinder.catalog.design import FAMILIES, sample_colourways, sample_design
from glassfinder.catalog.manifest import write_manifest
from glassfinder.errors import BadInputError
from glassfinder.store.base import ObjectStore
from glassfinder.workers import exit_with_parent

log = logging.getLogger(__name__)

MANIFEST_KEY = "manifest.parquet"
ASSET_PREFIX = "assets/"


@dataclass(frozen=True)
class GenerateReport:
    products: int
    families: int
    bytes_written: int
    seconds: float
    manifest_key: str


def family_sizes(count: int, seed: int) -> list[int]:
    """Each family's drawn number of colourways, until they hold `count` products (the last
    family may hold more than the catalogue takes of it)."""
    rng = np.random.default_rng([seed, 0xFA])
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(int(rng.integers(2, 6)))
    return sizes


def family_plan(count: int, seed: int) -> list[tuple[int, int]]:
    """(family index, number of its colourways taken) until `count` products are planned."""
    plan, total = [], 0
    for f, n in enumerate(family_sizes(count, seed)):
        plan.append((f, min(n, count - total)))
        total += plan[-1][1]
    return plan


def build_family(
    seed: int, family_index: int, colourways: int, take: int | None = None
) -> list[tuple[dict[str, Any], bytes]]:
    """Manifest rows and GLB bytes of one colourway family of `colourways`, the first `take` of
    them only (a family cut at the catalogue's end: its colourways are still drawn as a whole)."""
    rng = np.random.default_rng([seed, family_index])
    family = FAMILIES[family_index % len(FAMILIES)]
    design = sample_design(rng, family)
    out = []
    drawn = sample_colourways(rng, design, colourways)
    for i, cw in enumerate(drawn[: len(drawn) if take is None else take]):
        glb = export_glb(build_frame(design, cw))
        pid = f"gf{seed}-{family_index:05d}-{i}"
        out.append(
            (
                {
                    "product_id": pid,
                    "asset_uri": f"{ASSET_PREFIX}{pid}.glb",
                    "asset_sha256": hashlib.sha256(glb).hexdigest(),
                    "kind": design.kind,
                    "lens_policy": "fixed" if design.kind == "sunglasses" else "palette",
                    "lens_style": cw.lens_style,
                    "lens_rgba": list(cw.lens_rgba),
                    "display_name": (
                        f"{family.title()} {design.material} "
                        f"{design.lens_width_mm:.0f}-{design.bridge_mm:.0f} in {cw.name}"
                    ),
                    "colour_name": cw.name,
                    "family_id": f"gf{seed}-{family_index:05d}",
                    "shape_family": family,
                    "rim": design.rim,
                    "material": design.material,
                    "bridge_style": design.bridge,
                    "lens_width_mm": design.lens_width_mm,
                    "lens_height_mm": design.lens_height_mm,
                    "bridge_mm": design.bridge_mm,
                    "temple_mm": design.temple_mm,
                },
                glb,
            )
        )
    return out


def _job(args: tuple[ObjectStore, int, int, int, int]) -> list[tuple[dict[str, Any], int]]:
    store, seed, family_index, drawn, take = args
    rows = []
    for row, glb in build_family(seed, family_index, drawn, take):
        store.put(row["asset_uri"], glb)
        rows.append((row, len(glb)))
    return rows


def iter_generate(
    store: ObjectStore, count: int, seed: int, *, workers: int | None = None
) -> Iterator[list[tuple[dict[str, Any], int]]]:
    """Build and upload every family, yielding each family's (row, size) pairs in order."""
    sizes = family_sizes(count, seed)
    jobs = [(store, seed, f, sizes[f], take) for f, take in family_plan(count, seed)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1:
        yield from map(_job, jobs)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.imap(_job, jobs, chunksize=4)


def generate_catalog(
    store: ObjectStore, count: int, seed: int, *, workers: int | None = None, progress: bool = False
) -> GenerateReport:
    """Write `count` products and `manifest.parquet` to `store`."""
    if count < 1:
        raise BadInputError(f"catalogue --count must be >= 1, got {count}")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    size = 0
    families = 0
    bar = None
    if progress:
        # tqdm (~50 ms): only for a progress bar, kept off the start-up of the spawned workers
        from tqdm import tqdm

        bar = tqdm(total=count, unit="asset", desc="generating")
    for family in iter_generate(store, count, seed, workers=workers):
        families += 1
        for row, n in family:
            rows.append(row)
            size += n
        if bar is not None:
            bar.update(len(family))
    if bar is not None:
        bar.close()
    write_manifest(store, MANIFEST_KEY, rows)
    seconds = time.perf_counter() - start
    log.info(
        "generated %d products in %d families (%.1f MB) in %.1f s", len(rows), families, size / 1e6, seconds
    )
    return GenerateReport(len(rows), families, size, seconds, MANIFEST_KEY)
