"""The second look (bench/second_look.py): independent of everything that trains, and sane photos.

Its figures count only if no training or calibration code can reach it and it shares no shading,
lens, lighting, placement or damage code with the product's renderer and augmentations.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glassfinder

BENCH = Path(__file__).resolve().parents[1] / "bench"
PACKAGE = Path(glassfinder.__file__).parent
#: What the second look may use of the package: the GL platform choice, nothing that draws.
ALLOWED = {"glassfinder.render.gl"}


def _glassfinder_imports(path: Path) -> set[str]:
    """Every glassfinder module `path` imports, wherever the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glassfinder"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("glassfinder")}
    return found


def test_second_look_imports_nothing_that_renders_or_augments_for_training() -> None:
    assert _glassfinder_imports(BENCH / "second_look.py") <= ALLOWED
    # ... and nothing reaches them through the back door: what importing it and starting its
    # renderer loads of the package, in a fresh interpreter.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import second_look; "
        "second_look.LayerRenderer().close(); "
        "print(sorted(m for m in sys.modules if m.startswith('glassfinder')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True, timeout=300
    )
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    # render.gl picks the GL platform (and reads it through settings, the one reader of the
    # environment): neither draws, shades or augments anything.
    allowed = {"glassfinder", "glassfinder.errors", "glassfinder.settings", "glassfinder.render"}
    assert loaded <= allowed | {"glassfinder.render.gl"}, loaded


def test_nothing_in_the_package_can_import_the_second_look() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "second_look" in p.read_text() or any(m.startswith("bench") for m in _imports_any(p))
    ]
    assert offenders == []


def _imports_any(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


@pytest.fixture(scope="module")
def look():  # the bench module, imported as the bench scripts do
    sys.path.insert(0, str(BENCH))
    try:
        import second_look

        yield second_look
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def product() -> tuple[dict, bytes]:
    from glassfinder.catalog.generate import build_family

    row, glb = build_family(5, 0, 1)[0]
    return row, glb


UNSEEN_FACE_PUPILS = np.array([[246.5, 102.5], [203.0, 100.5]])  # bench/face_bench.py's hand marks


def test_the_frame_lands_on_the_eyes_and_nowhere_else(look, product) -> None:
    import skimage.data

    photo = skimage.data.astronaut()
    row, glb = product
    renderer = look.LayerRenderer()
    try:
        place = look.placement_from(UNSEEN_FACE_PUPILS, None)
        worn, record = look.composite(
            photo, look.Glasses.from_glb(glb), look.own_lens(row, np.random.default_rng(1)), place,
            renderer, np.random.default_rng(2),
        )  # fmt: skip
        again, _ = look.composite(
            photo, look.Glasses.from_glb(glb), look.own_lens(row, np.random.default_rng(1)), place,
            renderer, np.random.default_rng(2),
        )  # fmt: skip
    finally:
        renderer.close()
    assert np.array_equal(worn, again), "same generator, same photo"
    diff = np.abs(worn.astype(int) - photo.astype(int)).sum(axis=2)
    ipd = float(np.linalg.norm(UNSEEN_FACE_PUPILS[0] - UNSEEN_FACE_PUPILS[1]))
    (x0, y0), (x1, y1) = UNSEEN_FACE_PUPILS.min(axis=0), UNSEEN_FACE_PUPILS.max(axis=0)
    around_eyes = diff[int(y0 - 0.6 * ipd) : int(y1 + 0.6 * ipd), int(x0 - 0.9 * ipd) : int(x1 + 0.9 * ipd)]
    assert (around_eyes > 60).mean() > 0.05, "a frame is drawn around the eyes"
    assert diff[300:, :].max() == 0 and diff[:, :100].max() == 0, "nothing drawn far from the face"
    assert record["lens"] and abs(record["roll_deg"]) < 10


def test_harsh_damage_maps_a_marked_point_to_where_it_lands(look) -> None:
    image = np.full((300, 400, 3), 20, np.uint8)
    image[148:153, 248:253] = 255  # a 5 px white square centred on (250, 150)
    for seed in range(6):
        data, m = look.harsh_phone_damage(image, (200.0, 100.0, 300.0, 200.0), np.random.default_rng(seed))
        out = np.asarray(Image.open(io.BytesIO(data)).convert("L"), float)
        assert Image.open(io.BytesIO(data)).format == "JPEG"
        expected = np.array([250.0, 150.0]) @ m[:, :2].T + m[:, 2]
        bright = out > out.max() - 0.25 * (out.max() - np.median(out))
        ys, xs = np.nonzero(bright)
        weights = out[ys, xs]
        found = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
        assert np.linalg.norm(found - expected) < 2.5 * max(1.0, m[0, 0]), (seed, found, expected)


def test_the_cross_look_bench_tells_a_gain_from_the_photos_noise() -> None:
    """Rows are compared photo by photo: a gain on every photo is outside the interval's zero,
    a swap of two hits for two misses is not a gain, and identical rows gain nothing."""
    sys.path.insert(0, str(BENCH))
    try:
        from cross_look_bench import paired_gain
    finally:
        sys.path.remove(str(BENCH))
    old = [1, 0, 3, 12, 1, 0, 2, 1] * 10  # ranks: 1 a top-1 hit, 0 refused or beyond the top 10
    assert paired_gain(old, old, 1) == {"gain": 0.0, "low": 0.0, "high": 0.0}
    better = [1] * len(old)
    gain = paired_gain(better, old, 1)
    assert gain["gain"] == 0.625 and 0.0 < gain["low"] <= gain["gain"] <= gain["high"]
    swapped = [0, 1, 3, 12, 0, 1, 2, 1] * 10  # as many top-1 hits, on other photos
    noise = paired_gain(swapped, old, 1)
    assert noise["gain"] == 0.0 and noise["low"] < 0.0 < noise["high"]
    assert paired_gain(old, better, 10)["gain"] == -0.375  # 12 and 0 are top-10 misses


def test_the_decomposition_swaps_one_ingredient_at_a_time(look, product) -> None:
    """--decompose reads colours as the asset means them, or damages with another set: each
    swap must change that ingredient and leave the drawing's random draws as they were."""
    import skimage.data

    row, glb = product
    as_srgb = look.Glasses.from_glb(glb)
    as_authored = look.Glasses.from_glb(glb, colour_as_srgb=False)
    frame_srgb = next(m["rgb"] for role, _, m in as_srgb.parts if role == "frame")
    frame_linear = next(m["rgb"] for role, _, m in as_authored.parts if role == "frame")
    assert np.all(frame_linear >= frame_srgb) and np.any(frame_linear > frame_srgb + 0.01)

    seen: list[tuple[int, int]] = []

    def lossless(rgb: np.ndarray, keep: tuple, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
        seen.append(rgb.shape[:2])
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        return buf.getvalue(), np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    photo = skimage.data.astronaut()
    renderer = look.LayerRenderer()
    try:
        data, eyes, record = look.wear(
            photo, UNSEEN_FACE_PUPILS, None, glb, row, renderer, np.random.default_rng(3), damage=lossless
        )
        _, _, harsh_record = look.wear(
            photo, UNSEEN_FACE_PUPILS, None, glb, row, renderer, np.random.default_rng(3)
        )
    finally:
        renderer.close()
    assert len(seen) == 1 and Image.open(io.BytesIO(data)).size == seen[0][::-1]
    assert record == harsh_record, "the same placement, lens and pose: only the damage differs"
    up = record["upscale"]
    assert np.allclose(eyes, (UNSEEN_FACE_PUPILS + 0.5) * up - 0.5, atol=0.2)  # upscale is rounded
