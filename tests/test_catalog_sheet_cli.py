"""The catalogue commands end to end: generate, contact sheet (real renderer), validate, ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from glassfinder.catalog.generate import generate_catalog
from glassfinder.render.catalog_sheet import contact_sheet
from glassfinder.store import LocalStore
from glassfinder.store.seaweed import SeaweedServer
from tests.conftest import new_bucket_store

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def test_contact_sheet_shows_every_product(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    generate_catalog(store, 6, seed=4, workers=1)
    sheet = np.asarray(contact_sheet(store, "manifest.parquet", columns=3, tile_px=128))
    assert sheet.shape == (2 * (128 + 18), 3 * 256, 3)
    for r in range(2):
        for c in range(3):
            for view in range(2):  # front and three-quarter
                tile = sheet[r * 146 : r * 146 + 128, c * 256 + view * 128 : c * 256 + (view + 1) * 128]
                ink = (np.abs(tile.astype(int) - tile[0, 0].astype(int)).sum(axis=2) > 40).mean()
                assert 0.01 < ink < 0.6, (r, c, view, ink)  # a frame is drawn, not a blank or a blob


def test_generate_validate_ingest_through_s3(seaweed: SeaweedServer, tmp_path: Path) -> None:
    store = new_bucket_store(seaweed)
    env = seaweed.env()
    uri = f"s3://{store.bucket}/sample"
    gen = cli("catalog", "generate", "--count", "5", "--seed", "2", "--out", uri, "--workers", "1", env=env)
    assert gen.returncode == 0, gen.stderr
    assert "wrote 5 products" in gen.stdout
    assert len([i for i in store.list("sample/assets/")]) == 5
    val = cli("catalog", "validate", f"{uri}/manifest.parquet", env=env)
    assert val.returncode == 0, val.stderr
    assert "5 rows: 5 accepted, 0 quarantined" in val.stdout
    report = json.loads(store.get("sample/manifest.quarantine.json"))
    assert report["accepted"] == 5 and report["quarantine"] == []
    sheet = tmp_path / "sheet.png"
    out = cli("catalog", "sheet", f"{uri}/manifest.parquet", "--out", str(sheet), "--tile-px", "96", env=env)
    assert out.returncode == 0, out.stderr
    assert Image.open(sheet).size == (4 * 192, 2 * (96 + 18))
    ing = cli(
        "catalog", "ingest", f"{uri}/manifest.parquet", "--store", f"s3://{store.bucket}/pipeline", env=env
    )
    assert ing.returncode == 0, ing.stderr
    assert store.exists("pipeline/catalog/manifest.parquet")
    assert len(list(store.list("pipeline/catalog/assets/"))) == 5


def test_generate_refuses_bad_count(tmp_path: Path) -> None:
    out = cli("catalog", "generate", "--count", "0", "--out", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.strip() == "glassfinder: error: catalogue --count must be >= 1, got 0"
