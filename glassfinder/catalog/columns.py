"""Every manifest column's one type and rule: what a cell must be, and what a bad cell costs.

A shop's export is typed by people and scripts, so any cell may hold anything (a number where a
name goes, "abc" for a width, a control character in an id). Each column below declares its
Arrow type (MANIFEST_SCHEMA is built from this table), whether a row needs it, its rule, and what
a bad cell does:

- `quarantine`: the row is refused with the column's reason code (the cell decides the product's
  identity or its pixels, so guessing would put a wrong product in the index);
- `drop`: the field is dropped (its default applies) and a warning names row, column, expected
  and got; the product goes on (display metadata only).

Hand-written rather than a validation library: the rules are a dozen short checks over plain
values, and the per-column drop-or-quarantine choice and the record fields (expected, got) are
what we need to report; pydantic would coerce ("1" -> 1.0, 1 -> "1") where we must refuse or
drop, and its errors would need translating back into this table anyway.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from glassfinder.errors import CellError

KINDS = ("optical", "sunglasses")
LENS_POLICIES = ("fixed", "palette")  # sunglasses keep their lens; optical frames get a palette
LENS_STYLES = ("clear", "tinted", "gradient", "mirrored")

#: Product ids: ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, at most
#: 64 characters, after Unicode NFKC normalisation and stripping surrounding whitespace. Safe in a
#: URL path, a file name, a log line and a terminal; case is kept (ids are case-sensitive).
PRODUCT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_PRODUCT_ID_RE = re.compile(PRODUCT_ID_PATTERN)
PRODUCT_ID_RULE = "1-64 characters A-Z a-z 0-9 . _ - starting with a letter or digit"
MAX_TEXT_CHARS = 200
MAX_URI_CHARS = 2048
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
#: Bidirectional controls (embeddings, overrides, isolates, marks): they make text display in
#: another order than it is stored, so a name could forge what an operator reads.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

OnBad = Literal["quarantine", "drop"]


# --- rules: a cell's raw value in, the normalised value out (or CellError) ----------------------
def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    expected = f"text of 1-{limit} characters without control or bidi characters"
    if not isinstance(value, str):
        raise CellError(expected)
    text = unicodedata.normalize("NFC", value).strip()
    if not 0 < len(text) <= limit or any(
        unicodedata.category(c) in ("Cc", "Cs", "Co") or c in _BIDI for c in text
    ):
        raise CellError(expected)
    return text


def product_id(value: Any) -> str:
    """The id rule (PRODUCT_ID_RULE); whole numbers are read as their digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str):
        raise CellError(PRODUCT_ID_RULE)
    text = unicodedata.normalize("NFKC", value).strip()
    if not _PRODUCT_ID_RE.match(text):
        raise CellError(PRODUCT_ID_RULE)
    return text


def asset_uri(value: Any) -> str:
    return _text(value, MAX_URI_CHARS)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise CellError(f"one of {', '.join(options)}")

    return check


def sha256_hex(value: Any) -> str:
    if isinstance(value, str) and _SHA_RE.match(value.strip().lower()):
        return value.strip().lower()
    raise CellError("64 hex digits")


def rgba(value: Any) -> list[float]:
    """Four numbers 0-1 (red, green, blue, alpha), as a list or a JSON array in text."""
    expected = "4 numbers between 0 and 1, as a list or a JSON array"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise CellError(expected) from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise CellError(expected)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise CellError(expected)
        out.append(float(v))
    return out


def millimetres(value: Any) -> float:
    """A measurement in mm: a number (or numeric text) above 0 and at most 300."""
    expected = "a number of millimetres above 0 and at most 300"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise CellError(expected) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CellError(expected)
    number = float(value)
    if not math.isfinite(number) or not 0.0 < number <= 300.0:
        raise CellError(expected)
    return number


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: pa.DataType
    check: Callable[[Any], Any]
    #: What a bad cell costs: the row (quarantine) or the field (drop, with a warning).
    on_bad: OnBad
    #: Whether the catalogue manifest (ingest's output) always has a value.
    nullable: bool = True
    #: Whether an input row without it is quarantined (with `missing_reason`).
    required: bool = False
    reason: str = "bad_field"
    missing_reason: str = ""
    note: str = ""


#: The table: MANIFEST_SCHEMA's fields in order. Kept in README.md ("Catalogue") too.
COLUMNS: tuple[Column, ...] = (
    Column("product_id", pa.string(), product_id, "quarantine", False, True, "bad_product_id",
           "missing_product_id", PRODUCT_ID_RULE),
    Column("asset_uri", pa.string(), asset_uri, "quarantine", False, True, "bad_uri", "missing_asset",
           "path or URI inside the allowed roots"),
    Column("asset_sha256", pa.string(), sha256_hex, "drop", False,
           note="recomputed by ingest from the normalised asset"),
    Column("kind", pa.string(), _choice(KINDS), "quarantine", False, note="default optical"),
    Column("lens_policy", pa.string(), _choice(LENS_POLICIES), "quarantine", False,
           note="default fixed for sunglasses, palette otherwise"),
    Column("lens_style", pa.string(), _choice(LENS_STYLES), "quarantine", False,
           note="default tinted for sunglasses, clear otherwise"),
    Column("lens_rgba", pa.list_(pa.float32(), 4), rgba, "quarantine", False, note="default by kind"),
    Column("display_name", pa.string(), _text, "drop", False, note="default the product id"),
    Column("colour_name", pa.string(), _text, "drop"),
    Column("family_id", pa.string(), _text, "drop", note="products sharing a shape (colourways)"),
    Column("shape_family", pa.string(), _text, "drop"),
    Column("rim", pa.string(), _text, "drop"),
    Column("material", pa.string(), _text, "drop"),
    Column("bridge_style", pa.string(), _text, "drop"),
    Column("lens_width_mm", pa.float32(), millimetres, "drop"),
    Column("lens_height_mm", pa.float32(), millimetres, "drop"),
    Column("bridge_mm", pa.float32(), millimetres, "drop"),
    Column("temple_mm", pa.float32(), millimetres, "drop"),
)  # fmt: skip
BY_NAME = {c.name: c for c in COLUMNS}
REQUIRED_INPUT_COLUMNS = tuple(c.name for c in COLUMNS if c.required)


def is_blank(value: Any) -> bool:
    """An absent cell: missing, null, empty or blank text, or a float NaN (a spreadsheet's empty)."""
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


@dataclass(frozen=True)
class CellProblem:
    """A cell that broke its column's rule (or a required cell that is missing)."""

    column: str
    reason: str
    expected: str
    got: Any


@dataclass
class CheckedRow:
    """One input row after its columns' rules: values (normalised; absent or dropped cells left
    out), the problems that refuse the row, and the fields dropped with a warning."""

    values: dict[str, Any] = field(default_factory=dict)
    refused: list[CellProblem] = field(default_factory=list)
    dropped: list[CellProblem] = field(default_factory=list)


def check_row(raw: dict[Any, Any]) -> CheckedRow:
    """Apply every column's rule to one input row; never raises for any cell content."""
    out = CheckedRow()
    for col in COLUMNS:
        value = raw.get(col.name)
        if is_blank(value):
            if col.required:
                out.refused.append(CellProblem(col.name, col.missing_reason, f"a value ({col.note})", value))
            continue
        try:
            out.values[col.name] = col.check(value)
        except CellError as exc:
            problem = CellProblem(col.name, col.reason, exc.expected, value)
            (out.refused if col.on_bad == "quarantine" else out.dropped).append(problem)
    return out


def complete(values: dict[str, Any]) -> dict[str, Any]:
    """A checked row with every MANIFEST_SCHEMA field, defaults filled in (kind decides them)."""
    kind = values.get("kind", "optical")
    sunglasses = kind == "sunglasses"
    row = {c.name: values.get(c.name) for c in COLUMNS}
    row["kind"] = kind
    row["lens_policy"] = values.get("lens_policy") or ("fixed" if sunglasses else "palette")
    row["lens_style"] = values.get("lens_style") or ("tinted" if sunglasses else "clear")
    row["lens_rgba"] = values.get("lens_rgba") or (
        [0.04, 0.04, 0.045, 0.85] if sunglasses else [0.9, 0.95, 1.0, 0.08]
    )
    row["display_name"] = values.get("display_name") or values["product_id"]
    return row
