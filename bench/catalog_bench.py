"""Catalogue throughput: procedural generation and load+normalise, in assets per second.

Generation is measured with 1 process and with every core; load+normalise runs the ingestion
loader (parse, validate, reorient, name parts, re-export) over the generated GLBs in one process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.loader import load_asset
from glassfinder.store import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="gf-catbench-") as tmp:
        print(f"procedural generation, {args.count} products")
        store = None
        for workers in sorted({1, cores}):
            store = LocalStore(Path(tmp) / f"w{workers}")
            report = generate_catalog(store, args.count, args.seed, workers=workers)
            print(
                f"  {workers} process(es): {report.products / report.seconds:7.1f} assets/s"
                f"  ({report.seconds:.1f} s, {report.bytes_written / report.products / 1e3:.0f} kB/asset)"
            )
        assert store is not None
        keys = [i.key for i in store.list("assets/")]
        blobs = [store.get(k) for k in keys]
        start = time.perf_counter()
        triangles = 0
        for key, blob in zip(keys, blobs, strict=True):
            triangles += load_asset(blob, key).triangles
        seconds = time.perf_counter() - start
        print(
            f"load + validate + normalise, 1 process: {len(keys) / seconds:7.1f} assets/s"
            f"  ({triangles / len(keys):,.0f} triangles/asset)"
        )


if __name__ == "__main__":
    main()
