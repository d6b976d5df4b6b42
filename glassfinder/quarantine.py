"""The one quarantine record every stage writes (ingest, render, embed, index), and its one reader.

Before this module each stage wrote its own shape (ingest rows, render dicts keyed by asset,
embed dicts keyed by shard, index log lines), so an operator had four formats to read and the
run summary had to guess which key named the product. Now every refusal is a `QuarantineRecord`
(product id, row, stage, reason code, field, expected, got, time, plus what was refused and a
message), stored as JSON where layout.py says, and read back by `read_quarantine`
(`glassfinder catalog quarantine` lists it).
"""

from __future__ import annotations

import dataclasses
import json
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from glassfinder import layout
from glassfinder.errors import CorruptStoreFileError, ObjectNotFoundError
from glassfinder.store.base import ObjectStore

Stage = Literal["ingest", "render", "embed", "index"]
STAGES: tuple[str, ...] = ("ingest", "render", "embed", "index")


def now_iso() -> str:
    """UTC time of a record, to the second (ISO 8601)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class QuarantineRecord:
    """Why one thing (a manifest row, an asset, a shard, a product) was refused by one stage.

    reason: a short stable code (bad_product_id, duplicate_id, unparseable, BadAssetError, ...).
    field/expected/got: for a bad cell, the column, what its rule wants and (a short repr of)
        what came; None when the refusal is not about one field.
    source: what was refused besides the product (asset URI, shard key, photo key).
    retry: True when the next run should try again (the store's fault, not the content's).
    """

    stage: str
    reason: str
    message: str = ""
    product_id: str | None = None
    row: int | None = None  # 0-based row of the input manifest (ingest only)
    field: str | None = None
    expected: str | None = None
    got: str | None = None
    source: str | None = None
    asset_sha256: str | None = None
    retry: bool | None = None
    at: str = dataclasses.field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, stage: str | None = None) -> QuarantineRecord:
        """A record from its JSON form, also from the shapes older runs wrote (`asset`, `shard`,
        `photo` for source; no stage; `products` for a known render failure)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        source = known.get("source") or data.get("asset") or data.get("shard") or data.get("photo")
        product = known.get("product_id")
        if product is None and isinstance(data.get("products"), list) and data["products"]:
            product = ",".join(str(p) for p in data["products"])
        return cls(
            **{
                **known,
                "stage": str(known.get("stage") or stage or "unknown"),
                "reason": str(known.get("reason") or "unknown"),
                "message": str(known.get("message") or ""),
                "product_id": None if product is None else str(product),
                "source": None if source is None else str(source),
                "at": str(known.get("at") or ""),
            }
        )


def short_repr(value: Any, limit: int = 80) -> str:
    """What came, for a record: repr (so control characters show escaped), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """`text` safe for one terminal line: control, format (bidi) and separator characters escaped,
    so an id or a message cannot forge other lines or reorder what an operator reads."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") else c
        for c in text
    )


def format_record(r: QuarantineRecord) -> str:
    """One line of `glassfinder catalog quarantine`."""
    parts = [r.at or "-", r.stage, r.reason, r.product_id or "-"]
    parts.append(f"row {r.row}" if r.row is not None else "-")
    if r.field:
        parts.append(f"{r.field}: expected {r.expected}, got {r.got}")
    parts.append(r.message or "")
    return printable("  ".join(parts))


def records_json(records: Iterable[QuarantineRecord]) -> bytes:
    return json.dumps([r.to_dict() for r in records], indent=2).encode()


# --- the one reader -----------------------------------------------------------------------------
def _load(store: ObjectStore, key: str) -> Any:
    try:
        return json.loads(store.get(key))
    except ObjectNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptStoreFileError(f"quarantine record {store.uri}/{key} is not JSON: {exc}") from None


def _records(data: Any, stage: str) -> Iterator[QuarantineRecord]:
    items = data.get("quarantine", []) if isinstance(data, dict) and "quarantine" in data else data
    if isinstance(items, dict):
        items = [items]
    for item in items or []:
        if isinstance(item, dict):
            yield QuarantineRecord.from_dict(item, stage=stage)


def read_quarantine(store: ObjectStore, stages: Iterable[str] = STAGES) -> list[QuarantineRecord]:
    """Every quarantine record in `store`, by stage: the last ingest's report, each render spec's
    and each embedding's per-asset records, each index's last publish."""
    wanted = set(stages)
    out: list[QuarantineRecord] = []
    if "ingest" in wanted:
        out += _records(_load(store, layout.CATALOG_QUARANTINE_KEY), "ingest")
    for stage, prefix, match in (
        ("render", layout.RENDERS_DIR, layout.is_render_quarantine_key),
        ("embed", layout.FEATURES_DIR, layout.is_feature_quarantine_key),
        ("index", layout.INDEXES_DIR, layout.is_index_quarantine_key),
    ):
        if stage not in wanted:
            continue
        for info in store.list(prefix):
            if match(info.key):
                out += _records(_load(store, info.key), stage)
    return out
