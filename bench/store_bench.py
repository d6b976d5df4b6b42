"""Object-store and feature-shard throughput: local directory vs a real SeaweedFS on loopback.

Prints put/get MB/s for 1 MiB and 256 MiB objects on both backends, then writes and reads a
feature shard of N x D float32 vectors (default 1,000,000 x 256) beside a raw numpy.save /
numpy.load of the same array, with the shard's speed as a ratio of numpy's (1.0 = as fast).
Figures depend on the disk and page cache: compare ratios, not absolute numbers, across machines.
Each figure is the best of its repeats, for numpy and the shard alike: on a shared machine the
median mixes in other jobs' bursts. Every timed write, numpy's and the shard's, goes to a new name:
shards are content-addressed and written once, and rewriting one name timed the filesystem freeing
the previous copy (0.11 s of a 0.41 s shard write at 500,000 x 256, in the rename).
The shard write is timed twice: writing the table, and
building it from Python lists first (what ViewColumns takes) plus writing it. On SeaweedFS the
shard is also compared with a plain put/get of as many bytes as the shard: the store's own ceiling,
which numpy on a local disk does not have to go through.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from glassfinder import layout
from glassfinder.store import LocalStore, ObjectStore, S3Config, S3Store
from glassfinder.store.seaweed import running_seaweedfs
from glassfinder.store.shards import ViewColumns, embeddings_of, feature_table, read_shard, write_shard

MIB = 1024 * 1024


def timed(fn: Callable[[], object], repeats: int, best: bool = False) -> float:
    """Median (or best) wall seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) if best else statistics.median(times)


def bench_objects(name: str, store: ObjectStore, sizes: list[tuple[int, int]]) -> None:
    for size, repeats in sizes:
        data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
        key = f"bench/{size}"
        put_s = timed(lambda d=data, k=key: store.put(k, io.BytesIO(d)), repeats)  # type: ignore[misc]
        get_s = timed(lambda k=key: store.get(k), repeats)  # type: ignore[misc]
        mb = size / MIB
        print(
            f"  {name:<10} {mb:>6.0f} MiB  put {mb / put_s:8.1f} MiB/s   get {mb / get_s:8.1f} MiB/s"
            f"   (median of {repeats})"
        )
        store.delete(key)


def views_for(n: int) -> ViewColumns:
    asset, spec = "a" * 64, "b" * 16
    faces = [f"head-{i:04d}" for i in range(1000)]
    return ViewColumns(
        view_key=[f"{asset}/{spec}/{faces[i % 1000]}/{i}" for i in range(n)],
        product_id=[f"p{i // 24:06d}" for i in range(n)],
        asset_sha256=[asset] * n,
        spec_hash=[spec] * n,
        face_id=[faces[i % 1000] for i in range(n)],
        view_index=np.arange(n, dtype=np.int32),
        pose_deg=np.zeros((n, 3), np.float32),
        lens_rgba=np.full((n, 4), 0.5, np.float32),
        lens_style=["tinted"] * n,
    )


def timed_fresh(write: Callable[[int], object], clean: Callable[[int], object], repeats: int) -> float:
    """Best wall seconds of `repeats` writes, each to a new name (`clean` removes it, untimed):
    shards are content-addressed and written once, so no write replaces a file of its size."""
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        write(i)
        times.append(time.perf_counter() - t)
        clean(i)
    return min(times)


def bench_shard(store: ObjectStore, name: str, n: int, dim: int, workdir: Path) -> None:
    emb = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    views = views_for(n)
    model = "c" * 16
    key = layout.feature_shard_key(model, "b" * 16, "a" * 64)
    vec_mib = emb.nbytes / MIB
    npy = workdir / "raw.npy"

    def npy_at(i: int) -> Path:
        return workdir / f"raw-{i}.npy"

    def np_save_durable(path: Path, array: np.ndarray) -> None:
        # The store fsyncs before it commits; give numpy the same durability to be fair.
        with open(path, "wb") as fh:
            np.save(fh, array)
            fh.flush()
            os.fsync(fh.fileno())

    def np_clean(i: int) -> None:
        npy_at(i).unlink()

    np_write = timed_fresh(lambda i: np_save_durable(npy_at(i), emb), np_clean, 3)
    np_save_durable(npy, emb)
    np_read = timed(lambda: np.load(npy), 3, best=True)
    table = feature_table(views, model_sha=model, embeddings=emb)

    def key_at(i: int) -> str:
        return layout.feature_shard_key(model, f"{i:016x}", "a" * 64)

    def shard_clean(i: int) -> None:
        store.delete(key_at(i))

    shard_write = timed_fresh(lambda i: write_shard(store, key_at(i), table, "feature"), shard_clean, 3)

    def build_and_write(i: int) -> None:
        write_shard(store, key_at(i), feature_table(views, model_sha=model, embeddings=emb), "feature")

    built_write = timed_fresh(build_and_write, shard_clean, 2)
    size = write_shard(store, key, table, "feature")
    # The shard also holds the view columns (ids, pose, lens): numpy writing as many bytes as the
    # shard separates the container's cost from the cost of those extra bytes.
    same_bytes = np.ones(size, np.uint8)
    np_write_same = timed_fresh(lambda i: np_save_durable(npy_at(i), same_bytes), np_clean, 3)
    got: list[np.ndarray] = []
    columns = ["view_key", "product_id", "asset_sha256", "embedding"]  # what the index build reads

    def read() -> None:
        got.clear()  # hold the last read only: numpy.load's results are dropped too
        got.append(embeddings_of(read_shard(store, key, "feature", dim=dim, columns=columns)))

    raw = ""
    if isinstance(store, LocalStore):
        shard_read = timed(read, 3, best=True)
    else:
        # As many bytes as the shard, each put to a new name as the shard's are: what the
        # server itself costs, which numpy on a local disk does not pay. Random, as vectors are:
        # the server stores and serves a run of equal bytes faster than the shard's.
        body, shard_mib = np.random.default_rng(2).bytes(size), size / MIB
        put_s = timed_fresh(
            lambda i: store.put(f"bench/raw-{i}", body), lambda i: store.delete(f"bench/raw-{i}"), 3
        )
        store.put("bench/raw", body)
        held: list[np.ndarray] = []

        def get_raw() -> None:
            held.clear()  # held like the shard read's result, so both pay for a second copy alike
            held.append(np.frombuffer(store.get("bench/raw"), np.uint8))

        # The shard's reads alternate with the plain gets, as many of each: the server's speed
        # drifts by 1.5x within a run (slower just after the writes above).
        get_times, read_times = [], []
        for _ in range(3):
            get_times.append(timed(get_raw, 1))
            read_times.append(timed(read, 1))
        get_s, shard_read = min(get_times), min(read_times)
        held.clear()
        store.delete("bench/raw")
        raw = (
            f"\n             vs a plain put/get of the shard's byte count ({shard_mib / put_s:.1f} / "
            f"{shard_mib / get_s:.1f} MiB/s): write {put_s / shard_write:.2f}, read {get_s / shard_read:.2f}"
        )
    assert np.array_equal(got[-1], emb)
    print(
        f"  {name:<10} {n:,} x {dim} float32 ({vec_mib:.0f} MiB of vectors, shard {size / MIB:.0f} MiB)\n"
        f"             write: shard {vec_mib / shard_write:8.1f} MiB/s"
        f"  numpy.save+fsync {vec_mib / np_write:8.1f} MiB/s  ratio {np_write / shard_write:.2f}"
        f"  (with building the table from lists: {np_write / built_write:.2f};"
        f" vs numpy writing the shard's byte count: {np_write_same / shard_write:.2f})\n"
        f"             read:  shard {vec_mib / shard_read:8.1f} MiB/s"
        f"  numpy.load {vec_mib / np_read:8.1f} MiB/s  ratio {np_read / shard_read:.2f}" + raw
    )
    store.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--big-mib", type=int, default=256, help="size of the large object")
    parser.add_argument("--no-s3", action="store_true", help="skip SeaweedFS")
    parser.add_argument("--s3-shard", action="store_true", help="also run the shard bench on SeaweedFS")
    args = parser.parse_args()
    sizes = [(1 * MIB, 20), (args.big_mib * MIB, 3)]

    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp:
        work = Path(tmp)
        local = LocalStore(work / "local")
        print("object put/get throughput")
        bench_objects("local", local, sizes)
        s3: S3Store | None = None
        if not args.no_s3:
            with running_seaweedfs(
                work / "seaweedfs", access_key="bench", secret_key=secrets.token_hex(16)
            ) as server:
                s3 = S3Store(
                    "gf-bench",
                    config=S3Config(
                        endpoint_url=server.endpoint_url,
                        region="us-east-1",
                        access_key_id=server.access_key,
                        secret_access_key=server.secret_key,
                    ),
                )
                s3.create_bucket()
                bench_objects("seaweedfs", s3, sizes)
                print("feature shard vs raw numpy (ratio = numpy time / shard time; 1.0 = as fast)")
                bench_shard(local, "local", args.vectors, args.dim, work)
                if args.s3_shard:
                    bench_shard(s3, "seaweedfs", args.vectors, args.dim, work)
        else:
            print("feature shard vs raw numpy (ratio = numpy time / shard time; 1.0 = as fast)")
            bench_shard(local, "local", args.vectors, args.dim, work)


if __name__ == "__main__":
    main()
