"""Packshots: the frame alone on white with a soft contact shadow, front and three-quarter, as shops show it.

A packshot is a catalogue artefact, content-addressed like the try-on renders: its pixels follow
from the normalised asset (its sha256), the product's own lenses (fixed-lens products wear theirs,
the others the asset's lens material) and a `PackshotSpec` (its `spec_hash`), so a re-run finds
finished work by key and a night without changes renders none. Rendered by the pipeline's own
renderer (`TryOnRenderer`'s GL context, one per process). This module imports no OpenGL at import
time: the service reads `PACKSHOT_SPEC` and the key layout from here without pyrender.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter

from glassfinder import layout
from glassfinder.catalog.loader import import_glb
from glassfinder.errors import (
    BadAssetError,
    BadInputError,
    CorruptStoreFileError,
    FaultError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from glassfinder.render.spec import ContentAddressed
from glassfinder.store.base import ObjectStore

if TYPE_CHECKING:  # pyrender (OpenGL) only where packshots are rendered
    from glassfinder.render.tryon import AssetMeshes, TryOnRenderer

PACKSHOT_SPEC_VERSION = 1


@dataclass(frozen=True)
class PackshotSpec(ContentAddressed):
    """Every knob that changes a packshot's pixels. Angles in degrees; `fill` is the share of the
    frame's width (or height) the product's silhouette may take."""

    image_px: int = 512
    #: (view name, camera yaw, camera pitch): yaw turns the camera towards the frame's left
    #: temple (+X), pitch raises it; the front view looks a little down, so the contact shadow
    #: on the floor is seen.
    views: tuple[tuple[str, float, float], ...] = (("front", 0.0, 4.0), ("three_quarter", 35.0, 12.0))
    yfov_deg: float = 18.0
    fill: float = 0.86
    background_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shadow_strength: float = 0.32  # darkest shadow: this share of white taken away
    shadow_blur: float = 0.018  # Gaussian radius as a share of the image size
    ambient: float = 0.45
    lights: tuple[tuple[tuple[float, float, float], float], ...] = (
        ((0.4, 0.8, 1.0), 3.2),  # key: high, front right
        ((-0.9, 0.3, 0.7), 1.4),  # fill: left
        ((0.0, 0.6, -1.0), 1.2),  # rim: behind
    )
    version: int = PACKSHOT_SPEC_VERSION

    def __post_init__(self) -> None:
        if not 64 <= self.image_px <= 2048:
            raise BadInputError(f"packshot spec image_px must be 64..2048, got {self.image_px}")
        names = [v[0] for v in self.views]
        if not names or len(set(names)) != len(names):
            raise BadInputError(f"packshot spec views must be named uniquely, got {names}")
        for name in names:
            layout.packshot_key("0" * 16, "0" * 64, name)  # the name must be a valid key part
        if not 0.1 <= self.fill <= 1.0:
            raise BadInputError(f"packshot spec fill must be within 0.1..1, got {self.fill}")

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(v[0] for v in self.views)

    @classmethod
    def from_json(cls, text: str, where: str = "packshot spec") -> PackshotSpec:
        spec: PackshotSpec = super().from_json(text, where)
        return spec


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


#: The packshots the pipeline makes and the service shows.
PACKSHOT_SPEC = PackshotSpec()


# --- the store ----------------------------------------------------------------------------------
def save_packshot_spec(store: ObjectStore, spec: PackshotSpec) -> str:
    """Store a spec under its hash (content-addressed: a second write is the same bytes)."""
    with contextlib.suppress(ObjectExistsError):
        store.put(layout.packshot_spec_key(spec.spec_hash), spec.canonical_json().encode(), create_only=True)
    return spec.spec_hash


def load_packshot_spec(store: ObjectStore, spec_hash: str) -> PackshotSpec:
    """The spec a plan saved under its hash; checked against that hash."""
    key = layout.packshot_spec_key(spec_hash)
    try:
        spec = PackshotSpec.from_json(store.get(key).decode(), where=f"{store.uri}/{key}")
    except ObjectNotFoundError:
        raise FaultError(f"packshot spec {spec_hash} is not in {store.uri}/{key}") from None
    if spec.spec_hash != spec_hash:
        raise CorruptStoreFileError(
            f"{store.uri}/{key} holds packshot spec {spec.spec_hash}, not {spec_hash}"
        )
    return spec


def missing_packshots(store: ObjectStore, spec: PackshotSpec, asset_sha256s: list[str]) -> list[str]:
    """The assets (in the order given) lacking any view of their packshots; one listing, no reads."""
    have = {i.key for i in store.list(layout.packshot_prefix(spec.spec_hash))}
    return [
        sha
        for sha in dict.fromkeys(asset_sha256s)
        if any(layout.packshot_key(spec.spec_hash, sha, v) not in have for v in spec.view_names)
    ]


def write_packshots(
    store: ObjectStore, spec: PackshotSpec, asset_sha256: str, images: dict[str, bytes]
) -> int:
    """Write each view create-only (a view already there is the same bytes); returns views written.

    The front view goes last: an asset counts as done when every view exists, and each write is
    whole, so a crash between views leaves the asset to be finished by the next run.
    """
    written = 0
    for name in sorted(images, key=lambda n: n == "front"):
        try:
            store.put(layout.packshot_key(spec.spec_hash, asset_sha256, name), images[name], create_only=True)
            written += 1
        except ObjectExistsError:
            pass
    return written


# --- rendering ----------------------------------------------------------------------------------
def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    # pyrender (OpenGL) only where packshots are rendered: the service imports this module (see above)
    from glassfinder.render.preview import _look_at as look_at

    return look_at(eye, target)


def _camera(points: np.ndarray, yaw_deg: float, pitch_deg: float, spec: PackshotSpec) -> np.ndarray:
    """A camera pose orbiting the product that fits `points` ((n, 3) float) into `spec.fill` of the frame.

    Fitted on the silhouette's extent across the view (not a bounding sphere), so the front view of
    a wide frame fills the width and both views keep a similar margin.
    """
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    back = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    rel = points - centre
    x, y, z = rel @ right, rel @ up, rel @ back
    target = centre + right * (x.max() + x.min()) / 2 + up * (y.max() + y.min()) / 2
    half = max(float(np.ptp(x)), float(np.ptp(y))) / 2
    distance = half / (spec.fill * np.tan(np.radians(spec.yfov_deg) / 2)) + float(z.max())
    return _look_at(target + back * distance, target)


def _flatten_to_floor(floor_y: float) -> np.ndarray:
    """Squash geometry onto the floor plane y = floor_y: its silhouette from the camera is the
    footprint a light straight above would cast, the contact shadow's shape."""
    m = np.eye(4)
    m[1, 1] = 1e-3
    m[1, 3] = floor_y * (1 - 1e-3)
    return m


def _blur(alpha: np.ndarray, radius_px: float) -> np.ndarray:
    img = Image.fromarray(np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius_px)), np.float32) / 255.0


def render_packshots(
    asset: AssetMeshes,
    renderer: TryOnRenderer,
    spec: PackshotSpec,
    *,
    fixed_lens: tuple[str, tuple[float, ...]] | None,
) -> dict[str, np.ndarray]:
    """View name -> (size, size, 3) uint8 packshot of `asset`.

    fixed_lens: (style, rgba) of a product that keeps its lenses (sunglasses); None keeps the
    asset's own lens material (what the shop's file says the lenses are).
    """
    # pyrender (OpenGL) only where packshots are rendered: the service imports this module (see above)
    from glassfinder.render.pyrender_fixes import pyrender
    from glassfinder.render.tryon import DeterministicScene

    if fixed_lens is not None:
        style, lens = fixed_lens
        asset.set_look((float(lens[0]), float(lens[1]), float(lens[2]), float(lens[3])), style)
    if renderer.size_px != spec.image_px:
        renderer.set_size(spec.image_px)
    points = np.vstack(list(asset.parts.values()))
    floor = _flatten_to_floor(float(points[:, 1].min()))
    size = spec.image_px
    bg = np.asarray(spec.background_rgb, np.float32)
    out = {}
    for name, yaw, pitch in spec.views:
        cam_pose = _camera(points, yaw, pitch, spec)
        camera = pyrender.PerspectiveCamera(yfov=np.radians(spec.yfov_deg), znear=0.01, zfar=5.0)
        shadow_scene = DeterministicScene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[1.0] * 3)
        for _, mesh, pose in asset.meshes:
            shadow_scene.add(mesh, pose=floor @ pose)
        shadow_scene.add(camera, pose=cam_pose)
        shadow = _blur(
            renderer.render_rgba(shadow_scene)[..., 3].astype(np.float32) / 255.0, spec.shadow_blur * size
        )
        scene = DeterministicScene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[spec.ambient] * 3)
        for _, mesh, pose in asset.meshes:
            scene.add(mesh, pose=pose)
        scene.add(camera, pose=cam_pose)
        for direction, intensity in spec.lights:
            scene.add(
                pyrender.DirectionalLight(intensity=intensity),
                pose=_look_at(np.asarray(direction, float), np.zeros(3)),
            )
        rgba = renderer.render_rgba(scene)
        premult = rgba[..., :3].astype(np.float32) / 255.0
        alpha = rgba[..., 3:].astype(np.float32) / 255.0
        floor_rgb = bg * (1.0 - spec.shadow_strength * shadow[..., None])
        rgb = premult + (1.0 - alpha) * floor_rgb
        out[name] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def packshot_asset(
    data: bytes,
    renderer: TryOnRenderer,
    spec: PackshotSpec,
    *,
    fixed_lens: tuple[str, tuple[float, ...]] | None,
    where: str,
) -> tuple[dict[str, bytes], float]:
    """PNG bytes per view of the normalised asset `data`, and the seconds the rendering took."""
    # pyrender (OpenGL) only where packshots are rendered: the service imports this module (see above)
    from glassfinder.render.tryon import AssetMeshes

    start = time.perf_counter()
    try:
        asset = AssetMeshes(import_glb(data))
    except Exception as exc:  # any parser error: these bytes will never load
        raise BadAssetError(f"asset {where} cannot be loaded for its packshots: {exc}") from exc
    images = render_packshots(asset, renderer, spec, fixed_lens=fixed_lens)
    encoded = {name: encode_png(rgb) for name, rgb in images.items()}
    return encoded, time.perf_counter() - start
