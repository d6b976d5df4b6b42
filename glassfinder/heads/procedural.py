"""Procedural 3D heads: a parametric head with eyes, brows, lips, ears, neck, hair and skin.

Each identity comes from one seed (`head-<seed>`), so thousands of distinct faces need no
download and no licence. The head is a deformed superellipsoid sampled densely around the face;
features are smooth displacements (sockets, brow ridge, nose, cheekbones, lips, chin, jaw).
Eyeballs sit behind almond-shaped openings in the skin, so lids, the visible eye shape and its
occlusion by lenses all come from geometry. Colours are linear RGB vertex colours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import trimesh

from glassfinder.heads.base import Anchors, Head

#: Built heads kept per process. A head is ~6 MB and takes ~60 ms to build; views draw faces at
#: random from hundreds, so a big cache buys few hits: at 256 a render worker grew to 4.8 GB
#: over a 3,200-asset run.
HEAD_CACHE = 32

# Skin tones across the human range, sRGB (very light to very dark); sampled by interpolation.
_SKIN_SRGB = (
    np.array(
        [
            [246, 220, 200],
            [236, 196, 168],
            [214, 165, 128],
            [190, 140, 100],
            [160, 110, 74],
            [120, 78, 52],
            [86, 56, 38],
            [58, 38, 28],
        ],
        float,
    )
    / 255
)
_IRIS_SRGB = (
    np.array([[70, 45, 25], [110, 70, 35], [60, 90, 120], [90, 120, 70], [120, 110, 90], [35, 25, 20]], float)
    / 255
)
_HAIR_SRGB = (
    np.array(
        [
            [20, 15, 12],
            [45, 30, 20],
            [85, 55, 30],
            [150, 110, 60],
            [210, 170, 110],
            [130, 50, 25],
            [160, 160, 160],
            [235, 230, 220],
        ],
        float,
    )
    / 255
)
HAIR_STYLES = ("bald", "buzz", "short", "medium", "long", "bun")

# Grid resolution: denser in front and around eye level, where the glasses sit.
_N_THETA, _N_PHI = 136, 100


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _smoothstep(e0: float | np.ndarray, e1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


class HeadParams:
    """Identity parameters drawn from one seed (plain attributes, metres)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x4EAD])
        u = rng.uniform
        self.a = u(0.067, 0.079)  # half width
        self.b = u(0.108, 0.124)  # half height (crown to chin about 2b)
        self.c = u(0.090, 0.102)  # half depth
        self.front_n = u(2.2, 2.6)  # flatness of the face front
        self.jaw = u(0.70, 0.90)
        self.chin = u(0.002, 0.008)
        self.cheek = u(0.001, 0.006)
        self.brow = u(0.002, 0.007)
        self.socket = u(0.002, 0.005)
        self.nose_len = u(0.040, 0.056)
        self.nose_w = u(0.010, 0.016)
        self.nose_bridge_h = u(0.005, 0.012)
        self.nose_tip_h = u(0.016, 0.026)
        self.ipd = u(0.056, 0.070)
        self.eye_y = 0.004
        self.eye_w = u(0.0135, 0.0162)  # half width of the opening
        self.eye_h = u(0.0042, 0.0056)  # half height of the opening: less than the iris radius, 5 mm
        self.eye_tilt = u(-0.08, 0.12)  # outer corner up (rad)
        self.lip = u(0.003, 0.007)
        self.mouth_w = u(0.021, 0.027)
        self.ear_h = u(0.052, 0.064)
        self.neck_r = u(0.050, 0.060)
        self.skin = srgb_to_linear(_interp_palette(_SKIN_SRGB, u(0, 1)))
        self.iris = srgb_to_linear(_IRIS_SRGB[rng.integers(len(_IRIS_SRGB))] * u(0.85, 1.15))
        self.hair = srgb_to_linear(_HAIR_SRGB[rng.integers(len(_HAIR_SRGB))] * u(0.85, 1.1))
        self.brow_colour = self.hair if rng.random() < 0.8 else srgb_to_linear(_HAIR_SRGB[1])
        self.hair_style = str(rng.choice(HAIR_STYLES, p=[0.08, 0.12, 0.3, 0.22, 0.18, 0.1]))
        self.hairline = u(0.045, 0.07)
        self.brow_thick = u(0.0035, 0.0065)
        self.noise_seed = int(rng.integers(2**31))
        # Drawn last so that every earlier trait of an identity stays as it was.
        self.lid_drop = u(0.0006, 0.0014)  # the opening's centre below the pupil, see `_face_offset`

    @property
    def opening_y(self) -> float:
        """Height of the eye openings' centre (the pupils are at `eye_y`)."""
        return self.eye_y - self.lid_drop


def _interp_palette(palette: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(palette) - 1)
    i = min(int(x), len(palette) - 2)
    return palette[i] * (1 - (x - i)) + palette[i + 1] * (x - i)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    u = np.linspace(-1, 1, _N_THETA, endpoint=False)
    theta = np.pi * (0.45 * u + 0.55 * u**3)
    v = np.linspace(-0.985, 0.985, _N_PHI)
    phi = 0.5 * np.pi * (0.5 * v + 0.5 * v**3)
    return np.meshgrid(theta, phi)  # (n_phi, n_theta)


def _face_offset(p: HeadParams, x: np.ndarray, y: np.ndarray, *, with_eye_openings: bool) -> np.ndarray:
    """Displacement along +Z of the face front at (x, y), metres."""
    ey, hx = p.eye_y, p.ipd / 2
    h = np.zeros_like(x)
    h -= p.socket * (_gauss(x, y, hx, ey, 0.016, 0.012) + _gauss(x, y, -hx, ey, 0.016, 0.012))
    h += p.brow * _gauss(x, y, 0.0, ey + 0.019, 0.05, 0.007)
    h += p.cheek * (
        _gauss(x, y, 0.045, ey - 0.028, 0.016, 0.014) + _gauss(x, y, -0.045, ey - 0.028, 0.016, 0.014)
    )
    # Nose: a ridge from the bridge to the tip, widening and rising towards the tip.
    t = np.clip((ey + 0.006 - y) / p.nose_len, 0, 1)  # 0 at the bridge, 1 at the tip
    along = _smoothstep(-0.15, 0.05, (ey + 0.006 - y) / p.nose_len) * (
        1 - _smoothstep(1.0, 1.18, (ey + 0.006 - y) / p.nose_len)
    )
    width = 0.006 + (p.nose_w - 0.006) * t**1.5
    height = p.nose_bridge_h + (p.nose_tip_h - p.nose_bridge_h) * t**1.6
    h += along * height * np.exp(-0.5 * (x / width) ** 2)
    tip_y = ey + 0.006 - p.nose_len
    h += 0.004 * (
        _gauss(x, y, p.nose_w * 0.9, tip_y + 0.002, 0.005, 0.005)
        + _gauss(x, y, -p.nose_w * 0.9, tip_y + 0.002, 0.005, 0.005)
    )
    # Lips and chin.
    my = tip_y - 0.020
    h += p.lip * _gauss(x, y, 0, my + 0.004, p.mouth_w * 0.8, 0.004)
    h += p.lip * 1.1 * _gauss(x, y, 0, my - 0.0045, p.mouth_w * 0.75, 0.0045)
    h -= 0.002 * _gauss(x, y, 0, my, p.mouth_w, 0.0012)
    h += p.chin * _gauss(x, y, 0, my - 0.038, 0.02, 0.012)
    if with_eye_openings:
        # Real upper lids cover the top of the iris and lower lids meet its bottom, so the pupil
        # sits ~1 mm above the opening's centre; a network trained on pupils at the centre
        # placed real pupils low by ~4% of their distance.
        for sx in (1, -1):
            dx, dy = x - sx * hx, y - p.opening_y
            ct, st = np.cos(p.eye_tilt * sx), np.sin(p.eye_tilt * sx)
            rx, ry = ct * dx + st * dy, -st * dx + ct * dy
            # Almond: pointed corners, fuller on the nose side of the top lid.
            half_h = (
                p.eye_h
                * np.sqrt(np.clip(1 - (rx / p.eye_w) ** 2, 0, 1))
                * (1 + 0.15 * np.tanh(-sx * rx / p.eye_w))
            )
            # +1 well inside the opening, -1 outside, a 1 mm soft lid edge between.
            inside = np.where(
                np.abs(rx) < p.eye_w, np.clip((half_h - 0.0004 - np.abs(ry)) / 0.0009, -1, 1), -1.0
            )
            h -= 0.009 * (0.5 + 0.5 * inside)
    return h


def _surface(
    p: HeadParams, theta: np.ndarray, phi: np.ndarray, *, with_eye_openings: bool = True
) -> np.ndarray:
    """Head surface points (..., 3) at grid angles."""
    s, c = np.sin(theta), np.cos(theta)
    n = np.where(c > 0, p.front_n, 2.0)
    sx = np.sign(s) * np.abs(s) ** (2 / n)
    sz = np.sign(c) * np.abs(c) ** (2 / n)
    cp = np.cos(phi)
    x, y, z = p.a * sx * cp, p.b * np.sin(phi), p.c * sz * cp
    # Jaw narrows below the cheekbones; the skull's underside tucks towards the neck.
    x = x * (1 - (1 - p.jaw) * _smoothstep(-0.02, -0.11, y))
    z = np.where(
        z < 0, z * (1 - 0.4 * _smoothstep(-0.02, -0.10, y)), z * (1 - 0.25 * _smoothstep(-0.06, -0.12, y))
    )
    front = _smoothstep(0.25, 0.7, z / p.c)
    z = z + front * _face_offset(p, x, y, with_eye_openings=with_eye_openings)
    return np.stack([x, y, z], axis=-1)


def _grid_faces(n_phi: int, n_theta: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n_phi - 1), np.arange(n_theta), indexing="ij")
    a = i * n_theta + j
    b = i * n_theta + (j + 1) % n_theta
    c = (i + 1) * n_theta + j
    d = (i + 1) * n_theta + (j + 1) % n_theta
    return np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])


def _front_xyz(p: HeadParams, x: float, y: float) -> np.ndarray:
    """The skin point in front of (x, y), found on a fine theta sweep at that height."""
    phi = np.arcsin(np.clip(y / p.b, -1, 1))
    theta = np.linspace(-0.9, 0.9, 721)
    pts = _surface(p, theta, np.full_like(theta, phi), with_eye_openings=False)
    k = int(np.argmin(np.abs(pts[:, 0] - x)))
    return pts[k]


def _colour_mesh(mesh: trimesh.Trimesh, rgb: np.ndarray) -> None:
    mesh.visual = trimesh.visual.ColorVisuals(
        mesh, vertex_colors=np.clip(np.c_[rgb, np.ones(len(rgb))] * 255, 0, 255).astype(np.uint8)
    )


@functools.lru_cache(maxsize=HEAD_CACHE)
def head(index: int) -> Head:
    """The head of identity `index`, built once per process: the one cache of built heads that
    every renderer shares (building one costs ~70 ms; a render ~90 ms). Treat it as read-only."""
    return build_head(index)


@dataclass(frozen=True)
class _FaceLevels:
    """Where the features sit across and up the face (metres), shared by geometry, colour and landmarks."""

    eye_y: float  # the pupils' height
    half_ipd: float  # each pupil's distance from the midline
    nose_tip_y: float
    mouth_y: float


def _face_levels(p: HeadParams) -> _FaceLevels:
    tip_y = p.eye_y + 0.006 - p.nose_len
    return _FaceLevels(eye_y=p.eye_y, half_ipd=p.ipd / 2, nose_tip_y=tip_y, mouth_y=tip_y - 0.020)


@dataclass(frozen=True)
class _Skin:
    """The skin surface: the sampled grid and the closed mesh made from it."""

    grid_pts: np.ndarray  # (n_phi, n_theta, 3), the grid the hair shell follows
    verts: np.ndarray  # the mesh's vertices: the grid's, then the crown
    mesh: trimesh.Trimesh


@dataclass(frozen=True)
class _PairedFeature:
    """A feature built on both sides of the head (eyes, ears)."""

    meshes: list[tuple[str, trimesh.Trimesh]]
    points: dict[str, np.ndarray]  # side -> where fitting rests (the pupil, the ear root)
    landmarks: dict[str, np.ndarray]


_EYE_RADIUS = 0.0118


def _skin_surface(p: HeadParams) -> _Skin:
    """The grid of skin points closed at the crown by a cap (the neck hides the open bottom)."""
    theta, phi = _grid()
    pts = _surface(p, theta, phi)
    verts = pts.reshape(-1, 3)
    faces = _grid_faces(*theta.shape)
    top = len(verts)
    top_ring = (theta.shape[0] - 1) * theta.shape[1] + np.arange(theta.shape[1])
    verts = np.vstack([verts, [[0, p.b, 0]]])
    cap = np.stack([top_ring, np.full_like(top_ring, top), np.roll(top_ring, -1)], 1)
    faces = np.vstack([faces, cap])
    skin_mesh = trimesh.Trimesh(verts, faces, process=False)
    # The grid's winding is fixed by construction: check one face at the front, not the volume.
    probe = int(np.argmax(skin_mesh.triangles_center[:, 2]))
    if skin_mesh.face_normals[probe, 2] < 0:
        skin_mesh.invert()
    return _Skin(grid_pts=pts, verts=verts, mesh=skin_mesh)


def _skin_colours(p: HeadParams, lv: _FaceLevels, verts: np.ndarray) -> np.ndarray:
    """Skin colours (linear RGB, unclipped): tone, subtle mottling, warmer cheeks/nose/lips, brows
    and scalp hair."""
    rng = np.random.default_rng(p.noise_seed)
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    noise = 1 + 0.05 * rng.standard_normal(len(verts))
    col = p.skin[None, :] * noise[:, None]
    frontal = z > 0.3 * p.c
    col = _paint_blush_and_lips(p, lv, col, x, y, frontal)
    col = _paint_brows_and_lashes(p, lv, col, x, y, frontal)
    scalp = _hair_mask(p, verts, for_shell=False)
    return col * (1 - scalp[:, None]) + (p.hair * 0.9)[None, :] * scalp[:, None]


def _paint_blush_and_lips(
    p: HeadParams, lv: _FaceLevels, col: np.ndarray, x: np.ndarray, y: np.ndarray, frontal: np.ndarray
) -> np.ndarray:
    warm = np.array([1.08, 0.9, 0.88])
    ey, tip_y, my = lv.eye_y, lv.nose_tip_y, lv.mouth_y
    blush = frontal * (
        _gauss(x, y, 0.042, ey - 0.03, 0.015, 0.012)
        + _gauss(x, y, -0.042, ey - 0.03, 0.015, 0.012)
        + 0.6 * _gauss(x, y, 0, tip_y, 0.008, 0.008)
    )
    col = col * (1 + (warm - 1)[None, :] * blush[:, None])
    lips = frontal * np.clip(
        _gauss(x, y, 0, my + 0.004, p.mouth_w * 0.8, 0.0035)
        + _gauss(x, y, 0, my - 0.0045, p.mouth_w * 0.75, 0.004),
        0,
        1,
    )
    lip_rgb = p.skin * np.array([0.85, 0.55, 0.55])
    return col * (1 - lips[:, None] * 0.8) + lip_rgb[None, :] * lips[:, None] * 0.8


def _paint_brows_and_lashes(
    p: HeadParams, lv: _FaceLevels, col: np.ndarray, x: np.ndarray, y: np.ndarray, frontal: np.ndarray
) -> np.ndarray:
    for sx in (1, -1):  # brows: an arc above each eye
        t = np.clip((sx * x - 0.008) / 0.046, 0, 1)
        arc_y = lv.eye_y + 0.017 + 0.007 * np.sin(np.pi * np.clip(t * 1.15, 0, 1)) - 0.004 * t
        inside = (
            frontal
            * _smoothstep(0.005, 0.012, sx * x)
            * (1 - _smoothstep(0.05, 0.058, sx * x))
            * np.exp(-0.5 * ((y - arc_y) / (p.brow_thick * (1 - 0.5 * t))) ** 2)
        )
        dens = np.clip(inside * 1.3, 0, 1)[:, None]
        col = col * (1 - 0.85 * dens) + p.brow_colour[None, :] * 0.85 * dens
        lash = frontal * _gauss(x, y, sx * lv.half_ipd, p.opening_y + p.eye_h * 0.9, p.eye_w * 0.9, 0.0012)
        col = col * (1 - 0.6 * np.clip(lash, 0, 1)[:, None])
    return col


def _eyes(p: HeadParams, lv: _FaceLevels) -> _PairedFeature:
    """Eyeballs behind the openings, looking straight ahead, with the pupils and eye corners."""
    meshes: list[tuple[str, trimesh.Trimesh]] = []
    pupils: dict[str, np.ndarray] = {}
    landmarks: dict[str, np.ndarray] = {}
    hx = lv.half_ipd
    for side, sx in (("left", 1), ("right", -1)):
        skin_pt = _front_xyz(p, sx * hx, lv.eye_y)
        centre = np.array([sx * hx, lv.eye_y, skin_pt[2] - 0.0016 - _EYE_RADIUS])
        meshes.append((f"eye_{side}", _eyeball(p, centre)))
        pupils[side] = centre + np.array([0, 0, _EYE_RADIUS])
        landmarks[f"pupil_{side}"] = pupils[side]
        for corner, cx in (("inner", -sx * p.eye_w), ("outer", sx * p.eye_w)):
            corner_xy = np.array(
                [sx * hx + cx * np.cos(p.eye_tilt), p.opening_y + cx * sx * np.sin(p.eye_tilt) * sx]
            )
            landmarks[f"eye_{side}_{corner}"] = _front_xyz(p, corner_xy[0], corner_xy[1]) - [0, 0, 0.002]
    return _PairedFeature(meshes, pupils, landmarks)


def _eyeball(p: HeadParams, centre: np.ndarray) -> trimesh.Trimesh:
    """A white sclera, coloured iris and dark pupil, facing +Z."""
    eye = trimesh.creation.uv_sphere(radius=_EYE_RADIUS, count=[32, 32])
    d = eye.vertices / _EYE_RADIUS
    ang = np.arccos(np.clip(d[:, 2], -1, 1))
    ecol = np.where(
        (ang < 0.16)[:, None],
        np.array([0.01, 0.01, 0.01]),
        np.where(
            (ang < 0.44)[:, None],
            p.iris * (0.7 + 0.6 * (ang / 0.44))[:, None],
            np.array([0.78, 0.76, 0.72]),
        ),
    )
    eye.apply_translation(centre)
    _colour_mesh(eye, np.clip(ecol, 0, 1))
    return eye


def _ears(p: HeadParams, lv: _FaceLevels) -> _PairedFeature:
    """Ears on the sides of the head, with the ear roots the temples rest on."""
    ear_y = lv.eye_y - 0.012
    meshes: list[tuple[str, trimesh.Trimesh]] = []
    roots: dict[str, np.ndarray] = {}
    landmarks: dict[str, np.ndarray] = {}
    for side, sx in (("left", 1), ("right", -1)):
        side_pts = _surface(
            p,
            np.array([sx * np.pi / 2 + sx * 0.12]),
            np.array([np.arcsin(ear_y / p.b)]),
            with_eye_openings=False,
        )[0]
        ear = trimesh.creation.icosphere(subdivisions=3)
        ear.apply_scale([0.009, p.ear_h / 2, 0.017])
        ear.apply_transform(trimesh.transformations.rotation_matrix(sx * 0.25, [0, 1, 0]))
        ear.apply_transform(trimesh.transformations.rotation_matrix(-0.15, [1, 0, 0]))
        ear.apply_translation(side_pts + np.array([sx * 0.004, 0, -0.004]))
        _colour_mesh(ear, np.tile(p.skin * np.array([1.05, 0.92, 0.9]), (len(ear.vertices), 1)))
        meshes.append((f"ear_{side}", ear))
        roots[side] = side_pts + np.array([sx * 0.002, p.ear_h * 0.32, 0.006])
        landmarks[f"ear_{side}"] = roots[side]
    return _PairedFeature(meshes, roots, landmarks)


def _neck(p: HeadParams) -> trimesh.Trimesh:
    neck = trimesh.creation.cylinder(radius=p.neck_r, height=0.16, sections=48)
    neck.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    neck.apply_translation([0, -p.b * 0.55 - 0.08, -0.022])
    _colour_mesh(neck, np.tile(p.skin * 0.8, (len(neck.vertices), 1)))
    return neck


def _midface_landmarks(p: HeadParams, lv: _FaceLevels) -> dict[str, np.ndarray]:
    """Nose, mouth and chin points on the skin."""
    tip_y, my = lv.nose_tip_y, lv.mouth_y
    return dict(
        nose_bridge=_front_xyz(p, 0.0, lv.eye_y + 0.003),
        nose_tip=_front_xyz(p, 0.0, tip_y + 0.002),
        subnasale=_front_xyz(p, 0.0, tip_y - 0.007),
        mouth_left=_front_xyz(p, p.mouth_w, my),
        mouth_right=_front_xyz(p, -p.mouth_w, my),
        chin=_front_xyz(p, 0.0, my - 0.04),
    )


def _temple_width(p: HeadParams, lv: _FaceLevels) -> float:
    """The head's width across the temples (the bones behind the eyes), at eye height."""
    temple_pt = _surface(
        p, np.array([np.pi / 2 - 0.25]), np.array([np.arcsin(lv.eye_y / p.b)]), with_eye_openings=False
    )[0]
    return float(2 * abs(temple_pt[0]))


def build_head(seed: int) -> Head:
    """The head of identity `seed` (a fresh build; `head` caches)."""
    p = HeadParams(seed)
    lv = _face_levels(p)
    skin = _skin_surface(p)
    col = _skin_colours(p, lv, skin.verts)
    _colour_mesh(skin.mesh, np.clip(col, 0, 1))
    eyes, ears, neck = _eyes(p, lv), _ears(p, lv), _neck(p)
    grid_pts = skin.grid_pts
    hair = _hair_meshes(p, grid_pts, np.clip(col[: grid_pts.shape[0] * grid_pts.shape[1]], 0, 1))
    meshes = [("skin", skin.mesh), *eyes.meshes, *ears.meshes, ("neck", neck), *hair]
    landmarks = {**eyes.landmarks, **ears.landmarks, **_midface_landmarks(p, lv)}
    anchors = Anchors(
        pupil_left=eyes.points["left"],
        pupil_right=eyes.points["right"],
        nose_bridge=landmarks["nose_bridge"],
        ear_left=ears.points["left"],
        ear_right=ears.points["right"],
        head_width_m=_temple_width(p, lv),
    )
    skin_srgb = [round(float(v), 3) for v in (p.skin ** (1 / 2.2))]
    traits: dict[str, object] = {"hair_style": p.hair_style, "skin_srgb": skin_srgb}
    return Head(face_id=f"head-{seed}", meshes=meshes, anchors=anchors, landmarks=landmarks, traits=traits)


def _hair_mask(p: HeadParams, v: np.ndarray, *, for_shell: bool) -> np.ndarray:
    """0..1 hair coverage of points `v` on the head (scalp colour, or where the shell grows)."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    if p.hair_style == "bald":
        return np.zeros(len(v))
    front_line = p.eye_y + p.hairline + 0.012 * (np.abs(x) / p.a) ** 2
    back_floor = {"buzz": -0.035, "short": -0.04, "medium": -0.07, "long": -0.09, "bun": -0.045}[p.hair_style]
    side_line = p.eye_y + 0.025  # above the ears
    behind_ear = z < -0.03
    limit = np.where(z > 0.02, front_line, np.where(behind_ear, back_floor, side_line))
    soft = 0.004 if for_shell else 0.006
    mask = _smoothstep(limit - soft, limit + soft, y)
    return mask


def _hair_meshes(
    p: HeadParams, grid_pts: np.ndarray, skin_rgb: np.ndarray
) -> list[tuple[str, trimesh.Trimesh]]:
    """Hair as a shell over the scalp whose thickness and colour fade into the skin at the
    hairline (no hard edge following the mesh grid)."""
    if p.hair_style in ("bald", "buzz"):
        return []
    thickness = {"short": 0.007, "medium": 0.013, "long": 0.016, "bun": 0.008}[p.hair_style]
    flat = grid_pts.reshape(-1, 3)
    mask = _hair_mask(p, flat, for_shell=True)
    centre = np.array([0.0, 0.0, -0.01])
    direction = flat - centre
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    shell_pts = flat + direction * (thickness * mask**0.6 + 0.0008)[:, None]
    faces = _grid_faces(*grid_pts.shape[:2])
    keep = (mask[faces] > 0.01).any(axis=1)
    rng = np.random.default_rng(p.noise_seed + 1)
    strands = 1 + 0.08 * rng.standard_normal(len(flat))
    colour = skin_rgb * (1 - mask[:, None]) + p.hair[None, :] * strands[:, None] * mask[:, None]
    shell = trimesh.Trimesh(shell_pts, faces[keep], process=False)
    _colour_mesh(shell, np.clip(colour, 0, 1))
    shell.remove_unreferenced_vertices()
    out = [("hair", shell)]
    if p.hair_style == "bun":
        bun = trimesh.creation.icosphere(subdivisions=3, radius=0.032)
        bun.apply_translation([0, p.b * 0.55, -p.c * 0.9])
        _colour_mesh(bun, np.tile(p.hair, (len(bun.vertices), 1)))
        out.append(("hair_bun", bun))
    return out
