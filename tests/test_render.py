"""The try-on renderer with the real pyrender (EGL on Mesa): fit, occlusion, lens alpha, landmarks,
determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from glassfinder.catalog.build import build_frame, export_glb
from glassfinder.catalog.design import sample_colourways, sample_design
from glassfinder.catalog.loader import import_glb
from glassfinder.heads.procedural import build_head
from glassfinder.render.spec import RenderSpec, plan_view
from glassfinder.render.tryon import AssetMeshes, TryOnRenderer

REPO = Path(__file__).resolve().parents[1]
SPEC = RenderSpec(image_px=192, backgrounds=("gradient",))


@pytest.fixture(scope="module")
def renderer() -> Iterator[TryOnRenderer]:
    r = TryOnRenderer(SPEC.image_px)
    yield r
    r.close()


@pytest.fixture(scope="module")
def glb() -> bytes:
    rng = np.random.default_rng([3, 2])
    design = sample_design(rng, "rectangle")
    design = dataclasses.replace(design, rim="full", material="acetate", kind="optical")
    return export_glb(build_frame(design, sample_colourways(rng, design, 1)[0]))


def _view(
    yaw: float = 0.0, lens: tuple[str, tuple[float, ...]] = ("clear", (0.9, 0.95, 1.0, 0.08)), face: int = 7
):
    base = plan_view(SPEC, "ab" * 32, 0, fixed_lens=lens)
    return dataclasses.replace(
        base, face_index=face, yaw_deg=yaw, pitch_deg=0.0, roll_deg=0.0, aim_offset=(0.0, 0.0)
    )


def test_same_view_same_bytes_in_process_and_across_processes(
    renderer: TryOnRenderer, glb: bytes, tmp_path: Path
) -> None:
    view = _view(yaw=20)
    head = build_head(view.face_index)
    a = renderer.render(AssetMeshes(import_glb(glb)), head, view).encode()
    b = renderer.render(AssetMeshes(import_glb(glb)), build_head(view.face_index), view).encode()
    assert a == b
    (tmp_path / "a.glb").write_bytes(glb)
    child = f"""
import dataclasses, hashlib, sys
sys.path.insert(0, {str(REPO)!r})
from tests.test_render import SPEC, _view
from glassfinder.catalog.loader import import_glb
from glassfinder.heads.procedural import build_head
from glassfinder.render.tryon import AssetMeshes, TryOnRenderer
view = _view(yaw=20)
r = TryOnRenderer(SPEC.image_px)
asset = AssetMeshes(import_glb(open({str(tmp_path / "a.glb")!r}, 'rb').read()))
img = r.render(asset, build_head(view.face_index), view).encode()
print(hashlib.sha256(img).hexdigest())
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(a).hexdigest()


def test_far_temple_is_hidden_behind_the_head_at_yaw_45(renderer: TryOnRenderer, glb: bytes) -> None:
    asset = AssetMeshes(import_glb(glb))
    view = _view(yaw=45)
    head = build_head(view.face_index)
    far = "temple_left"  # turning the head +45 degrees about Y sends the subject's left backwards

    def changed(with_head: bool) -> float:
        full = renderer.render(asset, head, view, with_head=with_head).alpha
        without = renderer.render(asset, head, view, with_head=with_head, skip_roles=frozenset({far})).alpha
        alone = renderer.render(
            asset,
            head,
            view,
            with_head=False,
            skip_roles=frozenset({"frame", "lens_left", "lens_right", "temple_right", "nose_pads"}),
        ).alpha
        temple_px = alone > 0.5
        assert temple_px.sum() > 100  # the temple is in the picture
        if with_head:
            rgb_full = renderer.render(asset, head, view).rgb.astype(int)
            rgb_without = renderer.render(asset, head, view, skip_roles=frozenset({far})).rgb.astype(int)
            return float((np.abs(rgb_full - rgb_without).sum(axis=2)[temple_px] > 30).mean())
        return float((np.abs(full - without)[temple_px] > 0.3).mean())

    assert changed(with_head=False) > 0.8  # without a head, the whole temple shows
    assert changed(with_head=True) < 0.3  # with the head, all but the part by the hinge is hidden


def _eye_box(out, side: int, r: int = 5) -> tuple[slice, slice]:
    """Around the pupil, as wide as the eye opening (at 192 px): wider boxes reach the rim."""
    x, y = out.eyes_xy[side].round().astype(int)
    return slice(y - r, y + r + 1), slice(x - 2 * r, x + 2 * r + 1)


def test_lens_alpha_is_coverage_not_squared(renderer: TryOnRenderer, glb: bytes) -> None:
    asset = AssetMeshes(import_glb(glb))
    lens_alpha = 0.6
    view = _view(lens=("tinted", (0.1, 0.1, 0.1, lens_alpha)))
    out = renderer.render(
        asset,
        build_head(view.face_index),
        view,
        with_head=False,
        skip_roles=frozenset({"temple_left", "temple_right"}),
    )
    ys, xs = _eye_box(out, 0, r=3)
    np.testing.assert_allclose(np.median(out.alpha[ys, xs]), lens_alpha, atol=0.03)


def test_clear_lenses_show_the_eyes_and_sunglasses_darken_them(renderer: TryOnRenderer, glb: bytes) -> None:
    """What shows of an eye (its contrast: pupil, iris, sclera) is scaled by the lens's (1 - alpha)."""
    bare_view = _view()
    head = build_head(bare_view.face_index)
    bare = renderer.render(None, head, bare_view)
    clear = renderer.render(AssetMeshes(import_glb(glb)), head, bare_view)
    sun = renderer.render(
        AssetMeshes(import_glb(glb)), head, _view(lens=("tinted", (0.03, 0.03, 0.03, 0.85)))
    )
    for side in (0, 1):
        ys, xs = _eye_box(bare, side)
        detail = bare.rgb[ys, xs].astype(float).std()
        assert detail > 20  # there is an eye to see
        assert clear.rgb[ys, xs].astype(float).std() > 0.8 * detail
        assert sun.rgb[ys, xs].astype(float).std() < 0.3 * detail


def test_landmarks_land_on_the_rendered_eyes(renderer: TryOnRenderer) -> None:
    big = renderer
    big.set_size(384)  # ~1.4 px per mm: the pupil is a few pixels wide
    try:
        for face, yaw in ((7, 0.0), (123, 25.0), (500, -20.0)):
            view = dataclasses.replace(_view(yaw=yaw, face=face), framing_m=0.26)
            out = big.render(None, build_head(face), view)
            for side in (0, 1):
                x, y = out.eyes_xy[side].round().astype(int)
                pupil = out.rgb[y - 1 : y + 2, x - 1 : x + 2].astype(float).mean()
                sclera = (
                    np.concatenate([out.rgb[y, x - 13 : x - 9], out.rgb[y, x + 9 : x + 13]])
                    .astype(float)
                    .max()
                )
                assert pupil < 50, (face, side, pupil)  # the dark pupil is under the landmark
                assert sclera > pupil + 60, (face, side, sclera, pupil)  # the white of the eye beside it
            nose = out.landmarks_xy[out.landmark_names.index("nose_tip")]
            assert out.eyes_xy[:, 1].max() < nose[1]  # the nose tip is below the eyes
    finally:
        big.set_size(SPEC.image_px)


def test_window_to_pixel_index_puts_a_projected_point_on_its_rendered_pixels(renderer: TryOnRenderer) -> None:
    """Face training's truth must be in the pixel-index convention of photos (centre of pixel i at
    i); the projector's window coordinates are half a pixel right and low of it."""
    import pyrender
    import trimesh

    from glassfinder.render.tryon import _look_at, _projector, window_to_pixel_index

    size, point = 64, np.array([0.013, -0.021, 0.0])
    cam_pose = _look_at(np.array([0.0, 0.0, 1.0]), np.zeros(3))
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.005)
    ball.apply_translation(point)
    scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[1.0, 1.0, 1.0])
    scene.add(pyrender.Mesh.from_trimesh(ball))
    scene.add(pyrender.PerspectiveCamera(yfov=np.radians(20), znear=0.05, zfar=5.0), pose=cam_pose)
    renderer.set_size(size)  # the module's GL context: one per process
    try:
        rgba, _ = renderer._renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
    finally:
        renderer.set_size(SPEC.image_px)
    alpha = rgba[..., 3].astype(float)
    ys, xs = np.mgrid[:size, :size]
    centroid = np.array([(alpha * xs).sum(), (alpha * ys).sum()]) / alpha.sum()
    window = _projector(cam_pose, 20.0, size)(point[None])[0]
    assert np.abs(window_to_pixel_index(window) - centroid).max() < 0.1, (window, centroid)
    assert np.abs(window - centroid - 0.5).max() < 0.1  # what the untranslated point was off by


def test_heads_vary_across_seeds() -> None:
    heads = [build_head(s) for s in range(40)]
    shapes = {(round(h.anchors.head_width_m, 4), round(float(h.anchors.pupil_left[0]), 4)) for h in heads}
    assert len(shapes) == 40
    assert {h.traits["hair_style"] for h in heads} >= {"bald", "short", "medium", "long"}
    tones = [sum(cast(list[float], h.traits["skin_srgb"])) for h in heads]
    assert max(tones) - min(tones) > 1.2  # light to dark skin
    a = build_head(5)
    b = build_head(5)
    np.testing.assert_array_equal(a.meshes[0][1].vertices, b.meshes[0][1].vertices)


def test_osmesa_fallback_renders_premultiplied_rgba_without_leaking(glb: bytes, tmp_path: Path) -> None:
    """OSMesa with pyrender's two faults fixed: RGBA output (FBOs) and a shader cache that hits."""
    (tmp_path / "a.glb").write_bytes(glb)
    child = f"""
import sys
import numpy as np
sys.path.insert(0, {str(REPO)!r})
from tests.test_render import SPEC, _view
from glassfinder.catalog.loader import import_glb
from glassfinder.heads.procedural import build_head
from glassfinder.render.tryon import AssetMeshes, TryOnRenderer
from glassfinder.render.pyrender_fixes import PLATFORM, pyrender
assert PLATFORM == "osmesa", PLATFORM
r = TryOnRenderer(SPEC.image_px)
asset = AssetMeshes(import_glb(open({str(tmp_path / "a.glb")!r}, "rb").read()))
view = _view(lens=("tinted", (0.1, 0.1, 0.1, 0.6)))
head = build_head(view.face_index)
no_temples = frozenset({{"temple_left", "temple_right"}})
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
for _ in range(5):
    out = r.render(asset, head, view, with_head=False, skip_roles=no_temples)
before = rss()
for _ in range(40):
    out = r.render(asset, head, view, with_head=False, skip_roles=no_temples)
x, y = out.eyes_xy[0].round().astype(int)
print(float(np.median(out.alpha[y - 3 : y + 4, x - 9 : x + 10])), rss() - before, r.gl_renderer())
"""
    env = {**__import__("os").environ, "GLASSFINDER_GL_PLATFORM": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )
    assert out.returncode == 0, out.stderr
    alpha, growth_mib, gl_name = out.stdout.split(maxsplit=2)
    assert "llvmpipe" in gl_name or "softpipe" in gl_name, gl_name  # Mesa's software rasteriser
    assert abs(float(alpha) - 0.6) < 0.03  # coverage, not 0.36: FBO + blending fix work on OSMesa
    assert float(growth_mib) < 30, growth_mib  # no per-frame shader recompilation


def test_material_jitter_keeps_old_spec_hashes_and_every_draw_but_the_material() -> None:
    """Stored renders are keyed by spec hash: adding the knob must not re-render any catalogue,
    and a jittered spec must pose, light and dress a view exactly as its plain twin does."""
    plain = RenderSpec(seed=4)
    assert "material_jitter" not in plain.canonical_json()
    jittered = dataclasses.replace(plain, material_jitter=1.0)
    assert jittered.spec_hash != plain.spec_hash
    assert RenderSpec.from_json(jittered.canonical_json()) == jittered
    for i in range(20):
        a = plan_view(plain, "cd" * 32, i, fixed_lens=None)
        b = plan_view(jittered, "cd" * 32, i, fixed_lens=None)
        assert a.material is None and b.material is not None
        assert dataclasses.replace(b, material=None) == a
        assert plan_view(jittered, "cd" * 32, i, fixed_lens=None) == b
    with pytest.raises(Exception, match="material_jitter"):
        RenderSpec(material_jitter=1.5)


def test_srgb_reading_darkens_the_share_of_views_asked_for_and_keeps_every_other_draw() -> None:
    """Another pipeline may read a glTF base colour as display sRGB: a spec can train on both
    readings, without re-rendering old catalogues or moving any other draw of a view."""
    plain = RenderSpec(seed=4)
    assert "srgb_reading_p" not in plain.canonical_json()
    both = dataclasses.replace(plain, srgb_reading_p=0.5)
    assert both.spec_hash != plain.spec_hash
    assert RenderSpec.from_json(both.canonical_json()) == both
    read = 0
    for i in range(200):
        a = plan_view(plain, "cd" * 32, i, fixed_lens=None)
        b = plan_view(both, "cd" * 32, i, fixed_lens=None)
        assert dataclasses.replace(b, material=None) == a
        if b.material is not None:
            read += 1
            assert b.material.colour_gamma == 2.2 and b.material.colour_gain == 1.0
            assert b.material.roughness is None and b.material.metallic_add == 0.0
    assert 70 < read < 130  # about half of 200
    jittered = dataclasses.replace(plain, material_jitter=1.0)
    for i in range(20):  # on top of material draws: the same draw, read darker
        a = plan_view(jittered, "cd" * 32, i, fixed_lens=None)
        b = plan_view(dataclasses.replace(jittered, srgb_reading_p=1.0), "cd" * 32, i, fixed_lens=None)
        assert a.material is not None and b.material is not None
        assert b.material == dataclasses.replace(a.material, colour_gamma=a.material.colour_gamma * 2.2)
    with pytest.raises(Exception, match="srgb_reading_p"):
        RenderSpec(srgb_reading_p=-0.1)


def test_drawn_materials_change_the_frame_and_a_plain_view_restores_its_own(
    renderer: TryOnRenderer, glb: bytes
) -> None:
    """An asset is reused across views: a view with the asset's own materials after a jittered
    one must render as if the jittered one had never happened."""
    from glassfinder.render.spec import MaterialDraw

    asset = AssetMeshes(import_glb(glb))
    view = _view(yaw=10)
    head = build_head(view.face_index)
    before = renderer.render(asset, head, view)
    dark = MaterialDraw(
        colour_gamma=2.2,
        colour_gain=0.7,
        roughness=0.9,
        metallic_add=0.3,
        lens_opacity_scale=1.0,
        lens_reflect=0.0,
    )
    drawn = renderer.render(asset, head, dataclasses.replace(view, material=dark))
    diff = np.abs(drawn.rgb.astype(int) - before.rgb.astype(int)).sum(axis=2)
    x0, y0, x1, y1 = before.glasses_box_xyxy.astype(int)
    inside = np.zeros(diff.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert diff[inside].mean() > 5 * max(diff[~inside].mean(), 0.2)  # the glasses changed, not the face
    after = renderer.render(asset, head, view)
    assert np.array_equal(after.rgb, before.rgb)
