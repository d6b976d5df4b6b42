"""Build the 3D asset of one product (design + colourway) as a trimesh scene in the convention.

Everything is modelled in millimetres in world coordinates, then scaled to metres. Rims,
bridges and temples are swept tubes along smooth curves; lenses are gently curved panels that
tuck into the rim groove; metal frames get hinges, pad arms and silicone nose pads.
"""

from __future__ import annotations

import io

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
    """Maps lens-local 2D points (mm, +x outwards) to world 3D for one side (+1 left, -1 right)."""

    def __init__(self, d: FrameDesign, sign: int) -> None:
        self.sign = sign
        self.inner = d.bridge_mm / 2
        self.cx = d.bridge_mm / 2 + d.lens_width_mm / 2
        self.cy = -d.bridge_height * d.lens_height_mm
        self.wrap = np.radians(d.wrap_deg)

    def __call__(self, p: np.ndarray, z: np.ndarray | float = 0.0) -> np.ndarray:
        dist = self.cx + p[:, 0] - self.inner  # distance outwards from the lens's inner edge
        x = self.inner + dist * np.cos(self.wrap) + np.asarray(z) * np.sin(self.wrap)
        zz = -dist * np.sin(self.wrap) + np.asarray(z) * np.cos(self.wrap)
        return np.stack([self.sign * x, self.cy + p[:, 1], zz], axis=1)


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


def _along_outline(
    outline: np.ndarray, side: _Side, offset_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def build_frame(d: FrameDesign, c: Colourway) -> trimesh.Scene:
    """The asset of one product, in metres, following glassfinder.catalog.convention."""
    outline = lens_outline(d.family, d.lens_width_mm, d.lens_height_mm, d.shape)
    metal = d.material == "metal"
    frame_mat = (
        _material("frame", c.frame_rgba, metal=1.0, rough=0.28)
        if c.finish == "metal"
        else _material(
            "frame",
            c.frame_rgba,
            rough=0.18,
            texture=tortoise_texture(c.pattern_seed, c.frame_rgba, c.accent_rgba)
            if c.finish == "tortoise"
            else None,
        )
    )
    if c.finish == "tortoise":
        frame_mat.baseColorFactor = [1.0, 1.0, 1.0, 1.0]
    hardware_mat = _material("hardware", c.metal_rgba, metal=1.0, rough=0.25)
    lens_mat = _material(
        "lens",
        c.lens_rgba,
        metal=0.85 if c.lens_style == "mirrored" else 0.0,
        rough=0.08 if c.lens_style == "mirrored" else 0.04,
        texture=gradient_texture() if c.lens_style == "gradient" else None,
        double=True,
    )
    lens_mat.alphaMode = "BLEND"
    lens_mat.doubleSided = True
    tip_mat = _material(
        "temple_tip", c.accent_rgba if c.finish != "metal" else (0.02, 0.02, 0.02, 1.0), rough=0.35
    )
    pad_mat = _material("nose_pad", (0.8, 0.82, 0.8, 0.55), rough=0.3, double=True)
    nylon_mat = _material("nylon", (0.05, 0.05, 0.05, 0.6), rough=0.4)

    parts: dict[str, list[tuple[trimesh.Trimesh, PBR]]] = {}

    def add(node: str, mesh: trimesh.Trimesh, mat: PBR) -> None:
        if getattr(mesh.visual, "uv", None) is None:  # primitives (hinges, pads) carry no UVs
            mesh.visual = trimesh.visual.TextureVisuals(uv=np.zeros((len(mesh.vertices), 2)))
        parts.setdefault(node, []).append((mesh, mat))

    acetate_profile = profile_superellipse(d.rim_width_mm, d.rim_depth_mm, n=4.0)
    wire = profile_superellipse(d.rim_width_mm, d.rim_depth_mm, n=2.0, points=14)
    rim_profile = wire if metal else acetate_profile
    groove = d.rim_width_mm * 0.3
    bulge = 2.2 if d.kind == "sunglasses" else 1.2
    bridge_y_local = d.bridge_height * d.lens_height_mm
    hinge_points = {}
    for side_name, sign in (("left", 1), ("right", -1)):
        side = _Side(d, sign)
        lens_outline_mm = offset_outline(outline, groove if d.rim != "rimless" else 0.0)
        add(f"lens_{side_name}", _lens_panel(lens_outline_mm, side, bulge), lens_mat)
        if d.rim == "rimless":  # a visible lens edge instead of a rim
            centre, u, v = _along_outline(outline, side, 0.0)
            add(
                f"lens_{side_name}",
                sweep(centre, u, v, profile_superellipse(0.6, 2.0, n=6), closed=True),
                lens_mat,
            )
        centre, u, v = _along_outline(outline, side, d.rim_width_mm / 2 - groove)
        upper = outline[:, 1] > -0.12 * d.lens_height_mm
        if d.family == "browline":
            brow = _arc_indices(outline, outline[:, 1] > 0.05 * d.lens_height_mm)
            prof = profile_superellipse(d.rim_width_mm * 1.5, d.rim_depth_mm * 1.15, n=4.0)
            add("frame", sweep(centre[brow], u[brow], v[brow], prof, closed=False), frame_mat)
            add(
                "frame.wire",
                sweep(centre, u, v, profile_superellipse(1.3, 1.3, 2.0, 14), closed=True),
                hardware_mat,
            )
        elif d.rim == "full":
            add("frame", sweep(centre, u, v, rim_profile, closed=True), frame_mat)
        elif d.rim == "half":
            arc = _arc_indices(outline, upper)
            add("frame", sweep(centre[arc], u[arc], v[arc], rim_profile, closed=False), frame_mat)
            lower = _arc_indices(outline, ~upper)
            lower = np.r_[(lower[0] - 1) % len(outline), lower, (lower[-1] + 1) % len(outline)]
            c2, u2, v2 = _along_outline(outline, side, 0.0)
            add(
                "frame.nylon",
                sweep(
                    c2[lower], u2[lower], v2[lower], profile_superellipse(0.35, 0.35, 2.0, 8), closed=False
                ),
                nylon_mat,
            )

        # Endpiece and hinge at the upper outer corner.
        outer_idx = int(np.argmax(outline[:, 0] + 0.35 * outline[:, 1]))
        e2 = offset_outline(outline, d.rim_width_mm * 0.8)[outer_idx : outer_idx + 1]
        e = side(e2)[0]
        path = np.stack([e + np.array([sign * s * 2.5, 0, -s * 9.0]) for s in np.linspace(0, 1, 8)])
        eu, ev = frame_axes(path)
        end_prof = (
            profile_superellipse(2.4, 6.0, n=4.0) if not metal else profile_superellipse(1.6, 1.6, 2.0, 14)
        )
        add("frame", sweep(path, eu, ev, end_prof, closed=False), frame_mat)
        hinge = trimesh.creation.cylinder(radius=1.25, height=5.5, sections=20)
        hinge.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        hinge.apply_translation(path[-1] + np.array([sign * 0.8, 0, 0]))
        add("frame.hinge", hinge, hardware_mat)
        hinge_points[side_name] = path[-1]

        # Nose pads on arms, behind the lens's inner lower edge.
        if d.nose_pads:
            inner_idx = int(np.argmin(outline[:, 0] + 0.6 * np.abs(outline[:, 1] + 0.1 * d.lens_height_mm)))
            root = side(offset_outline(outline, d.rim_width_mm * 0.5)[inner_idx : inner_idx + 1])[0]
            pad_c = root + np.array([-sign * 2.5, -2.0, -7.5])
            arm = _bezier(
                np.array(
                    [
                        root,
                        root + np.array([0, 0, -3.5]),
                        pad_c + np.array([sign * 2.5, 1, 1.5]),
                        pad_c + np.array([sign * 0.9, 0, 0]),
                    ]
                ),
                16,
            )
            au, av = frame_axes(arm)
            add(
                "nose_pads.arms",
                sweep(arm, au, av, profile_superellipse(0.9, 0.9, 2.0, 10), closed=False),
                hardware_mat,
            )
            add("nose_pads", _ellipsoid(pad_c, (1.1, 6.5, 4.0), sign * np.radians(25)), pad_mat)

    # Bridge between the lens tops, and the origin at its centre.
    pl = _Side(d, 1)
    inner_idx = int(np.argmin(outline[:, 0] + 0.8 * np.abs(outline[:, 1] - bridge_y_local)))
    start = pl(offset_outline(outline, d.rim_width_mm * 0.25)[inner_idx : inner_idx + 1])[0]
    end = start * [-1, 1, 1]
    rise = {"saddle": 2.5, "keyhole": 6.0, "double": 2.0}[d.bridge]
    ctrl = np.array([start, start * [0.35, 1, 1] + [0, rise, 1.2], end * [0.35, 1, 1] + [0, rise, 1.2], end])
    bridge_path = _bezier(ctrl, 40)
    bu, bv = frame_axes(bridge_path, up=np.array([0.0, 0.0, 1.0]))
    band = profile_superellipse(
        d.rim_width_mm * (1.0 if metal else 1.6), d.rim_depth_mm, n=2.0 if metal else 4.0
    )
    add("frame", sweep(bridge_path, bu, bv, band, closed=False), frame_mat)
    if d.bridge == "double":
        top_idx = int(np.argmin(outline[:, 0] - 2.5 * outline[:, 1]))
        top = pl(offset_outline(outline, d.rim_width_mm * 0.4)[top_idx : top_idx + 1])[0]
        bar = _bezier(
            np.array(
                [
                    top,
                    top * [0.35, 1, 1] + [0, 0.8, 1.0],
                    top * [-0.35, 1, 1] + [0, 0.8, 1.0],
                    top * [-1, 1, 1],
                ]
            ),
            40,
        )
        tu, tv = frame_axes(bar, up=np.array([0.0, 0.0, 1.0]))
        add("frame", sweep(bar, tu, tv, wire, closed=False), frame_mat)

    # Temples: from the hinge straight back, splayed, then bent down behind the ear.
    for side_name, sign in (("left", 1), ("right", -1)):
        h = hinge_points[side_name]
        s = np.linspace(0, 1, 90)
        bend = np.clip((s - 0.72) / 0.28, 0, 1)
        path = np.stack(
            [
                h[0] + sign * (5.0 * np.sin(np.pi * np.clip(s / 0.75, 0, 1)) - 9.0 * bend**2),
                h[1] - d.temple_drop_mm * bend**1.6 + 1.5 * s,
                h[2] - d.temple_mm * (np.minimum(s, 0.72) + 0.6 * (s - np.minimum(s, 0.72))) * 1.08,
            ],
            axis=1,
        )
        tu, tv = frame_axes(path)
        if metal:
            add(
                f"temple_{side_name}",
                sweep(path[:70], tu[:70], tv[:70], profile_superellipse(1.4, 1.4, 2.0, 12), closed=False),
                hardware_mat if c.finish != "metal" else frame_mat,
            )
            tip_scale = np.linspace(1.0, 0.8, 35)
            add(
                f"temple_{side_name}.tip",
                sweep(
                    path[55:],
                    tu[55:],
                    tv[55:],
                    profile_superellipse(2.6, 3.4, 3.0, 16),
                    closed=False,
                    scale=tip_scale,
                ),
                tip_mat,
            )
        else:
            taper = np.stack([np.ones_like(s), np.interp(s, [0, 0.15, 1], [1.0, 0.7, 0.55])], 1)
            add(
                f"temple_{side_name}",
                sweep(path, tu, tv, profile_superellipse(2.2, 6.5, n=4.0), closed=False, scale=taper),
                frame_mat,
            )

    all_vertices = np.vstack([mesh.vertices for items in parts.values() for mesh, _ in items])
    origin = bridge_centre(all_vertices * 0.001) * 1000.0
    scene = trimesh.Scene()
    for node, items in parts.items():
        by_material: dict[str, list[trimesh.Trimesh]] = {}
        materials: dict[str, PBR] = {}
        for mesh, mat in items:
            by_material.setdefault(mat.name, []).append(mesh)
            materials[mat.name] = mat
        for i, (mat_name, meshes) in enumerate(by_material.items()):
            uv = np.vstack([m.visual.uv for m in meshes])  # type: ignore[union-attr]
            merged = trimesh.Trimesh(
                vertices=np.vstack([m.vertices for m in meshes]),
                faces=np.vstack([m.faces + off for m, off in zip(meshes, _offsets(meshes), strict=True)]),
                vertex_normals=np.vstack([m.vertex_normals for m in meshes]),
                process=False,
            )
            merged.apply_translation(-origin)
            merged.apply_scale(0.001)
            merged.visual = trimesh.visual.TextureVisuals(uv=uv, material=materials[mat_name])
            name = node if i == 0 else f"{node}.{mat_name}"
            scene.add_geometry(merged, node_name=name, geom_name=name)
    missing = [p for p in REQUIRED_PARTS if p not in scene.graph.nodes]
    assert not missing, f"builder produced no {missing}"
    return scene


def _offsets(meshes: list[trimesh.Trimesh]) -> list[int]:
    counts = [len(m.vertices) for m in meshes]
    return [sum(counts[:i]) for i in range(len(meshes))]


def import_glb(data: bytes) -> trimesh.Scene:
    """A GLB's scene, nodes and materials kept (for assets already in the convention)."""
    return trimesh.load_scene(io.BytesIO(data), file_type="glb")


def export_glb(scene: trimesh.Scene) -> bytes:
    """The scene as GLB bytes (deterministic for the same scene)."""
    buf = io.BytesIO()
    scene.export(buf, file_type="glb")
    return buf.getvalue()


__all__ = ["build_frame", "export_glb", "import_glb"]
