"""Build the 3D asset of one product (design + colourway) as a trimesh scene in the convention.

Everything is modelled in millimetres in world coordinates, then scaled to metres. Rims,
bridges and temples are swept tubes along smooth curves; lenses are gently curved panels that
tuck into the rim groove; metal frames get hinges, pad arms and silicone nose pads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import trimesh
from PIL import Image

from glassfinder.catalog.convention import REQUIRED_PARTS, bridge_centre
from glassfinder.catalog.design import Colourway, FrameDesign
from glassfinder.catalog.shapes import lens_outline, offset_outline, outward_normals
from glassfinder.catalog.sweep import frame_axes, profile_superellipse, sweep

PBR = trimesh.visual.material.PBRMaterial


def _linear_to_srgb8(rgb: np.ndarray) -> np.ndarray:
    c = np.clip(rgb, 0, 1)
    s = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return (s * 255 + 0.5).astype(np.uint8)


def tortoise_texture(
    seed: int, base: tuple[float, ...], spot: tuple[float, ...], size: int = 256
) -> Image.Image:
    """A tortoiseshell-like RGBA texture: soft dark blotches and amber streaks over `base`."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)
    fx, fy = np.meshgrid(freq, freq * 2.5)  # streaks stretched along the rim
    field = np.zeros((size, size))
    for sigma, weight in ((0.02, 1.0), (0.06, 0.35)):
        noise = rng.standard_normal((size, size))
        blur = np.exp(-0.5 * (fx**2 + fy**2) / sigma**2)
        field += weight * np.real(np.fft.ifft2(np.fft.fft2(noise) * blur))
    field = (field - field.mean()) / field.std()
    spots = 1 / (1 + np.exp(-(field - 0.3) * 4.0))  # 0 = base, 1 = dark blotch
    glow = np.clip(1 - np.abs(field + 0.9) * 1.5, 0, 1) * 0.5  # amber rim around blotches
    b, s = np.asarray(base, float), np.asarray(spot, float)
    amber = np.array([0.55, 0.25, 0.04, b[3]])
    rgba = b * (1 - spots[..., None]) + s * spots[..., None]
    rgba = rgba * (1 - glow[..., None]) + amber * glow[..., None]
    out = np.concatenate(
        [_linear_to_srgb8(rgba[..., :3]), (np.clip(rgba[..., 3:], 0, 1) * 255).astype(np.uint8)], axis=2
    )
    return Image.fromarray(out, "RGBA")


def gradient_texture(height: int = 64) -> Image.Image:
    """White RGBA with opacity falling from the top (1.0) to the bottom (0.2): gradient lenses."""
    alpha = np.linspace(1.0, 0.2, height) ** 1.3
    arr = np.full((height, 4, 4), 255, np.uint8)
    arr[:, :, 3] = (alpha[:, None] * 255).astype(np.uint8)
    return Image.fromarray(arr, "RGBA")


def _material(
    name: str,
    rgba: tuple[float, ...],
    *,
    metal: float = 0.0,
    rough: float = 0.3,
    texture: Image.Image | None = None,
    double: bool = False,
) -> PBR:
    blend = rgba[3] < 0.999 or (texture is not None and np.asarray(texture)[..., 3].min() < 255)
    return PBR(
        name=name,
        baseColorFactor=[float(c) for c in rgba],
        metallicFactor=metal,
        roughnessFactor=rough,
        baseColorTexture=texture,
        alphaMode="BLEND" if blend else "OPAQUE",
        doubleSided=double or blend,
    )


class _Side:
    """Maps lens-local 2D points (mm, +x outwards) to world 3D for one side (+1 left, -1 right).

    Every part attached to a lens is placed through this, so all of them follow the lens's wrap
    (face-form angle) and the mirroring between the two sides.
    """

    def __init__(self, design: FrameDesign, sign: int) -> None:
        self.sign = sign
        self.inner_x = design.bridge_mm / 2  # the lens's inner (nose-side) edge
        self.centre_x = design.bridge_mm / 2 + design.lens_width_mm / 2
        self.centre_y = -design.bridge_height * design.lens_height_mm  # the bridge is at y = 0
        self.wrap_rad = np.radians(design.wrap_deg)

    def __call__(self, points: np.ndarray, z: np.ndarray | float = 0.0) -> np.ndarray:
        outward = self.centre_x + points[:, 0] - self.inner_x  # distance from the inner edge
        x = self.inner_x + outward * np.cos(self.wrap_rad) + np.asarray(z) * np.sin(self.wrap_rad)
        depth = -outward * np.sin(self.wrap_rad) + np.asarray(z) * np.cos(self.wrap_rad)
        return np.stack([self.sign * x, self.centre_y + points[:, 1], depth], axis=1)


#: A tube's path: centre points (n, 3) with, per point, its outward axis and its front axis.
_Track = tuple[np.ndarray, np.ndarray, np.ndarray]


def _lens_panel(outline: np.ndarray, side: _Side, bulge_mm: float, rings: int = 6) -> trimesh.Trimesh:
    """A gently curved lens panel (double-sided) with UVs over its bounding box."""
    k = len(outline)
    scales = np.linspace(0, 1, rings + 1)[1:]
    pts2 = np.vstack([[0.0, 0.0], *(outline * s for s in scales)])
    r2 = np.concatenate([[0.0], np.repeat(scales**2, k)])
    verts = side(pts2, z=bulge_mm * (1 - r2))
    faces = [[0, 1 + (j + 1) % k, 1 + j] for j in range(k)]
    for ring in range(rings - 1):
        a, b = 1 + ring * k, 1 + (ring + 1) * k
        for j in range(k):
            j2 = (j + 1) % k
            faces += [[a + j, a + j2, b + j], [a + j2, b + j2, b + j]]
    faces_arr = np.asarray(faces)
    if side.sign < 0:  # mirrored side: keep the front face towards +Z
        faces_arr = faces_arr[:, ::-1]
    lo, hi = outline.min(0), outline.max(0)
    uv = np.stack([(pts2[:, 0] - lo[0]) / (hi[0] - lo[0]), 1 - (pts2[:, 1] - lo[1]) / (hi[1] - lo[1])], 1)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces_arr, process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv)
    return mesh


def _along_outline(outline: np.ndarray, side: _Side, offset_mm: float) -> _Track:
    """Centre, outward axis and front axis of a tube running `offset_mm` outside the outline."""
    centre2 = offset_outline(outline, offset_mm)
    centre = side(centre2)
    u = side(centre2 + outward_normals(outline)) - centre
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = side(centre2, z=1.0) - centre
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return centre, u, v


def _arc_indices(outline: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Indices of the longest contiguous run (cyclically) where `keep` is true."""
    n = len(keep)
    if keep.all():
        return np.arange(n)
    start = int(np.argmin(keep))  # a False position: runs start after it
    order = (np.arange(n) + start) % n
    best: list[int] = []
    run: list[int] = []
    for i in order:
        if keep[i]:
            run.append(int(i))
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    return np.asarray(best)


def _bezier(points: np.ndarray, count: int) -> np.ndarray:
    t = np.linspace(0, 1, count)[:, None]
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _ellipsoid(centre: np.ndarray, radii: tuple[float, float, float], yaw: float) -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    sphere.apply_scale(radii)
    sphere.apply_transform(trimesh.transformations.rotation_matrix(yaw, [0, 1, 0]))
    sphere.apply_translation(centre)
    return sphere


class _Part(NamedTuple):
    """One mesh of the asset and the scene node it belongs to (a convention role, e.g. "frame")."""

    node: str
    mesh: trimesh.Trimesh
    material: PBR


@dataclass(frozen=True)
class _Materials:
    """The materials of one colourway, made once so that every part of the same kind shares one."""

    frame: PBR
    hardware: PBR  # hinges, pad arms, the browline's lower wire
    lens: PBR
    temple_tip: PBR
    nose_pad: PBR
    nylon: PBR  # the cord that holds a half-rim lens from below
    temple_wire: PBR  # a metal temple: frame-coloured on a metal finish, else the hardware's colour


#: The two sides in build order (the subject's left is +X); the order fixes the GLB's bytes.
_SIDES = (("left", 1), ("right", -1))


def build_frame(design: FrameDesign, colourway: Colourway) -> trimesh.Scene:
    """The asset of one product, in metres, following glassfinder.catalog.convention.

    Parts are made in a fixed order (each side's lens, rim, endpiece and nose pad, then the
    bridge, then the temples) because node and mesh order end up in the GLB: the catalogue
    promises the same bytes for the same seed, and its manifest records their hashes.
    """
    outline = lens_outline(design.family, design.lens_width_mm, design.lens_height_mm, design.shape)
    materials = _materials(colourway)
    parts: list[_Part] = []
    hinge_points: dict[str, np.ndarray] = {}
    for side_name, sign in _SIDES:
        side = _Side(design, sign)
        parts += _lens(design, outline, side, f"lens_{side_name}", materials.lens)
        parts += _rim(design, outline, side, materials)
        endpiece = _endpiece_path(design, outline, side)
        parts.append(_Part("frame", _endpiece(design, endpiece), materials.frame))
        parts.append(_Part("frame.hinge", _hinge(endpiece[-1], sign), materials.hardware))
        hinge_points[side_name] = endpiece[-1]
        if design.nose_pads:
            parts += _nose_pad(design, outline, side, materials)
    parts.append(_Part("frame", _bridge(design, outline), materials.frame))
    if design.bridge == "double":
        parts.append(_Part("frame", _top_bar(design, outline), materials.frame))
    for side_name, sign in _SIDES:
        path = _temple_path(design, hinge_points[side_name], sign)
        parts += _temple(design, path, f"temple_{side_name}", materials)
    return _assemble_scene(parts)


def _materials(colourway: Colourway) -> _Materials:
    """Everything a colourway changes is decided here; the geometry reads only the design, so the
    colourways of one design share their shape exactly.

    Ear tips take the accent colour on acetate frames; on metal ones they are black plastic.
    """
    frame = _frame_material(colourway)
    hardware = _material("hardware", colourway.metal_rgba, metal=1.0, rough=0.25)
    tip_rgba = colourway.accent_rgba if colourway.finish != "metal" else (0.02, 0.02, 0.02, 1.0)
    return _Materials(
        frame=frame,
        hardware=hardware,
        lens=_lens_material(colourway),
        temple_tip=_material("temple_tip", tip_rgba, rough=0.35),
        nose_pad=_material("nose_pad", (0.8, 0.82, 0.8, 0.55), rough=0.3, double=True),
        nylon=_material("nylon", (0.05, 0.05, 0.05, 0.6), rough=0.4),
        temple_wire=hardware if colourway.finish != "metal" else frame,
    )


def _frame_material(colourway: Colourway) -> PBR:
    """Metal frames are plain metal; acetate is glossy, and tortoise gets its pattern as a texture.

    A tortoise texture already carries the colours, so its factor is white: a coloured factor
    would tint the pattern a second time.
    """
    if colourway.finish == "metal":
        return _material("frame", colourway.frame_rgba, metal=1.0, rough=0.28)
    texture = None
    if colourway.finish == "tortoise":
        texture = tortoise_texture(colourway.pattern_seed, colourway.frame_rgba, colourway.accent_rgba)
    material = _material("frame", colourway.frame_rgba, rough=0.18, texture=texture)
    if colourway.finish == "tortoise":
        material.baseColorFactor = [1.0, 1.0, 1.0, 1.0]
    return material


def _lens_material(colourway: Colourway) -> PBR:
    """Lenses always blend and are double-sided, as the convention asks, whatever their alpha.

    Mirrored lenses are metallic so they reflect; gradient lenses fade out towards the bottom.
    """
    lens = _material(
        "lens",
        colourway.lens_rgba,
        metal=0.85 if colourway.lens_style == "mirrored" else 0.0,
        rough=0.08 if colourway.lens_style == "mirrored" else 0.04,
        texture=gradient_texture() if colourway.lens_style == "gradient" else None,
        double=True,
    )
    lens.alphaMode = "BLEND"
    lens.doubleSided = True
    return lens


def _groove_mm(design: FrameDesign) -> float:
    """How far a lens reaches into its rim: enough that no gap shows between lens and rim."""
    return design.rim_width_mm * 0.3


def _wire_profile(design: FrameDesign) -> np.ndarray:
    """Round wire the rim's size: the cross-section of metal rims and of the double bridge's bar."""
    return profile_superellipse(design.rim_width_mm, design.rim_depth_mm, n=2.0, points=14)


def _rim_profile(design: FrameDesign) -> np.ndarray:
    """Metal rims are round wire; acetate rims are the rounded-rectangle band cut from a sheet."""
    if design.material == "metal":
        return _wire_profile(design)
    return profile_superellipse(design.rim_width_mm, design.rim_depth_mm, n=4.0)


def _rim_track(design: FrameDesign, outline: np.ndarray, side: _Side) -> _Track:
    """Where the rim tube runs: its centre sits outside the lens edge, less the groove it covers."""
    return _along_outline(outline, side, design.rim_width_mm / 2 - _groove_mm(design))


def _point_outside(outline: np.ndarray, side: _Side, index: int, offset_mm: float) -> np.ndarray:
    """World position (mm) of outline point `index` moved `offset_mm` outwards: where parts attach."""
    return side(offset_outline(outline, offset_mm)[index : index + 1])[0]


def _lens(design: FrameDesign, outline: np.ndarray, side: _Side, node: str, material: PBR) -> list[_Part]:
    """The lens, curved more for sunglasses (base-curve lenses) and tucked into the rim groove.

    A rimless lens has no rim to hide its edge, so it gets a thin visible edge band instead.
    """
    bulge = 2.2 if design.kind == "sunglasses" else 1.2
    panel_outline = offset_outline(outline, _groove_mm(design) if design.rim != "rimless" else 0.0)
    parts = [_Part(node, _lens_panel(panel_outline, side, bulge), material)]
    if design.rim == "rimless":
        centre, u, v = _along_outline(outline, side, 0.0)
        edge = sweep(centre, u, v, profile_superellipse(0.6, 2.0, n=6), closed=True)
        parts.append(_Part(node, edge, material))
    return parts


def _rim(design: FrameDesign, outline: np.ndarray, side: _Side, materials: _Materials) -> list[_Part]:
    """The rim around one lens: all the way round, over the top (half rims, browlines) or none."""
    if design.family == "browline":
        return _browline_rim(design, outline, side, materials)
    if design.rim == "full":
        centre, u, v = _rim_track(design, outline, side)
        return [_Part("frame", sweep(centre, u, v, _rim_profile(design), closed=True), materials.frame)]
    if design.rim == "half":
        return _half_rim(design, outline, side, materials)
    return []


def _browline_rim(
    design: FrameDesign, outline: np.ndarray, side: _Side, materials: _Materials
) -> list[_Part]:
    """A heavy acetate brow over the top of the lens and a thin metal wire all the way round.

    The brow is what makes a browline recognisable, so it is wider and deeper than the rim.
    """
    centre, u, v = _rim_track(design, outline, side)
    brow = _arc_indices(outline, outline[:, 1] > 0.05 * design.lens_height_mm)
    brow_profile = profile_superellipse(design.rim_width_mm * 1.5, design.rim_depth_mm * 1.15, n=4.0)
    wire_profile = profile_superellipse(1.3, 1.3, 2.0, 14)
    return [
        _Part("frame", sweep(centre[brow], u[brow], v[brow], brow_profile, closed=False), materials.frame),
        _Part("frame.wire", sweep(centre, u, v, wire_profile, closed=True), materials.hardware),
    ]


def _half_rim(design: FrameDesign, outline: np.ndarray, side: _Side, materials: _Materials) -> list[_Part]:
    """A rim over the upper part of the lens, and the nylon cord that holds the lens from below.

    The cord runs on the lens edge itself and overlaps the rim's ends by one point each side, so
    no gap shows where cord and rim meet.
    """
    centre, u, v = _rim_track(design, outline, side)
    upper = outline[:, 1] > -0.12 * design.lens_height_mm
    arc = _arc_indices(outline, upper)
    rim = _Part(
        "frame", sweep(centre[arc], u[arc], v[arc], _rim_profile(design), closed=False), materials.frame
    )
    lower = _arc_indices(outline, ~upper)
    lower = np.r_[(lower[0] - 1) % len(outline), lower, (lower[-1] + 1) % len(outline)]
    edge, edge_u, edge_v = _along_outline(outline, side, 0.0)
    cord_profile = profile_superellipse(0.35, 0.35, 2.0, 8)
    cord = sweep(edge[lower], edge_u[lower], edge_v[lower], cord_profile, closed=False)
    return [rim, _Part("frame.nylon", cord, materials.nylon)]


def _endpiece_path(design: FrameDesign, outline: np.ndarray, side: _Side) -> np.ndarray:
    """The endpiece's centre line: from the rim's upper outer corner back and out to the hinge.

    Its last point is the hinge, where the temple starts.
    """
    outer_idx = int(np.argmax(outline[:, 0] + 0.35 * outline[:, 1]))
    corner = _point_outside(outline, side, outer_idx, design.rim_width_mm * 0.8)
    steps = np.linspace(0, 1, 8)
    return np.stack([corner + np.array([side.sign * s * 2.5, 0, -s * 9.0]) for s in steps])


def _endpiece(design: FrameDesign, path: np.ndarray) -> trimesh.Trimesh:
    """The endpiece: a wide acetate block, or a slim wire on metal frames, as the rim is."""
    u, v = frame_axes(path)
    profile = (
        profile_superellipse(2.4, 6.0, n=4.0)
        if design.material != "metal"
        else profile_superellipse(1.6, 1.6, 2.0, 14)
    )
    return sweep(path, u, v, profile, closed=False)


def _hinge(hinge_point: np.ndarray, sign: int) -> trimesh.Trimesh:
    """A vertical barrel just outside the endpiece's end: visible hardware that reads as a hinge."""
    barrel = trimesh.creation.cylinder(radius=1.25, height=5.5, sections=20)
    barrel.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    barrel.apply_translation(hinge_point + np.array([sign * 0.8, 0, 0]))
    return barrel


def _nose_pad(design: FrameDesign, outline: np.ndarray, side: _Side, materials: _Materials) -> list[_Part]:
    """A silicone pad on a wire arm: metal and rimless frames rest on the nose through pads, not
    on the bridge.

    The pad sits behind the lens's inner lower edge, where the nose is; its arm leaves the rim
    backwards and curves in to it.
    """
    sign = side.sign
    inner_idx = int(np.argmin(outline[:, 0] + 0.6 * np.abs(outline[:, 1] + 0.1 * design.lens_height_mm)))
    root = _point_outside(outline, side, inner_idx, design.rim_width_mm * 0.5)
    pad_centre = root + np.array([-sign * 2.5, -2.0, -7.5])
    controls = np.array(
        [
            root,
            root + np.array([0, 0, -3.5]),
            pad_centre + np.array([sign * 2.5, 1, 1.5]),
            pad_centre + np.array([sign * 0.9, 0, 0]),
        ]
    )
    arm = _bezier(controls, 16)
    u, v = frame_axes(arm)
    arm_mesh = sweep(arm, u, v, profile_superellipse(0.9, 0.9, 2.0, 10), closed=False)
    pad = _ellipsoid(pad_centre, (1.1, 6.5, 4.0), sign * np.radians(25))
    return [
        _Part("nose_pads.arms", arm_mesh, materials.hardware),
        _Part("nose_pads", pad, materials.nose_pad),
    ]


def _bridge(design: FrameDesign, outline: np.ndarray) -> trimesh.Trimesh:
    """The bridge arching between the lenses' inner edges at the design's bridge height.

    How high it arches tells the bridge styles apart (a keyhole rises most). The asset's origin
    is later put at this bridge's centre, as the convention asks.
    """
    bridge_y = design.bridge_height * design.lens_height_mm
    inner_idx = int(np.argmin(outline[:, 0] + 0.8 * np.abs(outline[:, 1] - bridge_y)))
    start = _point_outside(outline, _Side(design, 1), inner_idx, design.rim_width_mm * 0.25)
    end = start * [-1, 1, 1]
    rise = {"saddle": 2.5, "keyhole": 6.0, "double": 2.0}[design.bridge]
    controls = np.array(
        [start, start * [0.35, 1, 1] + [0, rise, 1.2], end * [0.35, 1, 1] + [0, rise, 1.2], end]
    )
    path = _bezier(controls, 40)
    u, v = frame_axes(path, up=np.array([0.0, 0.0, 1.0]))
    metal = design.material == "metal"
    band = profile_superellipse(
        design.rim_width_mm * (1.0 if metal else 1.6), design.rim_depth_mm, n=2.0 if metal else 4.0
    )
    return sweep(path, u, v, band, closed=False)


def _top_bar(design: FrameDesign, outline: np.ndarray) -> trimesh.Trimesh:
    """The double bridge's second, straighter bar joining the tops of the rims (aviator style)."""
    top_idx = int(np.argmin(outline[:, 0] - 2.5 * outline[:, 1]))
    top = _point_outside(outline, _Side(design, 1), top_idx, design.rim_width_mm * 0.4)
    controls = np.array(
        [
            top,
            top * [0.35, 1, 1] + [0, 0.8, 1.0],
            top * [-0.35, 1, 1] + [0, 0.8, 1.0],
            top * [-1, 1, 1],
        ]
    )
    bar = _bezier(controls, 40)
    u, v = frame_axes(bar, up=np.array([0.0, 0.0, 1.0]))
    return sweep(bar, u, v, _wire_profile(design), closed=False)


#: Points along a temple; the metal temple's wire and tip are cut from them by index.
_TEMPLE_POINTS = 90


def _temple_path(design: FrameDesign, hinge_point: np.ndarray, sign: int) -> np.ndarray:
    """The temple's centre line: back from the hinge, bowed out around the head, then bent down
    and in behind the ear.

    The bend starts at 72% of the way, where the ear is, and drops by the design's temple_drop_mm;
    past it the temple runs back more slowly, since it is turning downwards.
    """
    s = np.linspace(0, 1, _TEMPLE_POINTS)
    bend = np.clip((s - 0.72) / 0.28, 0, 1)
    straight = np.minimum(s, 0.72)
    return np.stack(
        [
            hinge_point[0] + sign * (5.0 * np.sin(np.pi * np.clip(s / 0.75, 0, 1)) - 9.0 * bend**2),
            hinge_point[1] - design.temple_drop_mm * bend**1.6 + 1.5 * s,
            hinge_point[2] - design.temple_mm * (straight + 0.6 * (s - straight)) * 1.08,
        ],
        axis=1,
    )


def _temple(design: FrameDesign, path: np.ndarray, node: str, materials: _Materials) -> list[_Part]:
    """One temple along `path`: a thin wire with a plastic ear tip on metal frames, a tapering
    acetate arm otherwise.

    The tip overlaps the wire's last points so the wire disappears into it.
    """
    u, v = frame_axes(path)
    if design.material == "metal":
        wire = sweep(path[:70], u[:70], v[:70], profile_superellipse(1.4, 1.4, 2.0, 12), closed=False)
        tip_scale = np.linspace(1.0, 0.8, 35)
        tip_profile = profile_superellipse(2.6, 3.4, 3.0, 16)
        tip = sweep(path[55:], u[55:], v[55:], tip_profile, closed=False, scale=tip_scale)
        return [_Part(node, wire, materials.temple_wire), _Part(f"{node}.tip", tip, materials.temple_tip)]
    s = np.linspace(0, 1, len(path))
    taper = np.stack([np.ones_like(s), np.interp(s, [0, 0.15, 1], [1.0, 0.7, 0.55])], 1)
    arm = sweep(path, u, v, profile_superellipse(2.2, 6.5, n=4.0), closed=False, scale=taper)
    return [_Part(node, arm, materials.frame)]


def _assemble_scene(parts: list[_Part]) -> trimesh.Scene:
    """The scene: one node per role and material, in millimetres moved to metres about the bridge.

    Meshes of one node and material are merged so a product has a handful of nodes, not dozens;
    a node with a second material gets a `<node>.<material>` sibling, as the convention names it.
    """
    by_node = _group_by_node(parts)
    all_vertices = np.vstack([mesh.vertices for items in by_node.values() for mesh, _ in items])
    origin = bridge_centre(all_vertices * 0.001) * 1000.0
    scene = trimesh.Scene()
    for node, items in by_node.items():
        by_material: dict[str, list[trimesh.Trimesh]] = {}
        materials: dict[str, PBR] = {}
        for mesh, material in items:
            by_material.setdefault(material.name, []).append(mesh)
            materials[material.name] = material
        for i, (material_name, meshes) in enumerate(by_material.items()):
            merged = _merged(meshes, materials[material_name], origin)
            name = node if i == 0 else f"{node}.{material_name}"
            scene.add_geometry(merged, node_name=name, geom_name=name)
    missing = [p for p in REQUIRED_PARTS if p not in scene.graph.nodes]
    assert not missing, f"builder produced no {missing}"
    return scene


def _group_by_node(parts: list[_Part]) -> dict[str, list[tuple[trimesh.Trimesh, PBR]]]:
    """Meshes per node, in the order the nodes first appear (that order is the GLB's).

    Primitives (hinges, pads) carry no UVs; they get zeros, because merging stacks the UVs of
    every mesh of a node and a textured material needs them on every vertex.
    """
    by_node: dict[str, list[tuple[trimesh.Trimesh, PBR]]] = {}
    for node, mesh, material in parts:
        if getattr(mesh.visual, "uv", None) is None:
            mesh.visual = trimesh.visual.TextureVisuals(uv=np.zeros((len(mesh.vertices), 2)))
        by_node.setdefault(node, []).append((mesh, material))
    return by_node


def _merged(meshes: list[trimesh.Trimesh], material: PBR, origin_mm: np.ndarray) -> trimesh.Trimesh:
    """The meshes as one, moved so `origin_mm` is at 0 and scaled to metres.

    Normals are carried over, not recomputed: the swept tubes' analytic normals keep them smooth.
    """
    uv = np.vstack([m.visual.uv for m in meshes])  # type: ignore[union-attr]
    merged = trimesh.Trimesh(
        vertices=np.vstack([m.vertices for m in meshes]),
        faces=np.vstack([m.faces + off for m, off in zip(meshes, _offsets(meshes), strict=True)]),
        vertex_normals=np.vstack([m.vertex_normals for m in meshes]),
        process=False,
    )
    merged.apply_translation(-origin_mm)
    merged.apply_scale(0.001)
    merged.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return merged


def _offsets(meshes: list[trimesh.Trimesh]) -> list[int]:
    counts = [len(m.vertices) for m in meshes]
    return [sum(counts[:i]) for i in range(len(meshes))]


def export_glb(scene: trimesh.Scene) -> bytes:
    """The scene as GLB bytes (deterministic for the same scene)."""
    buf = io.BytesIO()
    scene.export(buf, file_type="glb")
    return buf.getvalue()


__all__ = ["build_frame", "export_glb"]
