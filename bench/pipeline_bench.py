"""Wall time of the Airflow DAGs on a catalogue: the full nightly run, a night with no changes, and
onboarding one product, each as a ratio to the full run (aims: no-change <= 5%, onboarding <= 10%).

Runs the real DAGs with dag.test() on an embedded SQLite Airflow, against a local store (default)
or a SeaweedFS S3 server started on loopback (--s3). The embedding model is published untrained:
this measures the pipeline's work, not the model's accuracy (see bench/embed_eval_bench.py).
Per-task seconds come from the run-metrics records the plugin's listener writes.

    .venv/bin/python bench/pipeline_bench.py --products 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def target_store(use_s3: bool, root: Path) -> Iterator[str]:
    """A store URI: a local folder, or a bucket on a SeaweedFS started for the run."""
    if not use_s3:
        yield str(root / "store")
        return
    import os
    import secrets

    from glassfinder.store import S3Config, S3Store
    from glassfinder.store.seaweed import running_seaweedfs

    with running_seaweedfs(
        root / "seaweedfs", access_key="bench", secret_key=secrets.token_hex(16)
    ) as server:
        os.environ.update(server.env())
        config = S3Config(
            endpoint_url=server.endpoint_url,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
            region="us-east-1",
        )
        S3Store("glassfinder-bench", "", config=config).create_bucket()
        yield "s3://glassfinder-bench/catalog"


def task_seconds(store_uri: str, run: Any) -> dict[str, float]:
    """Seconds per task (mapped tasks summed over their map indexes) from the run's metrics record."""
    from glassfinder import layout
    from glassfinder.store import open_store

    metrics = json.loads(
        open_store(store_uri).get(layout.run_record_key(run.dag_id, run.run_id, "metrics.json"))
    )
    out: dict[str, float] = {}
    for t in metrics["tasks"]:
        out[t["task_id"]] = out.get(t["task_id"], 0.0) + (t["seconds"] or 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--assets-per-batch", type=int, default=32)
    parser.add_argument(
        "--s3", action="store_true", help="run against SeaweedFS on loopback instead of a folder"
    )
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gf-pipeline-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    from glassfinder import airflow_local

    airflow_local.configure(root / "airflow", log_level="ERROR")
    from glassfinder.catalog.generate import generate_catalog
    from glassfinder.catalog.manifest import read_manifest_rows, write_manifest
    from glassfinder.embed.model import ModelConfig, build_model
    from glassfinder.embed.registry import publish_model
    from glassfinder.store import LocalStore, open_store

    try:
        with target_store(args.s3, root) as store_uri:
            store = open_store(store_uri)
            t0 = time.perf_counter()
            sample = LocalStore(root / "sample")
            generate_catalog(sample, args.products + 1, args.seed)
            rows = read_manifest_rows(sample, "manifest.parquet")
            for row in rows:
                store.put(f"incoming/{row['asset_uri']}", sample.get(row["asset_uri"]))
            write_manifest(store, "incoming/manifest.parquet", rows[: args.products])
            publish_model(
                store, "glasses", build_model(ModelConfig(), seed=0).eval(), {"note": "untrained (bench)"}
            )
            print(
                f"set-up: {args.products} + 1 products generated and exported to {store_uri} "
                f"in {time.perf_counter() - t0:.0f} s (not timed below)"
            )

            conf = {"store": store_uri, "assets_per_batch": args.assets_per_batch}
            full = airflow_local.run_dag("glassfinder_catalog_reindex", conf, check=True)
            quiet = airflow_local.run_dag("glassfinder_catalog_reindex", conf, check=True)
            new = rows[args.products]
            product = {k: new[k] for k in ("product_id", "kind", "lens_style", "lens_rgba")}
            product["asset_uri"] = f"incoming/{new['asset_uri']}"
            onboard = airflow_local.run_dag(
                "glassfinder_product_onboarding", {**conf, "products": [product]}, check=True
            )

            s = full.summary
            print(
                f"\ncatalogue: {s['catalogue']['products']} products; full run: {s['rendered']} renders "
                f"({s['views_rendered']} views), {s['embedded']} feature shards, "
                f"index v{s['index']['version']} ({s['index']['vectors']} vectors)"
            )
            assert quiet.summary["rendered"] == 0 and quiet.summary["embedded"] == 0
            assert not quiet.summary["index"]["published"]
            assert (
                onboard.summary["index"]["published"]
                and onboard.summary["index"]["products"] == args.products + 1
            )
            print(f"{'run':<34} {'wall s':>8} {'/ full':>8}  aim")
            for label, run, aim in (
                ("full nightly re-index", full, None),
                ("nightly with no changes", quiet, 0.05),
                ("onboarding one product", onboard, 0.10),
            ):
                ratio = run.seconds / full.seconds
                verdict = "" if aim is None else f"<= {aim:.0%}: {'met' if ratio <= aim else 'MISSED'}"
                print(f"{label:<34} {run.seconds:>8.1f} {ratio:>8.3f}  {verdict}")
            print("\nseconds per task (mapped tasks summed over their batches):")
            per = {
                label: task_seconds(store_uri, run)
                for label, run in (("full", full), ("no change", quiet), ("onboard 1", onboard))
            }
            names = sorted({t for p in per.values() for t in p}, key=lambda t: -per["full"].get(t, 0))
            print(f"{'task':<16}" + "".join(f"{label:>12}" for label in per))
            for name in names:
                print(f"{name:<16}" + "".join(f"{per[label].get(name, 0.0):>12.1f}" for label in per))
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
