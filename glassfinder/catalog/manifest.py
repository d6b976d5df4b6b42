"""The catalogue manifest: one row per product, its schema, and readers for Parquet, CSV and JSON.

Shops hand over manifests in whatever their PIM exports; `read_manifest_rows` accepts all three
and yields plain dicts, leaving each row's validation (and quarantine) to ingestion.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from glassfinder.errors import GlassFinderError
from glassfinder.store.base import ObjectStore

KINDS = ("optical", "sunglasses")
LENS_POLICIES = ("fixed", "palette")  # sunglasses keep their lens; optical frames get a palette

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("asset_uri", pa.string(), nullable=False),
        pa.field("asset_sha256", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("lens_policy", pa.string(), nullable=False),
        pa.field("lens_style", pa.string(), nullable=False),
        pa.field("lens_rgba", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("display_name", pa.string(), nullable=False),
        pa.field("colour_name", pa.string()),
        pa.field("family_id", pa.string()),  # products sharing a shape (colourways)
        pa.field("shape_family", pa.string()),
        pa.field("rim", pa.string()),
        pa.field("material", pa.string()),
        pa.field("bridge_style", pa.string()),
        pa.field("lens_width_mm", pa.float32()),
        pa.field("lens_height_mm", pa.float32()),
        pa.field("bridge_mm", pa.float32()),
        pa.field("temple_mm", pa.float32()),
    ]
)
REQUIRED_INPUT_COLUMNS = ("product_id", "asset_uri")


class ManifestError(GlassFinderError):
    """The manifest file as a whole cannot be read (a bad row is quarantined instead)."""


def manifest_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Parquet bytes of rows (dicts with MANIFEST_SCHEMA's fields): the same rows, the same bytes."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buf, compression="zstd")
    return buf.getvalue()


def write_manifest(store: ObjectStore, key: str, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with MANIFEST_SCHEMA's fields) as a Parquet manifest."""
    store.put(key, manifest_bytes(rows))


def read_manifest_rows(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    """Rows of a Parquet, CSV or JSON (array or JSON lines) manifest, as dicts."""
    data = store.get(key)
    where = f"{store.uri}/{key}"
    suffix = key.rsplit(".", 1)[-1].lower()
    try:
        if suffix == "parquet":
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        elif suffix == "csv":
            rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
        elif suffix in ("json", "jsonl"):
            text = data.decode("utf-8")
            parsed = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
            if not all(isinstance(r, dict) for r in parsed):
                raise ManifestError(f"manifest {where}: expected a JSON array of objects (or JSON lines)")
            rows = parsed
        else:
            raise ManifestError(
                f"manifest {where}: unknown format {suffix!r}, expected .parquet, .csv or .json"
            )
    except ManifestError:
        raise
    except (pa.ArrowException, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise ManifestError(f"manifest {where} cannot be parsed: {exc}") from exc
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in columns]
    if rows and missing:
        raise ManifestError(
            f"manifest {where}: missing required column(s) {missing}; found {sorted(columns)}"
        )
    return rows
