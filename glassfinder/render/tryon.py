"""The virtual try-on renderer: an eyewear asset fitted on a face, rendered offscreen by pyrender.

One reusable OffscreenRenderer per process (a pyrender mesh binds to one GL context). Output is
premultiplied RGBA (pyrender's blending is fixed so a lens over nothing keeps alpha a, not a^2,
and a lens in front of the frame does not make the frame see-through), composited "over" the
background. Lenses tint what is behind them: clear lenses show the eyes, sunglasses darken them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh
from PIL import Image

from glassfinder.catalog.convention import part_of
from glassfinder.heads.base import Head
from glassfinder.heads.photos import CROP_PX, PhotoFace, generic_head, head_pose_matrix
from glassfinder.lru import BoundedCache
from glassfinder.render.backgrounds import background
from glassfinder.render.fit import Fit, fit_frame, part_vertices
from glassfinder.render.preview import _look_at, asset_meshes
from glassfinder.render.pyrender_fixes import GL, pyrender
from glassfinder.render.spec import AS_AUTHORED, MaterialDraw, ViewParams


class _OrderedSet(dict):
    """A set that iterates in insertion order (pyrender iterates its node sets when it binds
    lights and sorts meshes; with plain sets that order follows memory addresses)."""

    def add(self, item: object) -> None:
        self[item] = None

    def remove(self, item: object) -> None:
        del self[item]

    def __or__(self, other: object) -> _OrderedSet:
        out = _OrderedSet(self)
        for item in other:  # type: ignore[attr-defined]
            out.add(item)
        return out


class DeterministicScene(pyrender.Scene):
    """A pyrender Scene whose lights and meshes are visited in the order they were added, so the
    same scene renders the same bytes in every process."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in (
            "_nodes",
            "_mesh_nodes",
            "_point_light_nodes",
            "_spot_light_nodes",
            "_directional_light_nodes",
            "_camera_nodes",
        ):
            setattr(self, name, _OrderedSet())


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """Approximate light colour of a black body at `kelvin`, normalised to max 1 (linear)."""
    t = kelvin / 100.0
    r = 1.0 if t <= 66 else np.clip(1.2929 * (t - 60) ** -0.1332, 0, 1)
    g = np.clip(0.3901 * np.log(t) - 0.6318, 0, 1) if t <= 66 else np.clip(1.1299 * (t - 60) ** -0.0755, 0, 1)
    b = 1.0 if t >= 66 else (0.0 if t <= 19 else np.clip(0.5432 * np.log(t - 10) - 1.1963, 0, 1))
    rgb = np.array([r, g, b], float) ** 2.2
    return rgb / rgb.max()


@dataclass
class RenderedView:
    rgb: np.ndarray  # (h, w, 3) uint8
    # Projected points (a procedural head's eyes and landmarks, every glasses box) are in window
    # coordinates (pixel i spans [i, i+1)), see window_to_pixel_index; a photo's eyes and
    # landmarks come from its analysis, in pixel-index coordinates scaled to the render.
    eyes_xy: np.ndarray  # (2, 2) subject's left eye, right eye, pixels
    landmarks_xy: np.ndarray  # (k, 2) pixels, in `landmark_names` order
    landmark_names: list[str]
    glasses_box_xyxy: np.ndarray  # (4,) pixels
    alpha: np.ndarray  # (h, w) float coverage of head + glasses (before the background)

    def encode(self, fmt: str = "png", quality: int = 92, *, with_alpha: bool = False) -> bytes:
        """PNG or JPEG bytes; with_alpha: a PNG whose fourth channel is `alpha` (a glasses layer)."""
        buf = io.BytesIO()
        pixels = self.rgb
        if with_alpha:
            pixels = np.dstack([self.rgb, np.clip(self.alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)])
        img = Image.fromarray(pixels)
        if fmt == "png":
            img.save(buf, format="PNG", optimize=False, compress_level=1)  # 4x faster than 6, ~15% larger
        else:
            img.save(buf, format="JPEG", quality=quality, subsampling=0)
        return buf.getvalue()


class AssetMeshes:
    """pyrender meshes of one asset, grouped by role, plus its part vertices for fitting."""

    def __init__(self, scene: trimesh.Scene) -> None:
        self.parts = part_vertices(scene)
        self.meshes: list[tuple[str, pyrender.Mesh, np.ndarray]] = []
        self.lens_materials: list[pyrender.MetallicRoughnessMaterial] = []
        # pyrender copies materials: keep its copies to recolour, and the frame's own values to
        # return to (an asset is reused across views, some drawn with other materials).
        self.frame_materials: list[tuple[pyrender.MetallicRoughnessMaterial, _Own]] = []
        for node, mesh, pose in asset_meshes(scene):
            role = part_of(node) or "frame"
            for prim in mesh.primitives:
                if role.startswith("lens"):
                    prim.material.alphaMode = "BLEND"
                    self.lens_materials.append(prim.material)
                elif isinstance(prim.material, pyrender.MetallicRoughnessMaterial):
                    self.frame_materials.append((prim.material, _Own.of(prim.material)))
            self.meshes.append((role, mesh, pose))

    def set_look(
        self, rgba: tuple[float, float, float, float], style: str, material: MaterialDraw | None = None
    ) -> None:
        """The lenses' colour and style, and the frame's materials: its own, or `material`'s draw."""
        lens = material or AS_AUTHORED
        lens_rgba = np.asarray(rgba, float)
        lens_rgba[3] = float(np.clip(lens_rgba[3] * lens.lens_opacity_scale, 0.02, 0.97))
        for mat in self.lens_materials:
            mat.baseColorFactor = lens_rgba
            mat.metallicFactor = 0.85 if style == "mirrored" else lens.lens_reflect
            mat.roughnessFactor = 0.08 if style == "mirrored" else 0.04
        for mat, own in self.frame_materials:
            own.apply(mat, material)


@dataclass(frozen=True)
class _Own:
    """A frame material's values as the asset gave them."""

    base: np.ndarray
    metallic: float
    roughness: float

    @classmethod
    def of(cls, mat: pyrender.MetallicRoughnessMaterial) -> _Own:
        return cls(
            np.array(mat.baseColorFactor, float), float(mat.metallicFactor), float(mat.roughnessFactor)
        )

    def apply(self, mat: pyrender.MetallicRoughnessMaterial, draw: MaterialDraw | None) -> None:
        if draw is None:
            mat.baseColorFactor = self.base.copy()
            mat.metallicFactor, mat.roughnessFactor = self.metallic, self.roughness
            return
        base = self.base.copy()
        base[:3] = np.clip(np.clip(base[:3], 0, 1) ** draw.colour_gamma * draw.colour_gain, 0, 1)
        mat.baseColorFactor = base
        mat.metallicFactor = float(np.clip(self.metallic + draw.metallic_add, 0, 1))
        mat.roughnessFactor = self.roughness if draw.roughness is None else draw.roughness


class TryOnRenderer:
    """Renders views; caches heads and assets it has built (LRU)."""

    def __init__(self, size_px: int, *, head_cache: int = 16) -> None:
        self.size_px = size_px
        self._renderer = pyrender.OffscreenRenderer(size_px, size_px)
        self._heads: BoundedCache[str, list[pyrender.Mesh]] = BoundedCache(head_cache)

    def close(self) -> None:
        self._renderer.delete()

    def set_size(self, size_px: int) -> None:
        """Render at another size with the same GL context (one context per process: EGL
        terminates the shared display when a renderer is deleted)."""
        self.size_px = size_px
        self._renderer.viewport_width = self._renderer.viewport_height = size_px

    def render_rgba(self, scene: pyrender.Scene) -> np.ndarray:
        """(size, size, 4) uint8 premultiplied RGBA of any scene, on this process's one GL context
        (packshots render here too: a second renderer per process would break EGL, see set_size)."""
        rgba, _ = self._renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
        return np.asarray(rgba)

    def gl_renderer(self) -> str:
        return GL.glGetString(GL.GL_RENDERER).decode()

    def _head_meshes(self, head: Head) -> list[pyrender.Mesh]:
        meshes = self._heads.get(head.face_id)
        if meshes is None:
            meshes = [pyrender.Mesh.from_trimesh(m, smooth=True) for _, m in head.meshes]
            self._heads.put(head.face_id, meshes)
        return meshes

    def render(
        self,
        asset: AssetMeshes | None,
        head: Head,
        view: ViewParams,
        *,
        with_head: bool = True,
        skip_roles: frozenset[str] = frozenset(),
    ) -> RenderedView:
        """One view of `asset` (None: the bare face) on `head`; `skip_roles` leaves parts out."""
        size = self.size_px
        head_pose = np.eye(4)
        head_pose[:3, :3] = trimesh.transformations.euler_matrix(
            np.radians(view.pitch_deg), np.radians(view.yaw_deg), np.radians(view.roll_deg), "sxyz"
        )[:3, :3]
        scene = DeterministicScene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[view.ambient] * 3)
        if with_head:
            for mesh in self._head_meshes(head):
                scene.add(mesh, pose=head_pose)
        fit: Fit | None = None
        if asset is not None:
            fit = fit_frame(asset.parts, head.anchors, slide_m=view.slide_m, tilt_deg=view.tilt_deg)
            asset.set_look(view.lens_rgba, view.lens_style, view.material)
            for role, mesh, pose in asset.meshes:
                if role in skip_roles:
                    continue
                side = role.removeprefix("temple_") if role.startswith("temple_") else None
                local = fit.temple_poses.get(side, fit.front_pose) if side else fit.front_pose
                scene.add(mesh, pose=head_pose @ local @ pose)
        pupils = (head.anchors.pupil_left + head.anchors.pupil_right) / 2
        target = head_pose[:3, :3] @ pupils + np.array([view.aim_offset[0], view.aim_offset[1] - 0.02, 0.0])
        distance = view.framing_m / (2 * np.tan(np.radians(view.yfov_deg) / 2))
        cam_pose = _look_at(target + np.array([0.0, 0.0, distance]), target)
        scene.add(
            pyrender.PerspectiveCamera(yfov=np.radians(view.yfov_deg), znear=0.05, zfar=5.0), pose=cam_pose
        )
        light_rgb = kelvin_to_rgb(view.colour_temp_k)
        scene.add(
            pyrender.DirectionalLight(color=light_rgb, intensity=view.key_light),
            pose=_look_at(np.asarray(view.key_dir), np.zeros(3)),
        )
        fill_dir = np.array([-view.key_dir[0], 0.2, 1.0])
        scene.add(
            pyrender.DirectionalLight(color=np.ones(3), intensity=view.fill_light),
            pose=_look_at(fill_dir, np.zeros(3)),
        )
        rgba, _ = self._renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
        premult = rgba[..., :3].astype(np.float32) / 255.0
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        bg = background(view.background, size, view.background_seed)
        out = premult + (1.0 - alpha[..., None]) * bg
        rgb = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)

        project = _projector(cam_pose, view.yfov_deg, size)
        names, pts = head.landmark_array()
        landmarks = project((head_pose[:3, :3] @ pts.T).T)
        eyes = project(
            (head_pose[:3, :3] @ np.stack([head.anchors.pupil_left, head.anchors.pupil_right]).T).T
        )
        box = np.zeros(4, np.float32)
        if asset is not None and fit is not None:
            front = np.vstack([asset.parts["frame"], asset.parts["lens_left"], asset.parts["lens_right"]])
            front = front[front[:, 2] > front[:, 2].max() - 0.03]
            world = (head_pose[:3, :3] @ (fit.front_pose[:3, :3] @ front.T + fit.front_pose[:3, 3:4])).T
            px = project(world)
            box = np.array([px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max()], np.float32)
        return RenderedView(rgb, eyes.astype(np.float32), landmarks.astype(np.float32), names, box, alpha)


def _occluder_mesh(mesh: trimesh.Trimesh) -> pyrender.Mesh:
    """A mesh that draws nothing (RGBA 0,0,0,0 = the cleared background) but writes depth, so
    the glasses behind it vanish with anti-aliased edges (built raw: Mesh.from_trimesh would
    drop the vertex colours)."""
    material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[0.0, 0.0, 0.0, 0.0], alphaMode="OPAQUE")
    prim = pyrender.Primitive(
        positions=np.asarray(mesh.vertices, np.float32),
        normals=np.asarray(mesh.vertex_normals, np.float32),
        indices=np.asarray(mesh.faces, np.uint32),
        color_0=np.zeros((len(mesh.vertices), 4), np.float32),
        material=material,
    )
    return pyrender.Mesh([prim])


def window_to_pixel_index(xy: np.ndarray) -> np.ndarray:
    """Points from the renderer's window coordinates (OpenGL: pixel i spans [i, i+1), so its
    centre is at i + 0.5) to pixel-index coordinates (pixel i's centre at i), the convention of
    numpy indexing, OpenCV's warpAffine and every photo-side mapping (heads.photos.crop_mapping).
    A network trained on window coordinates places every point half a render pixel right and
    low on photos: measured on the real-face benchmark as a downward eye bias."""
    return np.asarray(xy, np.float32) - np.float32(0.5)


def _projector(cam_pose: np.ndarray, yfov_deg: float, size: int) -> Callable[[np.ndarray], np.ndarray]:
    view = np.linalg.inv(cam_pose)
    f = (size / 2) / np.tan(np.radians(yfov_deg) / 2)

    def project(points: np.ndarray) -> np.ndarray:
        cam = points @ view[:3, :3].T + view[:3, 3]
        z = -cam[:, 2]
        return np.stack([size / 2 + f * cam[:, 0] / z, size / 2 - f * cam[:, 1] / z], axis=1)

    return project


class PhotoRenderer:
    """Glasses on photo-bank faces: the generic head, posed by the photo's solvePnP, occludes."""

    def __init__(self, renderer: TryOnRenderer) -> None:
        self.renderer = renderer
        self.head = generic_head()
        self.occluders = [
            _occluder_mesh(m) for name, m in self.head.meshes if name == "skin" or name.startswith("ear")
        ]

    def render(
        self, asset: AssetMeshes, face: PhotoFace, crop_rgb: np.ndarray, view: ViewParams
    ) -> RenderedView:
        size = self.renderer.size_px
        s = size / CROP_PX
        head_pose = head_pose_matrix(face)
        scene = DeterministicScene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[view.ambient] * 3)
        for mesh in self.occluders:
            scene.add(mesh, pose=head_pose)
        fit = fit_frame(asset.parts, self.head.anchors, slide_m=view.slide_m, tilt_deg=view.tilt_deg)
        asset.set_look(view.lens_rgba, view.lens_style, view.material)
        for role, mesh, pose in asset.meshes:
            side = role.removeprefix("temple_") if role.startswith("temple_") else None
            local = fit.temple_poses.get(side, fit.front_pose) if side else fit.front_pose
            scene.add(mesh, pose=head_pose @ local @ pose)
        f = face.focal_px * s
        scene.add(
            pyrender.IntrinsicsCamera(fx=f, fy=f, cx=size / 2, cy=size / 2, znear=0.05, zfar=5.0),
            pose=np.eye(4),
        )
        scene.add(
            pyrender.DirectionalLight(color=kelvin_to_rgb(view.colour_temp_k), intensity=view.key_light),
            pose=_look_at(np.asarray(view.key_dir), np.zeros(3)),
        )
        scene.add(
            pyrender.DirectionalLight(intensity=view.fill_light),
            pose=_look_at(np.array([0.0, 0.2, 1.0]), np.zeros(3)),
        )
        rgba, _ = self.renderer._renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
        premult = rgba[..., :3].astype(np.float32) / 255.0
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        photo = (
            np.asarray(Image.fromarray(crop_rgb).resize((size, size), Image.Resampling.LANCZOS), np.float32)
            / 255.0
        )
        rgb = np.clip((premult + (1.0 - alpha[..., None]) * photo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        front = np.vstack([asset.parts["frame"], asset.parts["lens_left"], asset.parts["lens_right"]])
        front = front[front[:, 2] > front[:, 2].max() - 0.03]
        world = (
            head_pose[:3, :3] @ (fit.front_pose[:3, :3] @ front.T + fit.front_pose[:3, 3:4])
        ).T + head_pose[:3, 3]
        px = np.stack(
            [size / 2 + f * world[:, 0] / -world[:, 2], size / 2 - f * world[:, 1] / -world[:, 2]], 1
        )
        box = np.array([px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max()], np.float32)
        eyes = np.array([face.eye_left_xy, face.eye_right_xy], np.float32) * s
        landmarks = np.asarray(face.landmarks5_xy, np.float32) * s
        names = ["eye_left_outer", "eye_left_inner", "eye_right_outer", "eye_right_inner", "subnasale"]
        return RenderedView(rgb, eyes, landmarks, names, box, alpha)
