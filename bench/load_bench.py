"""The search service under a crowd: a real `glassfinder serve` on loopback, 1/4/16/64 clients.

The index is bench/search_bench.py's: `--products` x `--views` seeded, family-clustered random
unit vectors of the packaged embedding model's dimension (exact search cost does not depend on
the values; rendering a 3,200-product gallery takes about an hour here). Uploads are the
astronaut's and Hopper's photos wearing rendered frames, as JPEG; in the second pass one
upload in ten is hostile instead (the 629-byte JPEG claiming 6324 x 6324 px, its whole twin, a
9000 x 9000 PNG, a truncated PNG). Each client sends one upload after another for `--seconds`
(each with a 15 s client timeout, waiting Retry-After after a 503) while /healthz is polled
every 100 ms and the server's RSS sampled. Per level it prints throughput, p50/p99 of
successful searches, 503s, other answers, /healthz p99 and the server's peak RSS.

    .venv/bin/python bench/load_bench.py [--products 3200] [--levels 1,4,16,64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_bench import build_world, pct


def hostile_uploads() -> list[tuple[str, bytes, str]]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "JPEG", quality=50)
    liar = bytearray(buf.getvalue())
    sof = liar.find(b"\xff\xc0")
    liar[sof + 5 : sof + 9] = struct.pack(">HH", 6324, 6324)
    png = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(png, "PNG", compress_level=9)
    face = io.BytesIO()
    Image.fromarray(np.zeros((600, 512, 3), np.uint8)).save(face, "PNG")
    return [
        ("liar.jpg", bytes(liar[:629]), "image/jpeg"),
        ("liar-whole.jpg", bytes(liar), "image/jpeg"),
        ("bomb.png", png.getvalue(), "image/png"),
        ("cut.png", face.getvalue()[:3000], "image/png"),
    ]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_level(url: str, pid: int, clients: int, seconds: float, uploads, hostile, share: float, seed: int):
    import httpx

    rng = np.random.default_rng(seed)
    plan_lock = threading.Lock()
    ok_ms: list[float] = []
    statuses: dict[int, int] = {}
    late = 0
    stop = time.monotonic() + seconds
    health_ms: list[float] = []
    peak = [rss_kib(pid)]

    def client(i: int) -> None:
        nonlocal late
        with httpx.Client(timeout=15) as c:
            while time.monotonic() < stop:
                with plan_lock:
                    bad = rng.random() < share
                    name, data, ctype = (
                        hostile[int(rng.integers(len(hostile)))]
                        if bad
                        else uploads[int(rng.integers(len(uploads)))]
                    )
                start = time.perf_counter()
                try:
                    r = c.post(f"{url}/search", files={"photo": (name, data, ctype)})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0  # no answer within 15 s (or the connection dropped)
                took = (time.perf_counter() - start) * 1000
                with plan_lock:
                    statuses[code] = statuses.get(code, 0) + 1
                    late += took > 15_000 or code == 0
                    if code == 200:
                        ok_ms.append(took)
                if code == 503:  # a well-behaved client honours Retry-After
                    time.sleep(float(r.headers.get("retry-after", "1")))

    def poll() -> None:
        with httpx.Client(timeout=15) as c:
            while time.monotonic() < stop:
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    c.get(f"{url}/healthz")
                health_ms.append((time.perf_counter() - start) * 1000)
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=poll))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "throughput": len(ok_ms) / wall,
        "p50": pct(ok_ms, 50) if ok_ms else float("nan"),
        "p99": pct(ok_ms, 99) if ok_ms else float("nan"),
        "ok": len(ok_ms),
        "s503": statuses.get(503, 0),
        "other": {k: v for k, v in sorted(statuses.items()) if k not in (200, 503)},
        "late": late,
        "health_p99": pct(health_ms, 99),
        "peak_mib": peak[0] / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=3200)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store, queries = build_world(Path(tmp), args.products, args.views, args.seed, "jpeg")
        uploads = [(f"q{i}.jpg", q, "image/jpeg") for i, q in enumerate(queries)]
        hostile = hostile_uploads()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        store_uri: str = store.uri  # type: ignore[attr-defined]
        cmd = [
            sys.executable, "-m", "glassfinder.cli", "serve", "--store", store_uri, "--port", str(port),
            "--workers", str(args.workers), "--reload-interval", "3600",
        ]  # fmt: skip
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=Path(__file__).parents[1])
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"serve exited: {(Path(tmp) / 'serve.log').read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            for name, data, ctype in uploads[:2]:  # warm-up
                httpx.post(f"{url}/search", files={"photo": (name, data, ctype)}, timeout=60)
            print(
                f"index: {args.products} products x {args.views} views of seeded random unit vectors "
                f"(the packaged embedding model's dimension; search cost does not depend on the values), "
                f"set up in {time.perf_counter() - t0:.0f} s; `glassfinder serve --workers {args.workers}` "
                f"(queue 8, wait 1 s) on loopback, {os.cpu_count()} cores; {args.seconds:g} s per level"
            )
            header = (
                f"{'clients':>7} {'hostile':>7} {'ok/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'ok':>5} "
                f"{'503':>5} {'late':>4} {'healthz p99':>11} {'peak RSS':>9}  other"
            )
            print(header)
            for share in (0.0, 0.1):
                for level in (int(x) for x in args.levels.split(",")):
                    r = run_level(
                        url, proc.pid, level, args.seconds, uploads, hostile, share, args.seed + level
                    )
                    print(
                        f"{level:>7} {share:>7.0%} {r['throughput']:>6.1f} {r['p50']:>7.0f} {r['p99']:>7.0f} "
                        f"{r['ok']:>5} {r['s503']:>5} {r['late']:>4} {r['health_p99']:>9.0f} ms "
                        f"{r['peak_mib']:>6.0f} MiB  {r['other']}",
                        flush=True,
                    )
            print(f"server peak RSS over the whole run (VmHWM): {rss_kib(proc.pid, 'VmHWM') / 1024:.0f} MiB")
            print("late: answers (or none) after the client's 15 s timeout")
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()


if __name__ == "__main__":
    main()
