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
    """The README's main job: the DAGs through an embedded Airflow, then a search, on defaults."""
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
    out = proc.stdout
    assert "compare-and-swap" in out
    assert "ingested 24 of 24 (0 quarantined)" in out
    store = tmp_path / ".glassfinder" / "store"
    assert (store / "incoming" / "manifest.parquet").is_file()  # the shop's export the nightly reads
    assert len(list((store / "catalog" / "assets").glob("*.glb"))) == 24
    assert (store / "catalog" / "manifest.parquet").is_file()
    assert (tmp_path / ".glassfinder" / "contact-sheet.png").stat().st_size > 10_000
    assert "glassfinder_training_data success" in out and "24 renders made (144 views)" in out
    # No training step: the packaged default model serves the fresh store.
    assert "model glasses@" in out and "packaged default, no training step" in out
    assert not (store / "models" / "glasses" / "CURRENT").exists()
    assert (
        "glassfinder_catalog_reindex success" in out
        and "24 embedded, 0 quarantined; published index v1" in out
    )
    assert len(list((store / "renders").rglob("*.parquet"))) == 48  # catalogue + query views
    assert len(list((store / "features").rglob("*.parquet"))) == 24
    assert json.loads((store / "indexes" / "catalog" / "CURRENT").read_text())["version"] == 1
    assert "the next night): glassfinder_catalog_reindex success" in out
    assert "0 renders made (0 views), 24 assets reused, 0 embedded" in out
    assert "index not published (unchanged; CURRENT v1)" in out
    assert "packaged   model, closed-set top-1" in out and "imagenet   model, closed-set top-1" in out
    # Three query views, the photo wearing a product, and the bare photo unless it is refused.
    assert out.count("; top 5: ") == 4 + ("query-bare.png (no glasses): not refused" in out)
    assert "presence: packaged glasses-presence model" in out
    # The astronaut (a face no packaged model saw) wearing the first product finds it (rank 3 of
    # 24 when measured); the bare photo is refused, or said to have got past the presence check.
    assert "search: query-wearing.png (wearing gf0-00000-0): gf0-00000-0 at rank" in out
    assert (
        "search: query-bare.png: refused (no_glasses)" in out
        or "search: query-bare.png (no glasses): not refused" in out
    )
    assert (tmp_path / ".glassfinder" / "query-wearing.png").stat().st_size > 10_000
    runs = list((store / "runs").glob("*/*/summary.json"))
    assert len(runs) == 3 and len(list((store / "runs").glob("*/*/metrics.json"))) == 3
    assert (tmp_path / ".glassfinder" / "tryon-sheet.png").stat().st_size > 10_000
    assert not any(p.is_file() for p in (store / "tmp").rglob("*"))  # store check cleaned up
    assert "[DAG TEST]" not in out  # Airflow's own logging stays out of the way


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
