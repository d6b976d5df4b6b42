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

from glassfinder.catalog.columns import COLUMNS, KINDS, LENS_POLICIES, REQUIRED_INPUT_COLUMNS
from glassfinder.errors import ManifestError
from glassfinder.store.base import ObjectStore

__all__ = ["KINDS", "LENS_POLICIES", "MANIFEST_SCHEMA", "REQUIRED_INPUT_COLUMNS", "ManifestError"]

#: The manifest's columns, types and rules live in glassfinder.catalog.columns; the schema is theirs.
MANIFEST_SCHEMA = pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in COLUMNS])
#: Key of the one entry a manifest row that is not an object (a JSON number, a broken JSON line)
#: becomes, so that ingestion quarantines that row instead of refusing the whole manifest.
NOT_AN_OBJECT = "\x00not_an_object"


def manifest_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Parquet bytes of rows (dicts with MANIFEST_SCHEMA's fields): the same rows, the same bytes."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buf, compression="zstd")
    return buf.getvalue()


def write_manifest(store: ObjectStore, key: str, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with MANIFEST_SCHEMA's fields) as a Parquet manifest."""
    store.put(key, manifest_bytes(rows))


def read_manifest_rows(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    """Rows of a Parquet, CSV or JSON (array or JSON lines) manifest, as dicts.

    Text that is not UTF-8 is decoded with surrogate escapes, so a bad byte spoils only the cells
    it sits in (their columns' rules refuse them) instead of the whole export.
    """
    return parse_manifest(store.get(key), where=f"{store.uri}/{key}")


def parse_manifest(data: bytes, *, where: str) -> list[dict[str, Any]]:
    """Rows of manifest bytes; `where` (a URI or path) names the file and its suffix the format."""
    suffix = where.rsplit(".", 1)[-1].lower()
    try:
        if suffix == "parquet":
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        elif suffix == "csv":
            text = data.decode("utf-8-sig", errors="surrogateescape")
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        elif suffix in ("json", "jsonl"):
            text = data.decode("utf-8", errors="surrogateescape")
            if text.lstrip().startswith("["):
                parsed = json.loads(text)
                if not isinstance(parsed, list):
                    raise ManifestError(f"manifest {where}: expected a JSON array of objects (or JSON lines)")
                rows = [r if isinstance(r, dict) else {NOT_AN_OBJECT: r} for r in parsed]
            else:
                rows = [_json_line(line) for line in text.splitlines() if line.strip()]
                if rows and all(NOT_AN_OBJECT in r for r in rows):
                    json.loads(text)  # no line is an object: not JSON lines; say why it is not JSON
                    raise ManifestError(f"manifest {where}: expected a JSON array of objects (or JSON lines)")
        else:
            raise ManifestError(
                f"manifest {where}: unknown format {suffix!r}, expected .parquet, .csv or .json"
            )
    except ManifestError:
        raise
    except (pa.ArrowException, OSError, ValueError, RecursionError, csv.Error) as exc:
        raise ManifestError(f"manifest {where} cannot be parsed: {type(exc).__name__}: {exc}") from exc
    columns = {str(c) for r in rows for c in r if c is not None and c != NOT_AN_OBJECT}
    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in columns]
    if rows and missing:
        raise ManifestError(
            f"manifest {where}: missing required column(s) {missing}; found {sorted(columns)[:50]}"
        )
    return rows


def _json_line(line: str) -> dict[Any, Any]:
    """One JSON-lines row; a line that is not a JSON object becomes a row to quarantine."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return {NOT_AN_OBJECT: line}
    return value if isinstance(value, dict) else {NOT_AN_OBJECT: value}
