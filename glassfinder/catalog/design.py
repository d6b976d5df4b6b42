"""What a frame is made of: the design parameters of one shape and its colourways.

A design fixes the geometry (shape family, sizes, rim, bridge, temples); a colourway fixes the
look (frame finish, lens). Shops sell one design in several colourways as separate products,
which is exactly what makes search hard, so the generator draws both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from glassfinder.catalog.shapes import FAMILIES

Rim = Literal["full", "half", "rimless"]
Material = Literal["acetate", "metal"]
Bridge = Literal["keyhole", "saddle", "double"]
Kind = Literal["optical", "sunglasses"]
Finish = Literal["solid", "translucent", "tortoise", "metal"]
LensStyle = Literal["clear", "tinted", "gradient", "mirrored"]


@dataclass(frozen=True)
class FrameDesign:
    """Geometry of one frame shape, in millimetres and degrees."""

    family: str
    kind: Kind
    rim: Rim
    material: Material
    bridge: Bridge
    lens_width_mm: float
    lens_height_mm: float
    bridge_mm: float
    temple_mm: float
    rim_width_mm: float  # in the lens plane
    rim_depth_mm: float  # front to back
    wrap_deg: float  # face-form angle of each lens
    bridge_height: float  # bridge centre above lens centre, as a fraction of lens height
    temple_drop_mm: float  # how far the temple tip bends down behind the ear
    shape: dict[str, float] = field(default_factory=dict)
    nose_pads: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Colourway:
    """The finish of one product: frame colour/pattern and its lens."""

    name: str
    finish: Finish
    frame_rgba: tuple[float, float, float, float]  # linear RGB, alpha < 1 for translucent acetate
    accent_rgba: tuple[float, float, float, float]  # tortoise spots / temple tips / hinges
    metal_rgba: tuple[float, float, float, float]  # hinges, pad arms, wire parts
    lens_style: LensStyle
    lens_rgba: tuple[float, float, float, float]
    pattern_seed: int


# Linear-RGB palettes (pyrender treats baseColorFactor as linear).
_ACETATE_SOLID = {
    "black": (0.01, 0.01, 0.012, 1.0),
    "navy": (0.01, 0.02, 0.08, 1.0),
    "burgundy": (0.18, 0.01, 0.02, 1.0),
    "olive": (0.08, 0.09, 0.03, 1.0),
    "ivory": (0.75, 0.68, 0.55, 1.0),
    "red": (0.55, 0.02, 0.02, 1.0),
    "grey": (0.12, 0.12, 0.12, 1.0),
    "bottle green": (0.01, 0.07, 0.03, 1.0),
}
_ACETATE_CRYSTAL = {
    "crystal clear": (0.85, 0.85, 0.85, 0.35),
    "crystal pink": (0.8, 0.35, 0.4, 0.45),
    "crystal grey": (0.25, 0.25, 0.27, 0.55),
    "crystal honey": (0.6, 0.3, 0.05, 0.5),
    "crystal blue": (0.15, 0.3, 0.6, 0.45),
}
_TORTOISE = {
    "dark havana": ((0.10, 0.035, 0.01, 1.0), (0.005, 0.003, 0.002, 1.0)),
    "blonde tortoise": ((0.45, 0.22, 0.05, 0.9), (0.12, 0.04, 0.01, 1.0)),
    "amber tortoise": ((0.35, 0.12, 0.02, 0.95), (0.05, 0.015, 0.005, 1.0)),
    "green tortoise": ((0.08, 0.12, 0.06, 1.0), (0.01, 0.02, 0.01, 1.0)),
}
_METAL = {
    "gold": (0.85, 0.6, 0.25, 1.0),
    "silver": (0.75, 0.75, 0.77, 1.0),
    "gunmetal": (0.18, 0.18, 0.2, 1.0),
    "matte black": (0.02, 0.02, 0.02, 1.0),
    "rose gold": (0.85, 0.5, 0.42, 1.0),
    "bronze": (0.4, 0.25, 0.12, 1.0),
}
_SUN_LENSES: dict[str, tuple[LensStyle, tuple[float, float, float, float]]] = {
    "G-15 green": ("tinted", (0.05, 0.09, 0.05, 0.85)),
    "grey": ("tinted", (0.04, 0.04, 0.045, 0.85)),
    "brown": ("tinted", (0.12, 0.05, 0.02, 0.82)),
    "brown gradient": ("gradient", (0.12, 0.05, 0.02, 0.85)),
    "grey gradient": ("gradient", (0.03, 0.03, 0.035, 0.85)),
    "blue mirror": ("mirrored", (0.1, 0.25, 0.7, 0.9)),
    "silver mirror": ("mirrored", (0.6, 0.6, 0.62, 0.9)),
    "rose": ("tinted", (0.45, 0.12, 0.12, 0.6)),
    "yellow": ("tinted", (0.6, 0.45, 0.02, 0.55)),
}
_CLEAR_LENS: tuple[LensStyle, tuple[float, float, float, float]] = ("clear", (0.9, 0.95, 1.0, 0.08))


def _rgba(c: tuple[float, ...]) -> tuple[float, float, float, float]:
    return (float(c[0]), float(c[1]), float(c[2]), float(c[3]))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_design(rng: np.random.Generator, family: str) -> FrameDesign:
    """Draw a plausible frame of `family` with real-world proportions."""
    kind: Kind = "sunglasses" if rng.random() < 0.4 else "optical"
    material: Material = (
        "metal" if rng.random() < (0.7 if family in ("aviator", "round", "geometric") else 0.3) else "acetate"
    )
    if family == "browline":
        material = "acetate"  # acetate brow over a metal lower rim
    rim_p = {"full": 0.7, "half": 0.18, "rimless": 0.12}
    if kind == "sunglasses" or family in ("browline", "wayfarer", "oversized"):
        rim_p = {"full": 0.92, "half": 0.08, "rimless": 0.0}
    rim: Rim = rng.choice(list(rim_p), p=list(rim_p.values()))
    if family == "browline":
        rim = "full"
    bridge: Bridge = (
        rng.choice(["keyhole", "saddle", "double"], p=[0.3, 0.45, 0.25])
        if material == "metal"
        else rng.choice(["keyhole", "saddle"], p=[0.4, 0.6])
    )
    if family == "aviator" and material == "metal":
        bridge = "double"
    ratios = {
        "round": (0.85, 1.0),
        "oval": (0.6, 0.75),
        "rectangle": (0.5, 0.65),
        "square": (0.85, 0.95),
        "cat-eye": (0.58, 0.72),
        "aviator": (0.8, 0.9),
        "browline": (0.62, 0.72),
        "geometric": (0.8, 0.92),
        "wayfarer": (0.68, 0.8),
        "oversized": (0.85, 0.95),
    }[family]
    width = _u(rng, 56, 62) if family == "oversized" else _u(rng, 44, 58)
    height = float(np.clip(width * _u(rng, *ratios), 26, 56))
    shape: dict[str, float] = {"fillet": _u(rng, 10, 20)}
    if family == "round":
        shape["n"] = _u(rng, 2.0, 2.2)
    elif family == "oval":
        shape["n"] = _u(rng, 2.0, 2.6)
    elif family in ("rectangle", "square"):
        shape["n"] = _u(rng, 3.5, 6.0)
    elif family == "browline":
        shape["n"] = _u(rng, 2.6, 3.4)
    elif family == "oversized":
        shape["n"] = _u(rng, 2.4, 3.6)
    elif family == "cat-eye":
        shape.update(n=_u(rng, 2.4, 3.4), lift=_u(rng, 0.6, 1.0), fillet=_u(rng, 8, 12))
    elif family == "aviator":
        shape.update(n=_u(rng, 2.2, 2.8), sag=_u(rng, 0.3, 0.6))
    elif family == "geometric":
        shape.update(sides=float(rng.choice([6, 8])), phase=_u(rng, 0, 0.4), fillet=_u(rng, 7, 11))
    elif family == "wayfarer":
        shape.update(n=_u(rng, 3.5, 5.0), taper=_u(rng, 0.08, 0.2))
    metal = material == "metal"
    return FrameDesign(
        family=family,
        kind=kind,
        rim=rim,
        material=material,
        bridge=bridge,
        lens_width_mm=round(width, 2),
        lens_height_mm=round(height, 2),
        bridge_mm=round(_u(rng, 14, 24), 2),
        temple_mm=round(_u(rng, 135, 150), 2),
        rim_width_mm=_u(rng, 1.2, 1.8) if metal else _u(rng, 3.5, 6.5),
        rim_depth_mm=_u(rng, 1.2, 1.8) if metal else _u(rng, 3.5, 5.5),
        wrap_deg=_u(rng, 6, 12) if kind == "sunglasses" else _u(rng, 2, 6),
        bridge_height=_u(rng, 0.1, 0.3),
        temple_drop_mm=_u(rng, 14, 24),
        shape=shape,
        nose_pads=metal or rim == "rimless" or rng.random() < 0.15,
    )


def sample_colourways(rng: np.random.Generator, design: FrameDesign, count: int) -> list[Colourway]:
    """`count` distinct colourways for `design` (2-5 in a real catalogue)."""
    options: list[tuple[str, Finish, tuple[float, ...], tuple[float, ...]]] = []
    if design.material == "metal":
        options += [(n, "metal", c, c) for n, c in _METAL.items()]
    else:
        options += [(n, "solid", c, c) for n, c in _ACETATE_SOLID.items()]
        options += [(n, "translucent", c, c) for n, c in _ACETATE_CRYSTAL.items()]
        options += [(n, "tortoise", base, spot) for n, (base, spot) in _TORTOISE.items()]
    picks = rng.choice(len(options), size=min(count, len(options)), replace=False)
    sun = list(_SUN_LENSES.items())
    sun_picks = rng.choice(len(sun), size=len(picks), replace=len(picks) > len(sun))
    hardware = list(_METAL.values())
    out = []
    for i, (pick, lens_pick) in enumerate(zip(picks, sun_picks, strict=True)):
        name, finish, frame, accent = options[int(pick)]
        lens_name, (style, lens) = (
            sun[int(lens_pick)] if design.kind == "sunglasses" else ("clear", _CLEAR_LENS)
        )
        metal = frame if finish == "metal" else hardware[int(rng.integers(len(hardware)))]
        out.append(
            Colourway(
                name=f"{name} / {lens_name}" if design.kind == "sunglasses" else name,
                finish=finish,
                frame_rgba=_rgba(frame),
                accent_rgba=_rgba(accent),
                metal_rgba=_rgba(metal),
                lens_style=style,
                lens_rgba=lens,
                pattern_seed=int(rng.integers(2**31)) + i,
            )
        )
    return out


__all__ = ["FAMILIES", "Colourway", "FrameDesign", "sample_colourways", "sample_design"]
