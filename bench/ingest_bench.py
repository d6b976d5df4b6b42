"""Careless-export ingest: a clean export vs the same export with 5% bad rows of every kind.

Builds `--products` products over `--assets` generated GLBs (reused across rows as different
products: generating thousands of GLBs on 2 cores takes too long, and with a destination store
each distinct file is normalised once anyway), then ingests, each in its own process (so peak
RSS is that ingest's own):

- clean: every row good;
- bad: 5% of rows bad (bad ids, duplicates, bad kind / lens cells, missing or outside assets,
  unparseable bytes, rows that are not objects) plus a 2M-triangle GLB (96 MB) among them.

Prints both times and their ratio, whether exactly the bad rows were quarantined, each run's
peak RSS, and the cost (time, RSS growth) of refusing the 2M-triangle asset on its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def separate_triangles_glb(n: int) -> bytes:
    """A GLB of `n` triangles sharing no vertex: 48 bytes a triangle (as in tests/test_careless_export.py)."""
    import struct

    positions = np.random.default_rng(0).uniform(-0.07, 0.07, (3 * n, 3)).astype(np.float32)
    indices = np.arange(3 * n, dtype=np.uint32)
    binary = positions.tobytes() + indices.tobytes()
    doc = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "frame"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": positions.nbytes},
                        {"buffer": 0, "byteOffset": positions.nbytes, "byteLength": indices.nbytes}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3 * n, "type": "VEC3",
                       "min": positions.min(0).tolist(), "max": positions.max(0).tolist()},
                      {"bufferView": 1, "componentType": 5125, "count": 3 * n, "type": "SCALAR"}],
    }  # fmt: skip
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (
        struct.pack("<4sII", b"glTF", 2, total)
        + struct.pack("<II", len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(binary), 0x004E4942)
        + binary
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(manifest: str, dest: str) -> None:
    """One ingest in this process: print its figures as JSON."""
    from glassfinder.catalog.ingest import ingest_manifest
    from glassfinder.store import LocalStore

    start = time.perf_counter()
    report = ingest_manifest(manifest, dest=LocalStore(dest))
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds, "accepted": len(report.accepted),
        "quarantined": sorted(q.row for q in report.quarantined if q.row is not None),
        "reasons": report.summary()["reasons"], "dropped": len(report.dropped),
        "peak_rss_mb": _peak_rss_mb(),
    }))  # fmt: skip


def refuse_child(path: str) -> None:
    """Refuse the big asset alone: time and RSS growth over holding its bytes."""
    from glassfinder.catalog.loader import load_asset
    from glassfinder.errors import AssetError

    data = Path(path).read_bytes()
    before = _peak_rss_mb()
    start = time.perf_counter()
    try:
        load_asset(data, "huge.glb")
        reason = "accepted?!"
    except AssetError as exc:
        reason = exc.reason
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {"seconds": seconds, "reason": reason, "rss_before_mb": before, "peak_rss_mb": _peak_rss_mb()}
        )
    )


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=False, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bad_rows(rows: list[dict], rng: np.random.Generator, share: float) -> tuple[list[dict], set[int]]:
    """Rows with `share` of them made bad, one kind after another; (rows, the bad rows' indices)."""
    kinds = [
        lambda r: {**r, "product_id": r["product_id"] + "/x"},
        lambda r: {**r, "product_id": "\u202e" + r["product_id"]},
        lambda r: {**r, "product_id": "x" * 300},
        lambda r: {**r, "kind": "goggles"},
        lambda r: {**r, "lens_rgba": "red"},
        lambda r: {**r, "asset_uri": "assets/nowhere.glb"},
        lambda r: {**r, "asset_uri": "/etc/passwd"},
        lambda r: {**r, "asset_uri": "assets/garbage.glb"},
        lambda r: {**r, "product_id": ""},
        lambda r: 42,  # not an object
    ]
    n_bad = int(len(rows) * share)
    bad = sorted(rng.choice(len(rows), n_bad, replace=False).tolist())
    out: list[Any] = list(rows)
    for k, i in enumerate(bad):
        out[i] = kinds[k % len(kinds)](rows[i])
    out[bad[-1]] = {**rows[bad[-1]], "asset_uri": "assets/huge.glb"}  # the 2M-triangle asset
    # Duplicates: a good row repeated later; the earlier copy is the one quarantined.
    dup_at = bad[: max(1, n_bad // 10)]
    for i in dup_at:
        out[i] = dict(rows[i + 1]) if i + 1 < len(rows) else out[i]
    return out, set(bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--products", type=int, default=3200)
    parser.add_argument("--assets", type=int, default=32)
    parser.add_argument("--triangles", type=int, default=2_000_000)
    parser.add_argument("--child", nargs=2, metavar=("MANIFEST", "DEST"))
    parser.add_argument("--refuse", metavar="GLB")
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.refuse:
        return refuse_child(args.refuse)

    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.store import LocalStore

    with tempfile.TemporaryDirectory(prefix="gf-ingestbench-") as tmp:
        root = Path(tmp) / "export"
        t0 = time.perf_counter()
        gen = generate_catalog(LocalStore(root), args.assets, 0, workers=2)
        names = sorted(p.name for p in (root / "assets").iterdir())
        print(f"generated {gen.products} assets in {time.perf_counter() - t0:.1f} s; reused across "
              f"{args.products} products")  # fmt: skip
        (root / "assets" / "garbage.glb").write_bytes(b"glTF\x02\x00\x00\x00 not a mesh")
        huge = separate_triangles_glb(args.triangles)
        (root / "assets" / "huge.glb").write_bytes(huge)
        rows = [
            {
                "product_id": f"P{i:05d}",
                "asset_uri": f"assets/{names[i % len(names)]}",
                "colour_name": "black",
            }
            for i in range(args.products)
        ]
        bad_rows, bad = _bad_rows(rows, np.random.default_rng(0), 0.05)
        (root / "clean.json").write_text(json.dumps(rows))
        (root / "bad.json").write_text(json.dumps(bad_rows))
        clean = _run("--child", str(root / "clean.json"), str(Path(tmp) / "dest-clean"))
        dirty = _run("--child", str(root / "bad.json"), str(Path(tmp) / "dest-bad"))
        refused = _run("--refuse", str(root / "assets" / "huge.glb"))
        exact = set(dirty["quarantined"]) == bad
        print(f"clean export: {args.products} rows, {clean['accepted']} accepted "
              f"in {clean['seconds']:.1f} s, peak RSS {clean['peak_rss_mb']:.0f} MB")  # fmt: skip
        print(f"5% bad rows:  {args.products} rows ({len(bad)} bad, one a {args.triangles:,}-triangle GLB of "
              f"{len(huge) / 1e6:.0f} MB), {dirty['accepted']} accepted, "
              f"{len(dirty['quarantined'])} quarantined "
              f"in {dirty['seconds']:.1f} s, peak RSS {dirty['peak_rss_mb']:.0f} MB")  # fmt: skip
        print(f"  reasons: {dirty['reasons']}")
        print(f"  quarantined exactly the bad rows: {exact}")
        print(f"time ratio bad/clean: {dirty['seconds'] / clean['seconds']:.2f}")
        print(f"refusing the {args.triangles:,}-triangle asset alone: {refused['seconds'] * 1000:.0f} ms "
              f"({refused['reason']}), peak RSS {refused['peak_rss_mb']:.0f} MB with its bytes held "
              f"({refused['rss_before_mb']:.0f} MB before the refusal)")  # fmt: skip


if __name__ == "__main__":
    main()
