"""Product previews of eyewear assets on a plain background (contact sheets, catalogue pages).

Meshes are built from each node's own geometry and material (pyrender's scene importer drops
node names and forces every material to BLEND), so opaque frames stay opaque and lenses blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from glassfinder.render.pyrender_fixes import pyrender


@dataclass(frozen=True)
class View:
    """Camera orbit around the asset: yaw/pitch in degrees, distance in metres."""

    yaw_deg: float
    pitch_deg: float
    distance_m: float = 0.30
    yfov_deg: float = 30.0


FRONT = View(0.0, 0.0)
THREE_QUARTER = View(35.0, 8.0)


def _pyrender_material(mat: trimesh.visual.material.PBRMaterial) -> pyrender.MetallicRoughnessMaterial:
    texture = None
    if mat.baseColorTexture is not None:
        texture = pyrender.Texture(
            source=np.asarray(mat.baseColorTexture.convert("RGBA")), source_channels="RGBA"
        )
    factor = np.asarray(mat.baseColorFactor if mat.baseColorFactor is not None else [255] * 4, dtype=float)
    if factor.max() > 1.0:
        factor = factor / 255.0
    return pyrender.MetallicRoughnessMaterial(
        baseColorFactor=factor,
        metallicFactor=float(mat.metallicFactor or 0.0),
        roughnessFactor=float(mat.roughnessFactor if mat.roughnessFactor is not None else 0.5),
        baseColorTexture=texture,
        alphaMode=mat.alphaMode or "OPAQUE",
        doubleSided=bool(mat.doubleSided),
    )


def asset_meshes(scene: trimesh.Scene) -> list[tuple[str, pyrender.Mesh, np.ndarray]]:
    """(node name, pyrender mesh, world pose) for every geometry node of an asset scene."""
    out = []
    for node in scene.graph.nodes_geometry:
        pose, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        material = getattr(geom.visual, "material", None)
        pmat = (
            _pyrender_material(material)
            if isinstance(material, trimesh.visual.material.PBRMaterial)
            else None
        )
        out.append((node, pyrender.Mesh.from_trimesh(geom, material=pmat, smooth=True), pose))
    return out


class PreviewRenderer:
    """One reusable offscreen renderer (a pyrender mesh binds to one GL context)."""

    def __init__(self, size_px: int = 384) -> None:
        self.size_px = size_px
        self._renderer = pyrender.OffscreenRenderer(size_px, size_px)

    def render(
        self, scene: trimesh.Scene, view: View, background: tuple[float, float, float] = (0.96, 0.96, 0.95)
    ) -> np.ndarray:
        """(size, size, 3) uint8 image of the asset seen from `view`."""
        ps = pyrender.Scene(bg_color=[*background, 1.0], ambient_light=[0.35, 0.35, 0.35])
        for _, mesh, pose in asset_meshes(scene):
            ps.add(mesh, pose=pose)
        yaw, pitch = np.radians(view.yaw_deg), np.radians(view.pitch_deg)
        target = np.array([0.0, -0.005, -0.03])
        eye = target + view.distance_m * np.array(
            [np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)]
        )
        ps.add(pyrender.PerspectiveCamera(yfov=np.radians(view.yfov_deg)), pose=_look_at(eye, target))
        for direction, intensity in (
            ((0.3, 0.6, 1.0), 3.0),
            ((-0.8, 0.2, 0.6), 1.5),
            ((0.0, -0.5, -1.0), 1.0),
        ):
            ps.add(
                pyrender.DirectionalLight(intensity=intensity),
                pose=_look_at(np.asarray(direction), np.zeros(3)),
            )
        colour, _ = self._renderer.render(ps)
        return np.asarray(colour[..., :3])

    def close(self) -> None:
        self._renderer.delete()


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    forward = eye - target
    forward = forward / np.linalg.norm(forward)
    right = np.cross([0.0, 1.0, 0.0], forward)
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, forward, eye
    return pose
