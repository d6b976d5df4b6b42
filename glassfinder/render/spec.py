"""The render spec: every knob that changes pixels, in one versioned object with a digest.

A view is fully determined by (asset sha256, spec hash, face id, view index): its random draws
come from a generator seeded with (spec seed, asset sha256, view index), so re-rendering gives
the same bytes, in any process, in any order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from glassfinder.errors import BadInputError, CorruptStoreFileError, FaultError, ObjectNotFoundError
from glassfinder.layout import render_spec_key
from glassfinder.store import open_object, open_store
from glassfinder.store.base import ObjectStore

SPEC_VERSION = 1
BACKGROUNDS = ("gradient", "noise", "texture")

#: face_source naming a photo bank by its key prefix in the store the renders are written to.
#: 'photos:<store URI>' names where a store lives (a local folder is this machine's path), and
#: the spec hash covers it; this form names none, so the same bank gives the same hash, and the
#: same renders, in any work folder on any machine.
OUTPUT_STORE_BANK = "photos:output-store:"

#: Lens colours for optical frames whose lenses the renderer chooses (linear RGB + opacity).
#: Gradient and patterned lenses come from the asset's own lens material, not from here.
DEFAULT_LENS_PALETTE: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("clear", (0.9, 0.95, 1.0, 0.08)),
    ("clear", (0.95, 0.95, 0.9, 0.12)),
    ("tinted", (0.05, 0.05, 0.055, 0.8)),
    ("tinted", (0.12, 0.05, 0.02, 0.75)),
    ("tinted", (0.05, 0.09, 0.05, 0.8)),
    ("tinted", (0.55, 0.4, 0.03, 0.45)),
    ("mirrored", (0.12, 0.25, 0.7, 0.88)),
)

#: What optical frames in shops and shoppers' photos mostly wear: clear lenses (6 of 9 draws),
#: with tints, a brown and a mirror as a share. The default palette (5 of 7 tinted) made most
#: optical views look like sunglasses.
OPTICAL_LENS_PALETTE: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("clear", (0.9, 0.95, 1.0, 0.06)),
    ("clear", (0.9, 0.95, 1.0, 0.1)),
    ("clear", (0.95, 0.95, 0.9, 0.08)),
    ("clear", (0.95, 0.95, 0.9, 0.12)),
    ("clear", (0.85, 0.92, 1.0, 0.15)),
    ("clear", (1.0, 0.97, 0.9, 0.05)),
    ("tinted", (0.05, 0.05, 0.055, 0.8)),
    ("tinted", (0.12, 0.05, 0.02, 0.6)),
    ("mirrored", (0.12, 0.25, 0.7, 0.88)),
)


class ContentAddressed:
    """What every spec that names stored pixels shares (the render spec, the packshot spec): one
    canonical JSON, its digest as the key's name, and a strict reader of its JSON form."""

    #: Fields added after a spec's first release: left out of the canonical JSON while they hold
    #: their default, so every spec written before them keeps its hash (and its stored renders).
    DIGEST_OMITS_AT_DEFAULT: tuple[str, ...] = ()

    def canonical_json(self) -> str:
        raw = asdict(self)  # type: ignore[call-overload]
        defaults = {f.name: f.default for f in fields(self)}  # type: ignore[arg-type]
        for name in self.DIGEST_OMITS_AT_DEFAULT:
            if raw[name] == defaults[name]:
                del raw[name]
        return json.dumps(raw, sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        """16 hex digits of sha256 over the canonical JSON: the spec's identity in store keys."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str, where: str = "spec") -> Any:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise BadInputError(f"{where} must be a JSON object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadInputError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: _tuples(v) for k, v in raw.items()})


@dataclass(frozen=True)
class RenderSpec(ContentAddressed):
    """Everything that decides a render's pixels. Ranges are (low, high), degrees or units."""

    image_px: int = 256
    views_per_asset: int = 8
    face_source: str = "procedural"  # or "photos:<store URI of a folder of photos>"
    face_first: int = 0  # identities face_first .. face_first + face_count - 1
    face_count: int = 1000
    yaw_deg: tuple[float, float] = (-35.0, 35.0)
    pitch_deg: tuple[float, float] = (-12.0, 12.0)
    roll_deg: tuple[float, float] = (-8.0, 8.0)
    pose_grid_deg: tuple[tuple[float, float, float], ...] = ()  # explicit (yaw, pitch, roll) per view
    lens_palette: tuple[tuple[str, tuple[float, float, float, float]], ...] = DEFAULT_LENS_PALETTE
    yfov_deg: tuple[float, float] = (16.0, 28.0)
    framing_m: tuple[float, float] = (0.24, 0.30)  # height of the scene the camera frames
    key_light: tuple[float, float] = (2.0, 4.5)
    fill_light: tuple[float, float] = (0.4, 1.4)
    ambient: tuple[float, float] = (0.15, 0.4)
    colour_temp_k: tuple[float, float] = (3500.0, 7500.0)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    fit_jitter: float = 0.0  # 0: textbook fit; 1: up to 6 mm down the nose and 4 degrees of tilt
    material_jitter: float = 0.0  # 0: the asset's own materials; 1: full draws (see MaterialDraw)
    #: Share of views whose frame colours are read as display sRGB (gamma 2.2, darker), as another
    #: pipeline (or an asset exported the other way) reads a glTF base colour; the rest as authored.
    srgb_reading_p: float = 0.0
    #: Photo faces only: store the glasses layer alone (premultiplied RGB + alpha, PNG), fitted
    #: and lit for the photo's face but not composited onto it, so training can put it onto a
    #: new face each time it draws the view (embed/composite.py).
    glasses_layer: bool = False
    image_format: str = "png"
    jpeg_quality: int = 92
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    DIGEST_OMITS_AT_DEFAULT = ("material_jitter", "glasses_layer", "srgb_reading_p")

    def __post_init__(self) -> None:
        if self.image_px < 32 or self.image_px > 2048:
            raise BadInputError(f"render spec image_px must be 32..2048, got {self.image_px}")
        if self.views_per_asset < 1:
            raise BadInputError(f"render spec views_per_asset must be >= 1, got {self.views_per_asset}")
        if self.face_source != "procedural" and not (
            self.face_source.startswith("photos:") and len(self.face_source) > len("photos:")
        ):
            raise BadInputError(
                "render spec face_source must be 'procedural', 'photos:<store URI>' or "
                f"'{OUTPUT_STORE_BANK}<key prefix>', got {self.face_source!r}"
            )
        if self.face_source.startswith(OUTPUT_STORE_BANK):
            _bank_prefix(self.face_source)
        bad = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad or not self.backgrounds:
            raise BadInputError(
                f"render spec backgrounds must be a non-empty subset of {BACKGROUNDS}, got {bad}"
            )
        if self.image_format not in ("png", "jpeg"):
            raise BadInputError(
                f"render spec image_format must be 'png' or 'jpeg', got {self.image_format!r}"
            )
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise BadInputError(f"render spec split_fractions must sum to 1, got {self.split_fractions}")
        if not 0.0 <= self.fit_jitter <= 1.0:
            raise BadInputError(f"render spec fit_jitter must be within 0..1, got {self.fit_jitter}")
        if not 0.0 <= self.material_jitter <= 1.0:
            raise BadInputError(
                f"render spec material_jitter must be within 0..1, got {self.material_jitter}"
            )
        if not 0.0 <= self.srgb_reading_p <= 1.0:
            raise BadInputError(f"render spec srgb_reading_p must be within 0..1, got {self.srgb_reading_p}")
        if self.glasses_layer and (self.face_source == "procedural" or self.image_format != "png"):
            raise BadInputError(
                "render spec glasses_layer needs face_source 'photos:<store URI>' and image_format "
                f"'png', got {self.face_source!r} and {self.image_format!r}"
            )

    @classmethod
    def from_json(cls, text: str, where: str = "render spec") -> RenderSpec:
        spec: RenderSpec = super().from_json(text, where)
        return spec


def _bank_prefix(face_source: str) -> str:
    """The key prefix of an OUTPUT_STORE_BANK face_source: relative, inside the store, a folder."""
    prefix = face_source.removeprefix(OUTPUT_STORE_BANK)
    parts = prefix.rstrip("/").split("/")
    if not prefix or prefix.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BadInputError(
            f"render spec face_source {face_source!r}: after '{OUTPUT_STORE_BANK}' expected a key "
            "prefix inside the output store such as 'faces/portraits/' (no leading '/', no '..')"
        )
    return prefix if prefix.endswith("/") else prefix + "/"


def photo_bank_location(face_source: str, out: ObjectStore) -> tuple[ObjectStore, str]:
    """(store, key prefix) of the photo bank a spec's face_source names; `out` is the store its
    renders are written to, which an OUTPUT_STORE_BANK bank lives in."""
    if face_source.startswith(OUTPUT_STORE_BANK):
        return out, _bank_prefix(face_source)
    if not face_source.startswith("photos:"):
        raise BadInputError(f"face_source {face_source!r} names no photo bank")
    return open_store(face_source.removeprefix("photos:")), ""


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


@dataclass(frozen=True)
class MaterialDraw:
    """How one view departs from the asset's own materials (domain randomisation of the training
    renders): the same frame under another reading of its colour, gloss and lenses, so a model
    learns the frame's shape and colour family rather than how our shader draws its material."""

    colour_gamma: float  # base colour ** gamma: > 1 reads it as display sRGB (darker), < 1 washes out
    colour_gain: float  # then scaled (exposure of the material, not of the light)
    roughness: float | None  # None keeps the asset's
    metallic_add: float  # added to the asset's metalness (clear coats read as faint metal)
    lens_opacity_scale: float  # tint strength of the lenses
    lens_reflect: float  # metalness of non-mirrored lenses: window reflections on clear lenses


def draw_material(rng: np.random.Generator, jitter: float) -> MaterialDraw:
    """A MaterialDraw at strength `jitter` (0..1); always the same number of draws from `rng`."""
    j = jitter
    gamma = float(np.exp(rng.uniform(np.log(1 / (1 + 0.5 * j)), np.log(1 + 1.2 * j))))
    gain = float(rng.uniform(1 - 0.35 * j, 1 + 0.25 * j))
    keep_roughness = bool(rng.random() >= 0.7 * j)
    roughness = float(rng.uniform(0.1, 0.9))
    return MaterialDraw(
        colour_gamma=gamma,
        colour_gain=gain,
        roughness=None if keep_roughness else roughness,
        metallic_add=float(rng.uniform(0, 0.35 * j)),
        lens_opacity_scale=float(rng.uniform(1 - 0.6 * j, 1 + 0.4 * j)),
        lens_reflect=float(rng.uniform(0, 0.5 * j)),
    )


#: The asset's own materials as a draw that changes nothing (what a view without one renders).
AS_AUTHORED = MaterialDraw(
    colour_gamma=1.0,
    colour_gain=1.0,
    roughness=None,
    metallic_add=0.0,
    lens_opacity_scale=1.0,
    lens_reflect=0.0,
)
#: The display gamma an sRGB reading of a linear base colour amounts to (MaterialDraw.colour_gamma).
SRGB_READING_GAMMA = 2.2


def read_as_srgb(draw: MaterialDraw | None) -> MaterialDraw:
    """`draw` (or the asset's own materials) with the frame colours read as display sRGB."""
    base = draw or AS_AUTHORED
    return replace(base, colour_gamma=base.colour_gamma * SRGB_READING_GAMMA)


@dataclass(frozen=True)
class ViewParams:
    """The random draws of one view (all derived from the spec, the asset and the index)."""

    view_index: int
    face_index: int
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    lens_style: str
    lens_rgba: tuple[float, float, float, float]
    yfov_deg: float
    framing_m: float
    key_light: float
    fill_light: float
    ambient: float
    colour_temp_k: float
    key_dir: tuple[float, float, float]
    background: str
    background_seed: int
    slide_m: float
    tilt_deg: float
    aim_offset: tuple[float, float]
    material: MaterialDraw | None = None  # None: the asset's own materials

    @property
    def face_id(self) -> str:
        return f"head-{self.face_index}"


def view_rng(spec: RenderSpec, asset_sha256: str, view_index: int) -> np.random.Generator:
    return np.random.default_rng(
        [spec.seed, int(asset_sha256[:16], 16), int(asset_sha256[16:32], 16), view_index]
    )


def plan_view(
    spec: RenderSpec, asset_sha256: str, view_index: int, *, fixed_lens: tuple[str, tuple[float, ...]] | None
) -> ViewParams:
    """The draws of view `view_index` of an asset; `fixed_lens` for products that keep theirs."""
    rng = view_rng(spec, asset_sha256, view_index)

    def u(r: tuple[float, float]) -> float:
        return float(rng.uniform(r[0], r[1]))

    if spec.pose_grid_deg:
        yaw, pitch, roll = spec.pose_grid_deg[view_index % len(spec.pose_grid_deg)]
        _ = rng.random(3)
    else:
        yaw, pitch, roll = u(spec.yaw_deg), u(spec.pitch_deg), u(spec.roll_deg)
    face_index = spec.face_first + int(rng.integers(spec.face_count))
    palette_pick = spec.lens_palette[int(rng.integers(len(spec.lens_palette)))]
    style, rgba = fixed_lens if fixed_lens is not None else palette_pick
    key_az, key_el = u((-60, 60)), u((10, 50))
    key_dir = (
        float(np.sin(np.radians(key_az)) * np.cos(np.radians(key_el))),
        float(np.sin(np.radians(key_el))),
        float(np.cos(np.radians(key_az)) * np.cos(np.radians(key_el))),
    )
    view = ViewParams(
        view_index=view_index,
        face_index=face_index,
        yaw_deg=float(yaw),
        pitch_deg=float(pitch),
        roll_deg=float(roll),
        lens_style=str(style),
        lens_rgba=(float(rgba[0]), float(rgba[1]), float(rgba[2]), float(rgba[3])),
        yfov_deg=u(spec.yfov_deg),
        framing_m=u(spec.framing_m),
        key_light=u(spec.key_light),
        fill_light=u(spec.fill_light),
        ambient=u(spec.ambient),
        colour_temp_k=u(spec.colour_temp_k),
        key_dir=key_dir,
        background=str(spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]),
        background_seed=int(rng.integers(2**31)),
        slide_m=u((0, 0.006)) * spec.fit_jitter,
        tilt_deg=u((-4, 4)) * spec.fit_jitter,
        aim_offset=(u((-0.01, 0.01)), u((-0.01, 0.01))),
        # Drawn last, and only when asked for: a spec without material jitter keeps every view.
        material=draw_material(rng, spec.material_jitter) if spec.material_jitter > 0 else None,
    )
    # After every other draw, and only when asked for, so other specs keep every view.
    if spec.srgb_reading_p > 0 and rng.random() < spec.srgb_reading_p:
        view = replace(view, material=read_as_srgb(view.material))
    return view


def split_of(spec: RenderSpec, product_id: str) -> str:
    """train / val / test for a product: fixed per product, so evaluation sees unseen frames."""
    h = int(hashlib.sha256(f"{spec.seed}:{product_id}".encode()).hexdigest()[:8], 16) / 2**32
    train, val, _ = spec.split_fractions
    return "train" if h < train else "val" if h < train + val else "test"


#: Named specs. 'catalog' renders the catalogue the index is built from; 'queries' renders the
#: held-out evaluation views (faces 900-999, never in the catalogue's range, and another seed, so
#: other poses and lens colours); 'default' is every knob at its default.
#: The catalogue presets render at 256 px framed a little tighter (0.20-0.26 m of scene), so the
#: model's 256x128 band reads native pixels (160-192 px renders were upsampled into the crop);
#: optical frames wear mostly clear lenses, as in photos.
CATALOG_FRAMING_M = (0.20, 0.26)
PRESETS: dict[str, RenderSpec] = {
    "default": RenderSpec(),
    "catalog": RenderSpec(
        image_px=256,
        views_per_asset=6,
        fit_jitter=0.5,
        framing_m=CATALOG_FRAMING_M,
        lens_palette=OPTICAL_LENS_PALETTE,
    ),
    "queries": RenderSpec(
        image_px=256,
        views_per_asset=1,
        face_first=900,
        face_count=100,
        fit_jitter=0.5,
        seed=1,
        framing_m=CATALOG_FRAMING_M,
        lens_palette=OPTICAL_LENS_PALETTE,
    ),
}


def load_saved_spec(store: ObjectStore, spec_hash: str) -> RenderSpec:
    """The spec saved under its hash (by a plan or a render job); checked against that hash."""
    spec = find_saved_spec(store, spec_hash)
    if spec is None:
        raise FaultError(f"render spec {spec_hash} is not in {store.uri}/{render_spec_key(spec_hash)}")
    return spec


def find_saved_spec(store: ObjectStore, spec_hash: str) -> RenderSpec | None:
    """The spec saved under its hash, or None where none was saved: for callers to whom a
    missing spec is the user's input (a spec named in params), not the store's fault."""
    key = render_spec_key(spec_hash)
    try:
        text = store.get(key).decode()
    except ObjectNotFoundError:
        return None
    spec = RenderSpec.from_json(text, where=f"{store.uri}/{key}")
    if spec.spec_hash != spec_hash:
        raise CorruptStoreFileError(f"{store.uri}/{key} holds spec {spec.spec_hash}, not {spec_hash}")
    return spec


def load_spec(arg: str) -> RenderSpec:
    """A spec from a preset name (see PRESETS), inline JSON, a local JSON file, or a store URI."""
    if arg in PRESETS:
        return PRESETS[arg]
    if arg.lstrip().startswith("{"):
        return RenderSpec.from_json(arg, where="inline render spec")
    path = Path(arg)
    if path.is_file():
        return RenderSpec.from_json(path.read_text(), where=f"render spec {arg}")
    if "://" not in arg:
        raise BadInputError(
            f"render spec {arg!r} not found: expected a preset {sorted(PRESETS)}, inline JSON, "
            "a JSON file or a store URI"
        )
    store, key = open_object(arg)
    return RenderSpec.from_json(store.get(key).decode(), where=f"render spec {arg}")
