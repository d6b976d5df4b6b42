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
    env = {k: v for k, v in os.environ.items() if k != "GLASSFINDER_STORE_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", "demo"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "compare-and-swap" in proc.stdout
    assert "ingested 24 of 24 (0 quarantined)" in proc.stdout
    store = tmp_path / ".glassfinder" / "store"
    assert len(list((store / "catalog" / "assets").glob("*.glb"))) == 24
    assert (store / "catalog" / "manifest.parquet").is_file()
    assert (tmp_path / ".glassfinder" / "contact-sheet.png").stat().st_size > 10_000
    assert "24 assets rendered (144 views)" in proc.stdout
    assert len(list((store / "renders").rglob("*.parquet"))) == 48  # catalogue + query views
    assert "train: model glasses@" in proc.stdout
    assert "embed: 24 feature shards (144 views)" in proc.stdout
    assert len(list((store / "features").rglob("*.parquet"))) == 24
    assert "closed-set top-1" in proc.stdout and "untrained" in proc.stdout
    assert (store / "models" / "glasses" / "CURRENT").is_file()
    assert (tmp_path / ".glassfinder" / "tryon-sheet.png").stat().st_size > 10_000
    assert not any(p.is_file() for p in (store / "tmp").rglob("*"))  # store check cleaned up


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
