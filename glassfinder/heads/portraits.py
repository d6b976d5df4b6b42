"""Real portraits for face analysis: labels, a person-level split, and colour both ways.

The portraits folder (official US Congress portraits, public domain; see its README) holds real
faces with and without real glasses, the only real glasses this project has. Every portrait is a
different person, so a split by file is a split by person. Within each label the ids are ordered
by a seeded hash and cut by fractions: every split holds the same share of glasses (with 132 pairs
of real glasses, chance alone would move the test split's count by +-5), and the same folder and
seed give the same split on any machine. Adding portraits moves the cut points, so a few portraits
near them change side: retrain and recalibrate together.

The portraits are grey and shoppers' uploads are mostly colour: `colour_swap` turns a grey photo
into a tinted colour one, and a colour one grey, so that neither colour nor its absence can decide
whether glasses are worn.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from glassfinder.errors import BadInputError
from glassfinder.face.decode import decode_image
from glassfinder.layout import portrait_bank_key
from glassfinder.store.base import ObjectStore

#: The project's corrections to the folder's labels (labels can be wrong; the folder is not ours
#: to edit): rows `id,glasses,lenses,confidence,why` that replace the folder's row for that id.
CORRECTIONS_PATH = Path(__file__).with_name("portrait_corrections.csv")
SPLIT_SEED = 3535
#: Shares of each label's portraits in (train, calibrate, test).
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLITS = ("train", "calibrate", "test")
LABEL_COLUMNS = ("id", "glasses", "lenses", "confidence")
GLASSES_VALUES = ("yes", "no", "forehead")


@dataclass(frozen=True)
class Portrait:
    """One labelled portrait. `worn`: glasses over the eyes (the `forehead` ones are bare eyes)."""

    id: str
    path: Path
    worn: bool
    glasses: str
    lenses: str


def _read_labels(path: Path) -> dict[str, dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BadInputError(f"{path}: expected columns {list(LABEL_COLUMNS)}, missing {missing}")
            rows = {row["id"]: row for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: cannot be read as a labels CSV ({exc})") from exc
    for pid, row in rows.items():
        if row["glasses"] not in GLASSES_VALUES or row["confidence"] not in ("sure", "unsure"):
            raise BadInputError(
                f"{path}: row {pid!r} has glasses={row['glasses']!r} confidence={row['confidence']!r}, "
                f"expected glasses in {GLASSES_VALUES} and confidence sure/unsure"
            )
    return rows


def load_portraits(root: Path, corrections: Path | None = CORRECTIONS_PATH) -> list[Portrait]:
    """The folder's sure portraits (`unsure` rows are left out of training and every figure),
    with the project's corrections applied, sorted by id."""
    labels = _read_labels(root / "labels.csv")
    if corrections is not None and corrections.exists():
        labels.update({k: v for k, v in _read_labels(corrections).items() if k in labels})
    out = []
    for pid, row in sorted(labels.items()):
        if row["confidence"] != "sure":
            continue
        path = root / "images" / f"{pid}.jpg"
        if not path.is_file():
            raise BadInputError(f"{root / 'labels.csv'}: row {pid!r} names {path}, which is not a file")
        out.append(Portrait(pid, path, row["glasses"] == "yes", row["glasses"], row.get("lenses") or ""))
    return out


def _rank(pid: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()


def split_portraits(portraits: list[Portrait], seed: int = SPLIT_SEED) -> dict[str, list[Portrait]]:
    """train / calibrate / test, stratified by label (worn or not), by a seeded hash of each id."""
    out: dict[str, list[Portrait]] = {name: [] for name in SPLITS}
    for worn in (True, False):
        group = sorted((p for p in portraits if p.worn == worn), key=lambda p: _rank(p.id, seed))
        cut1 = round(len(group) * SPLIT_FRACTIONS[0])
        cut2 = round(len(group) * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
        out["train"] += group[:cut1]
        out["calibrate"] += group[cut1:cut2]
        out["test"] += group[cut2:]
    return {name: sorted(group, key=lambda p: p.id) for name, group in out.items()}


def split_record(split: dict[str, list[Portrait]], seed: int = SPLIT_SEED) -> dict[str, object]:
    """What a model card records: the seed, and per split its ids and label counts."""
    return {
        "seed": seed,
        "fractions": list(SPLIT_FRACTIONS),
        "rule": "per label (glasses over the eyes or not), ids ordered by sha256(f'{seed}:{id}'), "
        "cut by fractions",
        **{
            name: {
                "worn": sum(p.worn for p in group),
                "bare": sum(not p.worn for p in group),
                "ids": [p.id for p in group],
            }
            for name, group in split.items()
        },
    }


def read_rgb(path: Path) -> np.ndarray:
    """(h, w, 3) uint8 of a portrait (the grey ones as three equal channels), through the one
    guarded decoder every photo goes through."""
    return decode_image(path.read_bytes(), path.name)


def is_grey(rgb: np.ndarray, tolerance: float = 2.0) -> bool:
    sample = rgb[::4, ::4].astype(np.int16)
    return float(np.abs(sample - sample.mean(axis=2, keepdims=True)).mean()) <= tolerance


def greyscale(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in all three channels (what a phone's mono filter or a scan gives)."""
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


#: Skin-ish tints (RGB multipliers at mid-grey) from pale to dark; a grey photo is tinted by one,
#: randomly shifted, and by a random white balance: a plausible colour photo, not a true one.
_SKIN_TINTS = np.array(
    [[1.12, 0.98, 0.86], [1.10, 0.94, 0.80], [1.16, 0.96, 0.78], [1.08, 0.92, 0.84], [1.18, 1.0, 0.90]],
    np.float32,
)


def colourise(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey photo in colour: a skin-like tint strongest in the mid-tones, a white balance cast."""
    g = grey[:, :, :1].astype(np.float32) / 255.0
    tint = _SKIN_TINTS[int(rng.integers(len(_SKIN_TINTS)))] * rng.uniform(0.95, 1.05, size=3)
    cast = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    mid = 4.0 * g * (1.0 - g)  # 0 at black and white, 1 at mid-grey: keep highlights and shadows neutral
    rgb = g * (1.0 + mid * (tint - 1.0)) * cast
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colour_swap(rgb: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """With probability `p`, a grey photo colourised or a colour photo turned grey; else as it is."""
    if rng.random() >= p:
        return rgb
    return colourise(rgb, rng) if is_grey(rgb) else greyscale(rgb)


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_photo_bank(portraits: list[Portrait], store: ObjectStore) -> list[str]:
    """Put the bare portraits among `portraits` into `store` as a photo bank (layout.PORTRAIT_BANK_PREFIX)
    that a render spec's `face_source: "photos:<store>/faces/portraits/"` renders frames onto: real
    faces of many ages around the frames, glasses composited over real eyes. Only bare ones: a
    real frame under a rendered one would teach the embedding two frames. Create-only, so a
    rerun keeps what is there. Returns the keys written."""
    written = []
    for portrait in portraits:
        if portrait.glasses != "no":
            continue
        key = portrait_bank_key(portrait.id)
        if store.exists(key):
            continue
        store.put(key, portrait.path.read_bytes(), create_only=True)
        written.append(key)
    return written
