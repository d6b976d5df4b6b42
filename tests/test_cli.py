"""The `glassfinder` command: real subprocesses where the exit code and output are the contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glassfinder.cli import main
from glassfinder.store.seaweed import SeaweedServer
from tests.conftest import new_bucket_store

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def test_demo_runs_on_embedded_defaults(tmp_path: Path) -> None:
    """The README's main job: the DAGs through an embedded Airflow, then a search, on defaults.

    Asserted on what it produces (the store, the run records, its figures), not on its wording.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLASSFINDER_", "AIRFLOW"))}
    proc = subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", "demo"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[DAG TEST]" not in proc.stdout  # Airflow's own logging stays out of the way
    out_dir = tmp_path / ".glassfinder"
    store = out_dir / "store"
    report = json.loads((out_dir / "demo-report.json").read_text())

    # The shop's export, ingested whole; the pictures a person looks at.
    assert (store / "incoming" / "manifest.parquet").is_file()
    assert report["ingested"]["accepted"] == report["ingested"]["rows"] == 24
    assert len(list((store / "catalog" / "assets").glob("*.glb"))) == 24
    for picture in ("contact-sheet.png", "tryon-sheet.png", "query-wearing.png"):
        assert (out_dir / picture).stat().st_size > 10_000, picture
    assert not any(p.is_file() for p in (store / "tmp").rglob("*"))  # store check cleaned up

    # Three DAG runs, each with its records: training data (no training: the packaged model
    # serves the fresh store), the first night (publishes v1), a night with nothing to do.
    runs = report["runs"]
    assert {r["state"] for r in runs.values()} == {"success"}
    assert runs["training"]["summary"]["views_rendered"] == 24 * 6
    assert not (store / "models" / "glasses" / "CURRENT").exists()
    first, quiet = runs["nightly"]["summary"], runs["quiet_night"]["summary"]
    assert first["embedded"] == 24 and first["quarantined"] == 0
    assert first["index"]["published"] and first["index"]["version"] == 1
    assert quiet["rendered"] == quiet["embedded"] == 0 and not quiet["index"]["published"]
    assert json.loads((store / "indexes" / "catalog" / "CURRENT").read_text())["version"] == 1
    assert len(list((store / "renders").rglob("*.parquet"))) == 48  # catalogue + query views
    assert len(list((store / "features").rglob("*.arrow"))) == 24  # Arrow IPC feature shards
    assert len(list((store / "runs").glob("*/*/summary.json"))) == 3
    assert len(list((store / "runs").glob("*/*/metrics.json"))) == 3

    # Figures in range: the packaged model well above its ImageNet starting point and chance.
    models = report["model_vs_untrained"]["models"]
    assert models["packaged"]["closed_set"]["top1"] >= 0.5
    assert models["packaged"]["closed_set"]["top1"] > models["imagenet"]["closed_set"]["top1"] + 0.2
    assert report["search"]["top5"] >= 0.6 and report["search"]["shown"] == 3

    # The astronaut (a face no packaged model saw) wearing the first product finds it in the top
    # 3, with her eyes where they are. Her bare photo is searched or refused for want of glasses
    # (today searched: an open gap of issue #16), and either way said so.
    worn, bare = report["photo_searches"]
    assert worn["truth"] == "gf0-00000-0" and worn["rank"] is not None and worn["rank"] <= 3, worn
    (lx, ly), (rx, ry) = worn["eyes_xy"]
    assert lx > rx and abs(ly - ry) < 0.2 * (lx - rx)  # the subject's left eye on the image's right
    assert bare["truth"] is None and (bare["refused"] == "no_glasses" or bare["glasses_probability"] >= 0), (
        bare
    )


def test_store_commands_against_s3(seaweed: SeaweedServer, tmp_path: Path) -> None:
    store = new_bucket_store(seaweed)
    env = seaweed.env()
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello store")
    uri = f"s3://{store.bucket}/pre"
    put = run_cli("store", "put", "--store", uri, "a/f.bin", str(src), "--create-only", env=env)
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["size"] == 11
    again = run_cli("store", "put", "--store", uri, "a/f.bin", str(src), "--create-only", env=env)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"glassfinder: error: create-only write refused: 'a/f.bin' already exists in {uri}"
    ]
    ls = run_cli("store", "ls", "--store", uri, env=env)
    assert ls.stdout.split()[-1] == "a/f.bin"
    got = run_cli("store", "get", "--store", uri, "a/f.bin", env=env)
    assert got.stdout == "hello store"
    check = run_cli("store", "check", "--store", uri, env=env)
    assert check.returncode == 0 and "every check passed" in check.stdout


def test_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "head", "--store", str(tmp_path), "missing/key"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "object 'missing/key' not found" in err
    assert main(["store", "ls", "--store", "gs://bucket/x"]) == 1
    assert "unsupported store URI scheme 'gs'" in capsys.readouterr().err


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert len(ci) == 1, ci
    assert f"\n{ci[0]}\n" in readme
