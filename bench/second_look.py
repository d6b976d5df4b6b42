"""The second look: catalogue frames composited onto real photos by a path independent of training.

Evaluation that uses the same renderer as training measures how well the model learnt that
renderer. This module makes query photos that share no shading, lens, lighting, placement or
damage code with the product's try-on renderer (glassfinder/render/tryon.py, render/fit.py) or
its augmentations (glassfinder/embed/augment.py), so a model cannot score well here by having
learnt their habits. It lives in bench/, which nothing in the glassfinder package can import, and
tests/test_second_look.py checks that it imports none of those modules.

What it does, per photo:
1. the glasses layer alone: the catalogue's GLB read with trimesh, its materials converted by
   this module's own rules (base colour read as display sRGB, glossier plastics made rougher,
   translucent acetate kept partly see-through), rendered with pyrender under its own lights (a
   key spot light on the photo's brighter side, a fill, little ambient) at 2x and area-downsampled
   (anti-aliased coverage), plus a segmentation pass that says which pixel is frame, temple or
   which lens;
2. its own tone curve: exposure matched to the skin around the eyes, a filmic S-curve, a
   pull towards the photo's white balance;
3. placed from the wearer's eyes (hand-marked pupils, or dlib's 5 points), a small face first
   brought to a phone photo's resolution: the pupil line gives roll and scale (the wearer's
   pupil distance in metres is drawn, so frames come out at true size), the nose gives yaw;
   pupils sit a few millimetres above the lens centres;
4. composited in 2D: a soft contact shadow cast on the face, temples hidden where they pass
   behind the head (a feathered face ellipse), lenses that refract (a small magnification about
   each lens centre and a slight blur of what is behind), tint, and reflect (a window gradient,
   a specular streak, a blurred mirror of the room), the frame on top;
5. its own phone damage, harsher than the benches' usual set: white balance and exposure
   swings, vignetting, motion blur or defocus, reframing and rescaling, luma and chroma noise,
   the sharpening halos of phone ISPs, and JPEG at quality 30-75 with 4:2:0 chroma, sometimes
   twice.

The true pupils are carried through every geometric step, so eye error is measured on each
photo. Everything random comes from the generator passed in.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import trimesh
from PIL import Image

#: Frame-part roles by GLB node name (the asset convention: frame, lens_left, lens_right,
#: temple_left, temple_right, nose_pads; sub-nodes like frame.hinge keep their prefix's role).
ROLE_IDS = {"frame": 1, "temple": 2, "lens_left": 3, "lens_right": 4}
#: Lens looks of products whose lenses are the shopper's choice (palette products): this look's
#: own palette, not the render specs'. (name, rgb, opacity, reflectance range)
OWN_CLEAR_LENSES = (
    ("clear AR", (0.97, 0.98, 1.00), 0.04, (0.02, 0.06)),
    ("clear uncoated", (0.96, 0.97, 0.98), 0.06, (0.07, 0.13)),
    ("blue-light", (0.93, 0.95, 1.00), 0.12, (0.05, 0.10)),
    ("light photochromic", (0.55, 0.55, 0.58), 0.30, (0.05, 0.10)),
)


def _role(node: str) -> str:
    base = node.split(".")[0]
    if base.startswith("temple"):
        return "temple"
    if base in ("lens_left", "lens_right"):
        return base
    return "frame"


@dataclass
class Glasses:
    """One asset read for this look: trimesh parts by role and this look's material for each."""

    parts: list[tuple[str, trimesh.Trimesh, dict[str, Any]]]
    lens_centres: dict[str, np.ndarray]  # role -> (3,) metres, asset coordinates

    @classmethod
    def from_glb(cls, data: bytes, *, colour_as_srgb: bool = True) -> Glasses:
        """colour_as_srgb=False reads base colours as the asset means them (linear): only the
        gap decomposition uses it, to measure what this look's colour reading alone costs."""
        scene = trimesh.load_scene(io.BytesIO(data), file_type="glb")
        parts: list[tuple[str, trimesh.Trimesh, dict[str, Any]]] = []
        lens_pts: dict[str, list[np.ndarray]] = {}
        for node in scene.graph.nodes_geometry:
            transform, geom = scene.graph[node]
            source = scene.geometry[geom]
            # Both windings: pyrender culls back faces in its segmentation pass whatever the
            # material says, and a lens may face either way.
            faces = np.asarray(source.faces)
            mesh = trimesh.Trimesh(
                np.asarray(source.vertices),
                np.vstack([faces, faces[:, ::-1]]),
                visual=source.visual.copy(),
                process=False,
            )
            mesh.apply_transform(transform)
            role = _role(node)
            parts.append((role, mesh, _own_material(mesh, colour_as_srgb)))
            if role.startswith("lens"):
                lens_pts.setdefault(role, []).append(np.asarray(mesh.vertices))
        centres = {}
        for role, pts in lens_pts.items():
            p = np.concatenate(pts)
            centres[role] = (p.min(axis=0) + p.max(axis=0)) / 2
        return cls(parts, centres)


def _own_material(mesh: trimesh.Trimesh, colour_as_srgb: bool = True) -> dict[str, Any]:
    """This look's reading of a glTF material: colour as display sRGB (linearised for the
    renderer), plastics rougher than authored (photos rarely show mirror-sharp highlights),
    metals kept metallic, and the authored alpha turned into an opacity for the 2D composite."""
    mat = getattr(mesh.visual, "material", None)
    rgba = np.array([200, 200, 200, 255], float)
    metallic, rough, texture = 0.0, 0.5, None
    if mat is not None:
        image = getattr(mat, "baseColorTexture", None)
        if image is not None:  # a pattern (tortoiseshell, havana): read as sRGB, alpha dropped
            texture = np.asarray(image.convert("RGB"))
        base = getattr(mat, "baseColorFactor", None)
        if base is not None:
            rgba = np.asarray(base, float)
        metallic = float(getattr(mat, "metallicFactor", None) or 0.0)
        rough = float(getattr(mat, "roughnessFactor", None) or 0.5)
    rgba = rgba / 255.0 if rgba.max() > 1.0 else rgba
    srgb = np.clip(rgba[:3], 0, 1)
    linear = srgb
    if colour_as_srgb:
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    if metallic > 0.5:
        return {
            "rgb": linear,
            "texture": texture,
            "metallic": 0.9,
            "roughness": max(0.22, rough),
            "opacity": 1.0,
        }
    return {
        "rgb": linear,
        "texture": texture,
        "metallic": 0.0,
        "roughness": float(np.clip(rough + 0.2, 0.3, 0.75)),
        "opacity": float(0.4 + 0.6 * np.clip(rgba[3], 0, 1)),
    }


@dataclass
class Layer:
    """The glasses rendered alone, in layer pixels: premultiplied colour and coverage per role."""

    rgb: np.ndarray  # (s, s, 3) float, premultiplied by coverage, display-referred
    cover: dict[str, np.ndarray]  # role -> (s, s) float coverage (frame, temple, lens_left, lens_right)
    opacity: np.ndarray  # (s, s) float: the material opacity of what covers each pixel
    px_per_m: float
    centre_xy: np.ndarray  # where the asset's origin (bridge centre) projects
    project: Any = field(repr=False)  # (n, 3) asset metres -> (n, 2) layer pixels


class LayerRenderer:
    """Renders glasses layers with one offscreen context (pyrender meshes bind to one context)."""

    def __init__(self) -> None:
        from glassfinder.render.gl import select_platform

        select_platform()  # the GL platform (EGL/OSMesa) only: nothing of the try-on renderer
        import pyrender

        self._pr = pyrender
        self._renderer = pyrender.OffscreenRenderer(64, 64)

    def close(self) -> None:
        self._renderer.delete()

    def render(
        self,
        glasses: Glasses,
        *,
        px_per_m: float,
        yaw_deg: float,
        pitch_deg: float,
        key_azimuth_deg: float,
        rng: np.random.Generator,
    ) -> Layer:
        pr = self._pr
        size = int(np.clip(round(0.36 * px_per_m), 96, 900))
        ss = 2  # supersampling: coverage and edges come from area-averaging 2x2 samples
        big = size * ss
        distance = 0.6
        focal = px_per_m * distance * ss
        pose = np.eye(4)
        pose[:3, :3] = trimesh.transformations.euler_matrix(
            np.radians(pitch_deg), np.radians(yaw_deg), 0.0, "sxyz"
        )[:3, :3]
        scene = pr.Scene(bg_color=[0, 0, 0, 0], ambient_light=[0.08, 0.08, 0.09])
        nodes: dict[str, list[Any]] = {role: [] for role in ROLE_IDS}
        opacity_of: list[tuple[Any, float]] = []  # (node, this look's opacity of its material)
        for role, mesh, mat in glasses.parts:
            material = pr.MetallicRoughnessMaterial(
                baseColorFactor=[*mat["rgb"], 1.0],
                baseColorTexture=mat["texture"],
                metallicFactor=mat["metallic"],
                roughnessFactor=mat["roughness"],
                alphaMode="OPAQUE",
                doubleSided=True,
            )
            node = scene.add(pr.Mesh.from_trimesh(mesh, material=material, smooth=False), pose=pose)
            nodes[role].append(node)
            opacity_of.append((node, mat["opacity"]))
        cam = pr.IntrinsicsCamera(fx=focal, fy=focal, cx=big / 2, cy=big / 2, znear=0.05, zfar=3.0)
        cam_pose = np.eye(4)
        cam_pose[2, 3] = distance
        scene.add(cam, pose=cam_pose)
        # Own lights: a warm-or-cool key spot from the photo's brighter side, a dim fill.
        warmth = rng.uniform(-1, 1)
        key_rgb = np.array([1.0, 0.93, 0.84]) if warmth > 0 else np.array([0.88, 0.94, 1.0])
        az, el = np.radians(key_azimuth_deg), np.radians(rng.uniform(20, 50))
        key_pos = distance * 1.5 * np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        # Point-like lights fall off with distance squared: intensities are set per square metre
        # of their distance, so the irradiance on the glasses is what the numbers say.
        d2_key, fill_pos = float(key_pos @ key_pos), np.array([-key_pos[0], -0.2, 0.9])
        scene.add(
            pr.SpotLight(color=key_rgb, intensity=rng.uniform(1.6, 2.6) * d2_key, outerConeAngle=np.pi / 4),
            pose=_aim(key_pos),
        )
        scene.add(
            pr.PointLight(color=np.ones(3), intensity=rng.uniform(0.5, 1.0) * float(fill_pos @ fill_pos)),
            pose=_aim(fill_pos),
        )
        self._renderer.viewport_width = self._renderer.viewport_height = big
        lens_nodes = nodes["lens_left"] + nodes["lens_right"]
        opacity = dict(opacity_of)
        # Pass 1 and 2: frame and temples alone (lenses hidden: what is behind a lens shows
        # through it in the composite), colour, then role (red) and opacity (green) per pixel.
        for node in lens_nodes:
            node.mesh.is_visible = False
        colour, _ = self._renderer.render(scene)
        solid_map = {
            node: np.array([ROLE_IDS[role] * 40, round(opacity[node] * 250), 0], np.uint8)
            for role in ("frame", "temple")
            for node in nodes[role]
        }
        seg, _ = self._renderer.render(scene, flags=pr.RenderFlags.SEG, seg_node_map=solid_map)
        # Pass 3: the lenses alone, each its own id (a lens's rim is drawn over it later).
        for node in lens_nodes:
            node.mesh.is_visible = True
        lens_map = {
            node: np.array([ROLE_IDS[role] * 40, 0, 0], np.uint8)
            for role in ("lens_left", "lens_right")
            for node in nodes[role]
        }
        lens_seg, _ = self._renderer.render(scene, flags=pr.RenderFlags.SEG, seg_node_map=lens_map)
        ids = np.asarray(seg)[..., 0].astype(np.int32) // 40
        lens_ids = np.asarray(lens_seg)[..., 0].astype(np.int32) // 40
        cover = {
            "frame": _down(ids == 1, ss),
            "temple": _down(ids == 2, ss),
            "lens_left": _down(lens_ids == 3, ss),
            "lens_right": _down(lens_ids == 4, ss),
        }
        solid = _down(ids > 0, ss)
        rgb = _down(np.asarray(colour, np.float32) / 255.0 * (ids > 0)[..., None], ss)
        opac = _down(np.asarray(seg)[..., 1].astype(np.float32) / 250.0, ss)
        opac = np.where(solid > 1e-3, opac / np.maximum(solid, 1e-3), 1.0)

        def project(points: np.ndarray) -> np.ndarray:
            cam_pts = points @ pose[:3, :3].T
            z = distance - cam_pts[:, 2]
            f = focal / ss
            return np.stack([size / 2 + f * cam_pts[:, 0] / z, size / 2 - f * cam_pts[:, 1] / z], axis=1)

        return Layer(rgb, cover, opac, px_per_m, np.array([size / 2, size / 2]), project)


def _aim(position: np.ndarray) -> np.ndarray:
    """A light pose at `position` looking at the origin (-Z towards it)."""
    z = position / np.linalg.norm(position)
    x = np.cross([0.0, 1.0, 0.0], z)
    x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-6 else np.array([1.0, 0.0, 0.0])
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = position
    return pose


def _down(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average downsampling by an integer factor: (H, W[, C]) -> (H/f, W/f[, C]) float32."""
    img = np.asarray(image, np.float32)
    h, w = img.shape[0] // factor, img.shape[1] // factor
    img = img[: h * factor, : w * factor]
    shape = (h, factor, w, factor, *img.shape[2:])
    return img.reshape(shape).mean(axis=(1, 3))


# --- placement and 2D compositing -----------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where the glasses go on the photo, from the wearer's eyes (photo pixels)."""

    pupils: np.ndarray  # (2, 2) subject's left pupil (image right) first
    yaw_deg: float
    roll_deg: float
    ipd_px: float


def placement_from(pupils: np.ndarray, nose_xy: np.ndarray | None) -> Placement:
    """Roll and scale from the pupils; yaw from how far the nose base sits off the eye midline
    (it stands ~2 cm in front of the eyes, about a third of the pupil distance)."""
    left, right = np.asarray(pupils, float)
    d = left - right
    ipd = float(np.hypot(*d))
    roll = float(np.degrees(np.arctan2(d[1], d[0])))
    yaw = 0.0
    if nose_xy is not None:
        mid = (left + right) / 2
        off = float(np.dot(np.asarray(nose_xy) - mid, d / ipd))
        yaw = float(np.degrees(np.arcsin(np.clip(off / (0.33 * ipd), -0.6, 0.6))))
    return Placement(np.asarray(pupils, float), yaw, roll, ipd)


def _face_mask(shape: tuple[int, int], place: Placement, feather_px: float) -> np.ndarray:
    """A feathered ellipse over the face: where temples pass behind the head."""
    mid = place.pupils.mean(axis=0)
    roll = np.radians(place.roll_deg)
    down = np.array([-np.sin(roll), np.cos(roll)])
    centre = mid + down * 0.45 * place.ipd_px
    axes = (int(1.0 * place.ipd_px * np.cos(np.radians(place.yaw_deg)) + 1), int(1.55 * place.ipd_px))
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(
        mask,
        (round(centre[0] * 4), round(centre[1] * 4)),
        (axes[0] * 4, axes[1] * 4),
        place.roll_deg,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
        2,
    )
    return cv2.GaussianBlur(mask, (0, 0), max(0.5, feather_px))


def _tone(
    layer_rgb: np.ndarray, cover: np.ndarray, photo: np.ndarray, skin: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """This look's tone curve: exposure matched to the skin around the eyes, a filmic S-curve, a
    pull towards the photo's white balance. layer_rgb is premultiplied by `cover`."""
    straight = layer_rgb / np.maximum(cover[..., None], 1e-3)
    skin_px = photo[skin > 0.5]
    skin_lum = float(np.median(skin_px.mean(axis=1))) if len(skin_px) else 0.5
    gain = float(np.clip(skin_lum / 0.55, 0.7, 1.2)) * rng.uniform(0.9, 1.1)
    x = np.clip(straight * gain, 0, 1)
    a = rng.uniform(1.05, 1.35)  # S-curve steepness
    x = x**a / (x**a + (1 - x) ** a + 1e-6)
    if len(skin_px):
        cast = skin_px.mean(axis=0) / max(skin_px.mean(), 1e-3)
        x = x * (1 + 0.25 * (cast - 1))
    return np.clip(x, 0, 1) * cover[..., None]


def _warp(img: np.ndarray, m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.warpAffine(
        np.ascontiguousarray(img, np.float32), m, (shape[1], shape[0]), flags=cv2.INTER_LINEAR, borderValue=0
    )


def _lens_environment(shape: tuple[int, int], photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a lens reflects: a bright window gradient from above, a specular streak, and a
    heavily blurred mirror image of the room (the photo flipped)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = np.clip(1.0 - yy / (h * rng.uniform(0.25, 0.6)), 0, 1)[..., None] * np.array(
        [0.95, 0.97, 1.0], np.float32
    )
    angle = rng.uniform(-0.9, 0.9)
    dist = (xx - rng.uniform(0.3, 0.7) * w) * np.cos(angle) + (yy - rng.uniform(0.2, 0.5) * h) * np.sin(angle)
    streak = np.exp(-((dist / (rng.uniform(0.004, 0.015) * w)) ** 2))[..., None]
    room = cv2.GaussianBlur(photo[:, ::-1], (0, 0), max(2.0, 0.02 * w))
    return np.clip(0.5 * sky + 0.8 * streak + 0.6 * room, 0, 1.5)


def composite(
    photo_rgb: np.ndarray,
    glasses: Glasses,
    lens: tuple[str, tuple[float, float, float], float, tuple[float, float]],
    place: Placement,
    renderer: LayerRenderer,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(h, w, 3) uint8 photo wearing `glasses`, and what was drawn (for the record).

    lens: (name, rgb, opacity, reflectance range) of the lenses."""
    photo = photo_rgb.astype(np.float32) / 255.0
    h, w = photo.shape[:2]
    wearer_pd_m = rng.uniform(0.058, 0.068)
    px_per_m = place.ipd_px / wearer_pd_m
    # Key light on the photo's brighter side of the face.
    mid = place.pupils.mean(axis=0)
    half = int(max(4, 0.8 * place.ipd_px))
    y0, y1 = int(max(0, mid[1] - half)), int(min(h, mid[1] + half))
    xl = photo[y0:y1, int(max(0, mid[0] - 1.2 * half)) : int(mid[0])].mean()
    xr = photo[y0:y1, int(mid[0]) : int(min(w, mid[0] + 1.2 * half))].mean()
    key_az = (1 if xr > xl else -1) * rng.uniform(15, 60)
    yaw = place.yaw_deg + rng.normal(0, 3)
    layer = renderer.render(
        glasses, px_per_m=px_per_m, yaw_deg=yaw, pitch_deg=rng.normal(0, 3), key_azimuth_deg=key_az, rng=rng
    )
    # Where the pupil midpoint sits in the layer: a few mm above the lens-box centres.
    centres = np.array([glasses.lens_centres.get(r, np.zeros(3)) for r in ("lens_left", "lens_right")])
    above_m = rng.uniform(0.001, 0.007)
    anchor3 = np.array([[0.0, centres[:, 1].mean() + above_m, centres[:, 2].mean()]])
    anchor = layer.project(anchor3)[0]
    target = mid + rng.normal(0, 0.012 * place.ipd_px, 2)
    roll = place.roll_deg + rng.normal(0, 1.0)
    m = cv2.getRotationMatrix2D((float(anchor[0]), float(anchor[1])), -roll, 1.0)
    m[:, 2] += target - anchor
    rgb = _warp(layer.rgb, m, (h, w))
    cover = {role: np.clip(_warp(c, m, (h, w)), 0, 1) for role, c in layer.cover.items()}
    opacity = np.clip(_warp(layer.opacity, m, (h, w)), 0, 1)
    lens_px = {r: layer.project(glasses.lens_centres[r][None])[0] for r in glasses.lens_centres}
    lens_px = {r: m[:, :2] @ p + m[:, 2] for r, p in lens_px.items()}

    face = _face_mask((h, w), place, 0.05 * place.ipd_px)
    temple_vis = cover["temple"] * (1 - face)
    skin = face * (
        1 - np.clip(cover["frame"] + cover["lens_left"] + cover["lens_right"] + cover["temple"], 0, 1)
    )
    solid = np.clip(cover["frame"] + cover["temple"], 0, 1)
    toned = _tone(rgb, np.maximum(solid, 1e-3), photo, skin, rng)

    # Contact shadow: the frame and visible temples, shifted away from the key light, blurred.
    caster = np.clip(cover["frame"] + temple_vis + 0.25 * (cover["lens_left"] + cover["lens_right"]), 0, 1)
    k = rng.uniform(0.03, 0.08) * place.ipd_px
    shift = np.array([[1, 0, -np.sin(np.radians(key_az)) * k], [0, 1, k * rng.uniform(0.6, 1.2)]], np.float32)
    shadow = cv2.GaussianBlur(_warp(caster, shift, (h, w)), (0, 0), rng.uniform(0.03, 0.07) * place.ipd_px)
    out = photo * (1 - rng.uniform(0.25, 0.5) * (shadow * face)[..., None])

    # Temples behind the lenses, then the lenses over everything behind them, the frame on top.
    t_alpha = (temple_vis * opacity)[..., None]
    share_t = (temple_vis / np.maximum(solid, 1e-3))[..., None]
    out = out * (1 - t_alpha) + toned * share_t * opacity[..., None]
    name, tint, alpha, refl_range = lens
    env = _lens_environment((h, w), out, rng)
    blur_sigma = rng.uniform(0.3, 1.0) * max(1.0, place.ipd_px / 60)
    reflect = rng.uniform(*refl_range)
    for role in ("lens_left", "lens_right"):
        if role not in lens_px:
            continue
        c = lens_px[role]
        mag = rng.uniform(0.96, 1.03)  # minus lenses shrink what is behind, plus lenses enlarge
        ref = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), 0.0, 1.0 / mag)
        behind = cv2.GaussianBlur(_warp(out, ref, (h, w)), (0, 0), blur_sigma)
        transmit = (1 - alpha) + alpha * np.asarray(tint, np.float32) * 0.6
        rim = cv2.GaussianBlur(cover[role], (0, 0), max(1.0, 0.05 * place.ipd_px))
        fresnel = reflect * (1 + 1.5 * np.clip(cover[role] - rim, 0, 1) * 4)[..., None]
        lens_img = behind * transmit * (1 - fresnel) + fresnel * env
        a = cover[role][..., None]
        out = out * (1 - a) + lens_img * a
    f_alpha = (cover["frame"] * opacity)[..., None]
    share_f = (cover["frame"] / np.maximum(solid, 1e-3))[..., None]
    out = out * (1 - f_alpha) + toned * share_f * opacity[..., None]
    record = {
        "lens": name,
        "yaw_deg": round(yaw, 1),
        "roll_deg": round(roll, 1),
        "wearer_pd_m": round(wearer_pd_m, 4),
    }
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), record


# --- this look's phone damage --------------------------------------------------------------------------
def harsh_phone_damage(
    rgb: np.ndarray, keep_xyxy: tuple[float, float, float, float], rng: np.random.Generator
) -> tuple[bytes, np.ndarray]:
    """(JPEG bytes, 2x3 affine from input pixels to the damaged photo's; pixel centres at integers).

    keep_xyxy: a region (the face) the reframing must keep inside the picture."""
    img = rgb.astype(np.float32) / 255.0
    h, w = img.shape[:2]
    # Sensor-side: exposure, gamma, white balance, vignetting, then motion blur or defocus.
    img = np.clip(img * rng.uniform(0.7, 1.25), 0, 1) ** rng.uniform(0.85, 1.2)
    img = img * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img = img * (1 - rng.uniform(0.0, 0.4) * r2)[..., None]
    pick = rng.random()
    if pick < 0.4:  # hand shake: a line kernel
        length = int(rng.integers(2, 7))
        kernel = np.zeros((length * 2 + 1, length * 2 + 1), np.float32)
        ang = rng.uniform(0, np.pi)
        for t in np.linspace(-length, length, 4 * length + 1):
            kernel[round(length + t * np.sin(ang)), round(length + t * np.cos(ang))] = 1
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    elif pick < 0.7:  # missed focus: a disc
        radius = rng.uniform(1.0, 2.5)
        k = int(np.ceil(radius)) * 2 + 1
        disc = np.zeros((k, k), np.float32)
        cv2.circle(disc, (k // 2, k // 2), round(radius), 1.0, -1)
        img = cv2.filter2D(img, -1, disc / disc.sum())
    # Reframe around the face and rescale.
    x0k, y0k, x1k, y1k = keep_xyxy
    cw = int(np.clip(w * rng.uniform(0.6, 1.0), x1k - x0k + 8, w))
    ch = int(np.clip(h * rng.uniform(0.6, 1.0), y1k - y0k + 8, h))
    lo_x, hi_x = int(max(0, x1k - cw)), int(min(x0k, w - cw))
    lo_y, hi_y = int(max(0, y1k - ch)), int(min(y0k, h - ch))
    x0 = int(rng.integers(lo_x, max(lo_x, hi_x) + 1))
    y0 = int(rng.integers(lo_y, max(lo_y, hi_y) + 1))
    img = img[y0 : y0 + ch, x0 : x0 + cw]
    scale = float(rng.uniform(0.6, 1.4))
    size = (max(64, int(cw * scale)), max(64, int(ch * scale)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    # Sensor noise: luma grain plus blotchy chroma noise.
    luma = rng.normal(0, rng.uniform(2, 8) / 255, size=img.shape[:2]).astype(np.float32)
    blotches = rng.normal(0, rng.uniform(1, 5) / 255, size=(img.shape[0] // 2 + 1, img.shape[1] // 2 + 1, 3))
    chroma = cv2.resize(blotches.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    img = img + luma[..., None] + chroma
    # The phone's ISP sharpens (halos at edges).
    if rng.random() < 0.75:
        soft = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0))
        img = img + rng.uniform(0.4, 1.5) * (img - soft)
    out = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    for _ in range(2 if rng.random() < 0.3 else 1):
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(30, 76)), subsampling=2)
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    sx, sy = size[0] / cw, size[1] / ch
    mapping = np.array([[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5]])
    return buf.getvalue(), mapping


#: A face box (x0, y0, x1, y1) that the damage's reframing must keep in the picture.
Box = tuple[float, float, float, float]
#: (photo, face box to keep, rng) -> (JPEG bytes, 2x3 affine from the photo's pixels to the JPEG's).
Damage = Callable[[np.ndarray, Box, np.random.Generator], tuple[bytes, np.ndarray]]


def face_box(pupils: np.ndarray, shape: tuple[int, ...]) -> Box:
    """The face around two pupils that the damage's reframing keeps, inside an (h, w) picture."""
    left, right = np.asarray(pupils, float)
    mid, ipd = (left + right) / 2, float(np.hypot(*(left - right)))  # as placement_from measures it
    h, w = shape[:2]
    return (
        max(0.0, mid[0] - 1.6 * ipd),
        max(0.0, mid[1] - 1.4 * ipd),
        min(w - 1.0, mid[0] + 1.6 * ipd),
        min(h - 1.0, mid[1] + 2.2 * ipd),
    )


# --- one photo, end to end --------------------------------------------------------------------------
def own_lens(
    row: dict[str, Any], rng: np.random.Generator
) -> tuple[str, tuple[float, float, float], float, tuple[float, float]]:
    """The product's own lenses when it keeps them (sunglasses), else one of this look's."""
    if row.get("lens_policy") == "fixed" and row.get("lens_rgba") is not None:
        r, g, b, a = (float(v) for v in row["lens_rgba"])
        style = str(row.get("lens_style") or "tinted")
        refl = (0.45, 0.7) if style == "mirrored" else (0.04, 0.1)
        return style, (r, g, b), max(a, 0.3), refl
    name, rgb, alpha, refl = OWN_CLEAR_LENSES[
        int(rng.choice(len(OWN_CLEAR_LENSES), p=[0.5, 0.25, 0.15, 0.1]))
    ]
    return name, rgb, alpha, refl


def wear(
    photo_rgb: np.ndarray,
    pupils: np.ndarray,
    nose_xy: np.ndarray | None,
    glb: bytes,
    row: dict[str, Any],
    renderer: LayerRenderer,
    rng: np.random.Generator,
    *,
    damage: Damage | None = None,
    colour_as_srgb: bool = True,
) -> tuple[bytes, np.ndarray, dict[str, Any]]:
    """(JPEG bytes, (2, 2) true pupils on it, record): the photo wearing the product, damaged.

    damage (default harsh_phone_damage) and colour_as_srgb swap one ingredient of this look for
    the gap decomposition (bench/cross_look_bench.py --decompose); the defaults are the look.

    A small face (the public-domain photos' pupils are ~45-85 px apart) is first brought to a
    phone photo's resolution (pupils 60-120 px apart, bicubic), so this look differs from the
    product's in how it draws and damages, not in how many pixels the frame gets."""
    pupils = np.asarray(pupils, float)
    ipd = float(np.linalg.norm(pupils[0] - pupils[1]))
    up = max(1.0, rng.uniform(60.0, 120.0) / ipd)
    if up > 1.0:
        size = (round(photo_rgb.shape[1] * up), round(photo_rgb.shape[0] * up))
        photo_rgb = np.clip(cv2.resize(photo_rgb, size, interpolation=cv2.INTER_CUBIC), 0, 255).astype(
            np.uint8
        )
        pupils = (pupils + 0.5) * up - 0.5  # pixel centres at integers
        nose_xy = None if nose_xy is None else (np.asarray(nose_xy, float) + 0.5) * up - 0.5
    place = placement_from(pupils, nose_xy)
    glasses = Glasses.from_glb(glb, colour_as_srgb=colour_as_srgb)
    worn, record = composite(photo_rgb, glasses, own_lens(row, rng), place, renderer, rng)
    record["upscale"] = round(up, 3)
    data, m = (damage or harsh_phone_damage)(worn, face_box(place.pupils, worn.shape[:2]), rng)
    eyes = pupils @ m[:, :2].T + m[:, 2]
    return data, eyes, record
