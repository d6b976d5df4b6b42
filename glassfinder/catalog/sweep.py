"""Tubes swept along 3D curves: rims, bridges, temples and wires, with analytic smooth normals.

A profile (m, 2) is placed in the plane spanned by two per-point axes u and v; the ring seam is
duplicated so texture coordinates run 0..1 without wrapping, and normals come from the profile's
own outward normals, so the duplicated seam shades exactly like its neighbours.
"""

from __future__ import annotations

import numpy as np
import trimesh


def profile_superellipse(width_mm: float, depth_mm: float, n: float = 4.0, points: int = 14) -> np.ndarray:
    """A rounded-rectangle (n > 2) or ellipse (n = 2) cross-section (points, 2), counter-clockwise."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack(
        [np.sign(c) * np.abs(c) ** (2 / n) * width_mm / 2, np.sign(s) * np.abs(s) ** (2 / n) * depth_mm / 2],
        1,
    )


def _profile_normals(profile: np.ndarray) -> np.ndarray:
    tangent = np.roll(profile, -1, axis=0) - np.roll(profile, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    return normal / np.linalg.norm(normal, axis=1, keepdims=True)


def frame_axes(centre: np.ndarray, up: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-point axes (u, v) perpendicular to the curve: v stays as close to `up` as it can."""
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    up_vec = np.array([0.0, 1.0, 0.0]) if up is None else up
    u = np.cross(tangent, up_vec)
    bad = np.linalg.norm(u, axis=1) < 1e-6
    u[bad] = np.cross(tangent[bad], [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(u, tangent)
    return u, v


def sweep(
    centre: np.ndarray,
    axis_u: np.ndarray,
    axis_v: np.ndarray,
    profile: np.ndarray,
    *,
    closed: bool,
    scale: np.ndarray | None = None,
    mm_per_texture: float = 40.0,
) -> trimesh.Trimesh:
    """Sweep `profile` (m, 2) along `centre` (n, 3); scale (n,) or (n, 2) tapers the profile.

    Texture u runs one tile per `mm_per_texture` of length, so patterns keep one scale on every part.
    """
    n, m = len(centre), len(profile)
    sc = (
        np.ones((n, 2)) if scale is None else np.broadcast_to(np.asarray(scale, float).reshape(n, -1), (n, 2))
    )
    ring_idx = np.r_[np.arange(n), 0] if closed else np.arange(n)
    prof = np.vstack([profile, profile[:1]])  # seam duplicated for texture coordinates
    pn = _profile_normals(profile)
    pn = np.vstack([pn, pn[:1]])
    c, u, v, s = centre[ring_idx], axis_u[ring_idx], axis_v[ring_idx], sc[ring_idx]
    rings = len(ring_idx)
    verts = (
        c[:, None, :]
        + u[:, None, :] * (prof[None, :, 0:1] * s[:, None, 0:1])
        + v[:, None, :] * (prof[None, :, 1:2] * s[:, None, 1:2])
    )
    normals = (
        u[:, None, :] * pn[None, :, 0:1] * s[:, None, 1:2]
        + v[:, None, :] * pn[None, :, 1:2] * s[:, None, 0:1]
    )
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    seg = np.linalg.norm(np.diff(c, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(seg)])
    uv = np.stack(
        [
            np.repeat(along / mm_per_texture, m + 1),
            np.tile(np.linspace(0, 1, m + 1), rings),
        ],
        axis=1,
    )
    a = (np.arange(rings - 1)[:, None] * (m + 1) + np.arange(m)[None, :]).ravel()
    faces = np.concatenate([np.stack([a, a + m + 1, a + 1], 1), np.stack([a + 1, a + m + 1, a + m + 2], 1)])
    verts = verts.reshape(-1, 3)
    normals = normals.reshape(-1, 3)
    if not closed:  # flat caps at both ends, with their own copies of the end rings
        cap_v: list[np.ndarray] = []
        cap_n: list[np.ndarray] = []
        cap_uv: list[np.ndarray] = []
        cap_f: list[list[int]] = []
        for end, sign in ((0, -1.0), (rings - 1, 1.0)):
            t = c[min(end + 1, rings - 1)] - c[max(end - 1, 0)]
            cap_normal = t / np.linalg.norm(t) * sign
            ring = np.arange(m) + end * (m + 1)
            base = len(verts) + len(cap_v)
            cap_v.append(c[end])
            cap_v.extend(verts[ring])
            cap_n.extend([cap_normal] * (m + 1))
            cap_uv.append(uv[end * (m + 1)])
            cap_uv.extend(uv[ring])
            for j in range(m):
                a0, a1 = base + 1 + j, base + 1 + (j + 1) % m
                cap_f.append([base, a0, a1] if sign > 0 else [base, a1, a0])
        verts = np.vstack([verts, cap_v])
        normals = np.vstack([normals, cap_n])
        uv = np.vstack([uv, cap_uv])
        faces = np.vstack([faces, cap_f])
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, vertex_normals=normals, process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv)
    fix_winding_to_normals(mesh)
    return mesh


def fix_winding_to_normals(mesh: trimesh.Trimesh) -> None:
    """Flip faces whose winding disagrees with the analytic vertex normals (culling-safe)."""
    normals = mesh.vertex_normals.copy()
    face_n = mesh.face_normals
    agree = np.einsum("ij,ij->i", face_n, normals[mesh.faces].mean(axis=1)) >= 0
    if not agree.all():
        faces = mesh.faces.copy()
        faces[~agree] = faces[~agree][:, ::-1]
        mesh.faces = faces
        mesh.vertex_normals = normals  # type: ignore[method-assign]  # trimesh caches assigned normals
