"""The query side on real photos: search, refusal, the CLI, the HTTP service and its page.

Only two public-domain face photos ship on this machine (scikit-image's astronaut, matplotlib's
grace_hopper, who wears glasses herself). The gallery is rendered onto both (a photo-bank render
spec, as the reference system rendered frames onto real faces), the queries are the same photos
with a product's glasses rendered under other lens, light and fit draws; both are embedded by the
packaged glasses model, as a fresh shop's store is (no training step). Eyes and glasses
presence come from the packaged face-analysis model, which never saw the astronaut (her bare
photo must be refused) and trained on Hopper's photo (wearing her own glasses, she must be
accepted).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest
from glassfinder.catalog.manifest import read_manifest_rows
from glassfinder.cli import REFUSED_EXIT, main
from glassfinder.embed.infer import Embedder
from glassfinder.embed.job import embed_catalog
from glassfinder.embed.registry import load_model
from glassfinder.errors import REFUSAL_MESSAGE, QueryRefusedError
from glassfinder.heads.photos import CROP_PX, analyse_photo
from glassfinder.index.pipeline import PublishRequest, build_and_publish
from glassfinder.render.job import render_catalog, render_catalog_specs
from glassfinder.render.packshot import PACKSHOT_SPEC
from glassfinder.render.spec import RenderSpec
from glassfinder.search.query import QueryEngine
from glassfinder.search.samples import photo_wearing
from glassfinder.search.service import ServiceLimits, create_app, server_config
from glassfinder.store import LocalStore
from tests.test_photos import TRAINING_FACE, UNSEEN_FACE, _png

COFFEE = _png(skimage.data.coffee())
CAT = _png(skimage.data.chelsea())
PRODUCTS = 8


@dataclass
class World:
    store: LocalStore
    products: dict[str, str]  # asset sha256 -> product id
    queries: list[tuple[str, str, bytes]]  # (photo, true product id, photo with its glasses)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("search")
    source = LocalStore(root / "export")
    generate_catalog(source, PRODUCTS, seed=3, workers=1)
    store = LocalStore(root / "store")
    ingest_manifest(f"{source.uri}/manifest.parquet", dest=store)
    faces = LocalStore(root / "faces")
    faces.put("astronaut.png", UNSEEN_FACE)
    faces.put("grace_hopper.jpg", TRAINING_FACE)

    manifest_uri = f"{store.uri}/{CATALOG_MANIFEST_KEY}"
    spec = RenderSpec(image_px=192, views_per_asset=6, face_source=f"photos:{faces.uri}", fit_jitter=0.5)
    render_catalog(manifest_uri, spec, store, workers=1)
    render_catalog_specs(manifest_uri, [], store, workers=1, packshot=PACKSHOT_SPEC)  # what results show
    # The packaged model, as a fresh shop's store searches: no training step in this world.
    loaded = load_model(store, "glasses")
    embed_catalog(store, spec.spec_hash, Embedder(loaded.model, batch_size=16), loaded.sha)
    build_and_publish(
        store, PublishRequest("catalog", manifest_uri, model_ref="glasses", spec_hash=spec.spec_hash)
    )

    rows = read_manifest_rows(store, CATALOG_MANIFEST_KEY)
    products = {r["asset_sha256"]: r["product_id"] for r in rows}
    queries = [
        (name, row["product_id"], _png(photo_wearing(store, row, photo, name)))
        for name, photo in (("astronaut", UNSEEN_FACE), ("grace_hopper", TRAINING_FACE))
        for row in rows[::3]
    ]
    return World(store, products, queries)


@pytest.fixture(scope="module")
def engine(world: World) -> QueryEngine:
    return QueryEngine(world.store, "catalog")


def test_photos_with_rendered_glasses_find_their_product(engine: QueryEngine, world: World) -> None:
    """Hits are ranked by score and the searched face is measured; the product comes first."""
    ranks = []
    for name, truth, photo in world.queries:
        result = engine.search(photo, f"{name}-{truth}.png", k=5)
        found = [h.product_id for h in result.hits]
        ranks.append((name, truth, found.index(truth) + 1 if truth in found else None, found))
        assert result.glasses_probability >= result.glasses_threshold
        assert [h.rank for h in result.hits] == list(range(1, len(found) + 1))
        assert all(a.score >= b.score for a, b in zip(result.hits, result.hits[1:], strict=False))
        assert set(result.timings_ms) == {"decode", "detect", "analyse", "align_embed", "search", "total"}
        height, width, channels = result.aligned_crop.shape
        assert channels == 3 and width == 2 * height and width >= 224  # the model's sharp eye band
    # 8 products in two shape families whose colourways differ only in colour: every product
    # within the top 3 (chance: 0.4% for all six), and most at the top.
    assert all(rank is not None and rank <= 3 for _, _, rank, _ in ranks), ranks
    assert sum(rank == 1 for _, _, rank, _ in ranks) >= len(ranks) / 2, ranks


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (UNSEEN_FACE, "no_glasses"),
        (COFFEE, "no_face"),
        (CAT, "no_face"),
        (b"GIF89a not really", "not_an_image"),
    ],
    ids=["astronaut-bare", "coffee", "cat", "garbage"],
)
def test_unusable_photos_are_refused_with_a_reason(engine: QueryEngine, data: bytes, reason: str) -> None:
    with pytest.raises(QueryRefusedError) as err:
        engine.search(data, "photo.png")
    assert err.value.reason == reason
    assert str(err.value).endswith(REFUSAL_MESSAGE)


def test_a_face_wearing_real_glasses_is_accepted(engine: QueryEngine) -> None:
    """Grace Hopper wears her own glasses (a seen face: the face model trained on her photo, as it
    is, with her frames inpainted away, and with rendered frames): she must not be refused."""
    result = engine.search(TRAINING_FACE, "grace_hopper.jpg")
    assert result.glasses_probability >= result.glasses_threshold
    assert len(result.hits) == PRODUCTS


def test_cli_search_prints_products_or_refuses(world: World, tmp_path: Path, capsys) -> None:
    _name, truth, photo = world.queries[0]
    (tmp_path / "q.png").write_bytes(photo)
    (tmp_path / "coffee.png").write_bytes(COFFEE)
    store = ["--store", world.store.uri]
    assert main(["search", str(tmp_path / "q.png"), "--top-k", "3", "--json", *store]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["hits"][0]["product_id"] == truth and len(answer["hits"]) == 3
    # Her pupils, marked by hand on the original photo, carried into the rendered query's crop.
    face, _ = analyse_photo(UNSEEN_FACE, "astronaut.png")
    x0, y0, x1, _ = face.crop_box
    s = CROP_PX / (x1 - x0)
    pupils = (np.array([[246.5, 102.5], [203.0, 100.5]]) + 0.5 - [x0, y0]) * s - 0.5
    eyes = np.array(answer["eyes_xy"])
    error = np.linalg.norm(eyes - pupils, axis=1).mean() / np.linalg.norm(pupils[0] - pupils[1])
    assert error < 0.08, (eyes, pupils)
    assert len(answer["landmarks_xy"]) == len(answer["landmark_names"]) == 10
    assert main(["search", str(tmp_path / "q.png"), *store]) == 0
    assert f"  1. {truth}" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "coffee.png"), "--json", *store]) == REFUSED_EXIT
    assert json.loads(capsys.readouterr().out)["reason"] == "no_face"
    assert main(["search", str(tmp_path / "missing.png"), *store]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- the HTTP service ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app, **limits) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("search service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def service(engine: QueryEngine, world: World) -> Iterator[str]:
    samples = {"astronaut-bare.png": UNSEEN_FACE, "coffee.png": COFFEE}
    samples |= {f"{name}-wearing-{truth}.png": photo for name, truth, photo in world.queries}
    # A queue deep and patient enough for the concurrency test below (admission's 503s are
    # tests/test_service_limits.py's business).
    limits = ServiceLimits(
        max_upload_bytes=2_000_000,
        max_pixels=2_000_000,
        max_concurrent=2,
        queue_depth=16,
        queue_wait_s=120.0,
        reload_interval_s=0.5,
    )
    with running(create_app(engine, limits, samples=samples)) as url:
        yield url


def test_service_search_and_product_pages(service: str, world: World, engine: QueryEngine) -> None:
    """The service answers what the engine finds (colourway siblings differ only in colour, so
    the frame is asked within the top 3, as in the engine's own test above)."""
    _name, truth, photo = world.queries[2]
    r = httpx.post(
        f"{service}/search?k=3&debug=true", files={"photo": ("q.png", photo, "image/png")}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [h["product_id"] for h in body["hits"]]
    assert ids == [h.product_id for h in engine.search(photo, "q.png", k=3).hits]
    assert truth in ids and len(ids) == 3
    crop = Image.open(io.BytesIO(__import__("base64").b64decode(body["aligned_crop_png"])))
    assert crop.size[0] == 2 * crop.size[1] and crop.size[0] >= 224
    product = httpx.get(f"{service}/products/{truth}").json()
    assert product["product_id"] == truth and product["indexed_views"] == 6
    image = httpx.get(f"{service}{product['image']}")
    assert (
        image.headers["content-type"] == "image/jpeg"
        and Image.open(io.BytesIO(image.content)).format == "JPEG"
    )
    assert httpx.get(f"{service}/products/no-such-frame").status_code == 404
    # Packshots: the frame alone on white, both views, in every hit and on the product.
    assert all(set(h["packshots"]) == {"front", "three_quarter"} for h in body["hits"])
    assert product["packshots"] == body["hits"][ids.index(truth)]["packshots"]
    for url in product["packshots"].values():
        shot = httpx.get(f"{service}{url}")
        assert shot.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(shot.content)).size == (512, 512)
    assert httpx.get(f"{service}/products/{truth}/packshots/side.png").status_code == 404
    glb = httpx.get(f"{service}{product['model']}")
    assert glb.headers["content-type"] == "model/gltf-binary" and glb.content[:4] == b"glTF"
    assert "model-viewer" in httpx.get(f"{service}{product['page']}").text
    health = httpx.get(f"{service}/healthz").json()
    assert health["status"] == "ok" and health["index_version"] == 1
    metrics = httpx.get(f"{service}/metrics").text
    assert 'glassfinder_search_requests_total{outcome="ok"}' in metrics
    assert "glassfinder_index_version 1.0" in metrics


@pytest.mark.parametrize(
    ("files", "query", "status", "reason"),
    [
        ({"photo": ("c.png", COFFEE, "image/png")}, "", 422, "no_face"),
        ({"photo": ("x.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")}, "", 415, "not_an_image"),
        ({"photo": ("x.txt", b"hello", "text/plain")}, "", 415, "unsupported_media_type"),
        ({"photo": ("e.png", b"", "image/png")}, "", 400, "empty_upload"),
        (
            {"photo": ("big.png", _png(np.zeros((1500, 1500, 3), np.uint8)), "image/png")},
            "",
            413,
            "too_many_pixels",
        ),
        ({"photo": ("huge.png", b"\x89PNG" + bytes(2_100_000), "image/png")}, "", 413, "upload_too_large"),
        ({"photo": ("a.png", UNSEEN_FACE, "image/png")}, "?k=0", 422, None),
        ({"other": ("a.png", UNSEEN_FACE, "image/png")}, "", 422, None),
    ],
    ids=[
        "no-face",
        "corrupt",
        "wrong-type",
        "empty",
        "pixel-bomb",
        "too-many-bytes",
        "bad-k",
        "no-photo-field",
    ],
)
def test_service_answers_bad_uploads_with_4xx_and_a_reason(
    service: str, files, query: str, status: int, reason
) -> None:
    r = httpx.post(f"{service}/search{query}", files=files, timeout=60)
    assert r.status_code == status, r.text
    body = r.json()
    if reason is not None:
        assert reason in (body.get("reason"), body.get("error"))
    if status == 422 and reason is not None:
        assert body["refused"] is True and body["message"] == REFUSAL_MESSAGE


def test_service_is_consistent_under_concurrent_requests(service: str, world: World) -> None:
    queries = world.queries * 2

    def ask(q: tuple[str, str, bytes]) -> str:
        r = httpx.post(f"{service}/search?k=1", files={"photo": ("q.png", q[2], "image/png")}, timeout=120)
        r.raise_for_status()
        return str(r.json()["hits"][0]["product_id"])

    one_by_one = [ask(q) for q in world.queries]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, queries))
    assert answers == one_by_one * 2


def test_service_hot_reloads_when_current_moves(world: World, tmp_path: Path) -> None:
    """A copy of the store: publish v2 beside a running service; it serves v2 without a restart."""
    store = LocalStore(tmp_path / "store")
    shutil.copytree(world.store.root, store.root, dirs_exist_ok=True)
    engine = QueryEngine(store, "catalog")
    spec_hash = engine.serving.reader.manifest["spec_hash"]
    with running(create_app(engine, ServiceLimits(reload_interval_s=0.2))) as url:
        assert httpx.get(f"{url}/healthz").json()["index_version"] == 1
        build_and_publish(
            store, PublishRequest("catalog", f"{store.uri}/{CATALOG_MANIFEST_KEY}", model_ref="glasses",
            spec_hash=spec_hash, force_reason="hot reload test"),
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/healthz").json()["index_version"] != 2:
            assert time.monotonic() < deadline, "the service never picked up v2"
            time.sleep(0.1)
        _name, truth, photo = world.queries[0]
        r = httpx.post(f"{url}/search", files={"photo": ("q.png", photo, "image/png")}, timeout=60)
        assert r.json()["index_version"] == 2 and r.json()["hits"][0]["product_id"] == truth


# --- the evaluation page in a real browser ------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (bash .ci/setup)")
def test_evaluation_page_in_headless_chromium(service: str, world: World, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _name, truth, photo = world.queries[0]
    (tmp_path / "upload.png").write_bytes(photo)
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(service)
            # Upload: the detected face is drawn, the aligned crop shown, the products listed.
            page.set_input_files("#file", str(tmp_path / "upload.png"))
            expect(page.locator(".hit")).to_have_count(PRODUCTS, timeout=60_000)
            assert page.locator(".hit").first.get_attribute("data-product-id") == truth
            expect(page.locator("#status")).to_contain_text("index catalog v1")
            page.wait_for_function("document.getElementById('crop').naturalWidth >= 224")
            thumbs = "[...document.querySelectorAll('.hit img')]"
            page.wait_for_function(
                f"{thumbs}.length > 0 && {thumbs}.every(i => i.complete && i.naturalWidth > 0)"
            )
            assert page.evaluate("document.getElementById('photo').width") == 512
            assert "score" in page.locator(".hit").first.inner_text()
            # Pick: a photo with no face from the samples is refused with the shopper's message.
            page.select_option("#sample", "coffee.png")
            expect(page.locator("#status")).to_contain_text(REFUSAL_MESSAGE, timeout=60_000)
            expect(page.locator(".hit")).to_have_count(0)
            page.screenshot(path=str(tmp_path / "page.png"))
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (bash .ci/setup)")
def test_results_show_packshots_and_the_product_page_turns_the_frame_in_3d(
    service: str, world: World, tmp_path: Path
) -> None:
    """Upload, see packshots in the results, open the product page: both packshots, the fields,
    and the normalised GLB drawn by the served <model-viewer> (WebGL on SwiftShader)."""
    from playwright.sync_api import expect, sync_playwright

    from glassfinder.search.viewer import load_viewer_js

    assert load_viewer_js() is not None, "the 3D viewer script is missing: run bash .ci/setup"
    _name, truth, photo = world.queries[0]
    (tmp_path / "upload.png").write_bytes(photo)
    shots = Path(os.environ.get("GLASSFINDER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    args = [
        "--no-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            outside: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(service) or r.url.startswith(("data:", "blob:"))
                    else outside.append(r.url)
                ),
            )
            page.goto(service)
            page.set_input_files("#file", str(tmp_path / "upload.png"))
            expect(page.locator(".hit")).to_have_count(PRODUCTS, timeout=60_000)
            imgs = "[...document.querySelectorAll('.hit img')]"
            page.wait_for_function(
                f"{imgs}.length > 0 && {imgs}.every(i => i.complete && i.naturalWidth === 512)"
            )
            assert page.locator(".hit img.packshot").count() == PRODUCTS
            assert "/packshots/three_quarter.png" in (
                page.locator(".hit img").first.get_attribute("src") or ""
            )
            page.screenshot(path=str(shots / "results-packshots.png"))
            # The product page: fields, both packshots, the frame in 3D.
            page.locator(".hit a").first.click()
            expect(page).to_have_url(f"{service}/p/{truth}")
            expect(page.locator("#fields")).to_contain_text(truth)
            expect(page.locator("img.packshot")).to_have_count(2)
            page.wait_for_function("document.body.dataset.viewer === 'loaded'", timeout=90_000)
            page.wait_for_timeout(1500)  # let the viewer settle its first frames
            # What the viewer's WebGL canvas drew (not its poster): enough pixels unlike the background.
            ink = page.evaluate(
                """async () => {
                  const mv = document.getElementById('viewer');
                  const blob = await mv.toBlob({idealAspect: false});
                  const bmp = await createImageBitmap(blob);
                  const c = new OffscreenCanvas(bmp.width, bmp.height);
                  const g = c.getContext('2d'); g.drawImage(bmp, 0, 0);
                  const d = g.getImageData(0, 0, bmp.width, bmp.height).data;
                  const bg = [d[0], d[1], d[2]]; let n = 0;
                  for (let i = 0; i < d.length; i += 4) {
                    const diff = Math.abs(d[i] - bg[0]) + Math.abs(d[i + 1] - bg[1])
                      + Math.abs(d[i + 2] - bg[2]);
                    if (d[i + 3] > 0 && diff > 60) n++;
                  }
                  return {w: bmp.width, h: bmp.height, share: n / (d.length / 4)};
                }"""
            )
            assert ink["w"] > 100 and 0.005 < ink["share"] < 0.7, ink
            page.screenshot(path=str(shots / "product-page.png"))
            viewer = page.locator("#viewer").screenshot(path=str(shots / "viewer.png"))
            pixels = np.asarray(Image.open(io.BytesIO(viewer)).convert("RGB")).astype(int)
            assert (np.abs(pixels - pixels[2, 2]).sum(axis=2) > 60).mean() > 0.005, "the screenshot is blank"
            assert not errors, errors
            assert not outside, f"the pages fetched from elsewhere: {outside}"
            # Without WebGL the viewer's place shows the packshot and says why.
            page.add_init_script("HTMLCanvasElement.prototype.getContext = () => null;")
            page.reload()
            page.wait_for_function("document.body.dataset.viewer === 'fallback'")
            expect(page.locator("#viewer-note")).to_contain_text("no WebGL")
            page.wait_for_function("document.getElementById('fallback').naturalWidth === 512")
        finally:
            browser.close()


# --- hostile uploads (issue 17) -----------------------------------------------------------------
def _png_header(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb costs a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


BOMB = _png_header(60_000, 60_000)  # 3.6 gigapixels: Pillow raises DecompressionBombError


def test_decompression_bombs_and_decoder_errors_are_refusals() -> None:
    import warnings

    from glassfinder.search.query import decode_photo

    with pytest.raises(QueryRefusedError) as err:
        decode_photo(BOMB, "bomb.png")
    assert err.value.reason == "too_many_pixels" and "decompression bomb" in err.value.detail
    # Past Image.MAX_IMAGE_PIXELS Pillow only warns; a caller that made warnings errors gets the same.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(QueryRefusedError) as err:
            decode_photo(_png_header(10_000, 10_000), "warned.png", max_pixels=89_478_485)
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(QueryRefusedError) as err:
        decode_photo(_png_header(64, 64, idat=b"not zlib at all"), "damaged.png")
    assert err.value.reason == "not_an_image" and "damaged.png is damaged" in err.value.detail


def test_cli_refuses_a_bomb_and_bad_arguments_as_json(world: World, tmp_path: Path, capsys) -> None:
    (tmp_path / "bomb.png").write_bytes(BOMB)
    store = ["--store", world.store.uri]
    assert main(["search", str(tmp_path / "bomb.png"), "--json", *store]) == REFUSED_EXIT
    answer = json.loads(capsys.readouterr().out)
    assert answer["refused"] is True and answer["reason"] == "too_many_pixels"
    for bad in ("0", "-1", "101", "ten"):
        with pytest.raises(SystemExit) as exit_:
            main(["search", str(tmp_path / "bomb.png"), "--top-k", bad, "--json", *store])
        assert exit_.value.code == 2
        error = json.loads(capsys.readouterr().out)
        assert error["error"] == "bad_argument" and "--top-k" in error["message"]
    assert main(["search", str(tmp_path / "missing.png"), "--json", *store]) == 1
    assert "does not exist" in json.loads(capsys.readouterr().out)["message"]


def _metric(url: str, outcome: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'glassfinder_search_requests_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def _multipart(photo: bytes, name: str = "q.png") -> tuple[bytes, str]:
    boundary = "gf-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + photo + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_service_answers_a_bomb_413_and_counts_every_4xx(service: str) -> None:
    before = {o: _metric(service, o) for o in ("too_many_pixels", "upload_too_large", "bad_request")}
    r = httpx.post(f"{service}/search", files={"photo": ("bomb.png", BOMB, "image/png")}, timeout=60)
    assert r.status_code == 413 and r.json()["reason"] == "too_many_pixels", r.text
    bad_k = httpx.post(f"{service}/search?k=0", files={"photo": ("a.png", UNSEEN_FACE, "image/png")})
    assert bad_k.status_code == 422
    body, content_type = _multipart(b"\x89PNG" + bytes(2_100_000))
    r = httpx.post(f"{service}/search", content=body, headers={"content-type": content_type}, timeout=60)
    assert r.status_code == 413
    after = {o: _metric(service, o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        "too_many_pixels": 1,
        "upload_too_large": 1,
        "bad_request": 1,
    }


def test_service_answers_a_chunked_over_limit_upload_413(service: str) -> None:
    """No Content-Length to refuse on: the body is counted as it streams, and the 413 replaces the
    400 FastAPI's form parser would answer once the stream is cut off."""
    body, content_type = _multipart(b"\x89PNG" + bytes(2_100_000))

    def chunks() -> Iterator[bytes]:  # a generator: httpx sends it with Transfer-Encoding: chunked
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    before = _metric(service, "upload_too_large")
    r = httpx.post(f"{service}/search", content=chunks(), headers={"content-type": content_type}, timeout=60)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "upload_too_large"
    assert _metric(service, "upload_too_large") == before + 1
    small, content_type = _multipart(COFFEE)  # a chunked upload under the limit is served
    headers = {"content-type": content_type}
    r = httpx.post(f"{service}/search", content=iter([small]), headers=headers, timeout=60)
    assert r.status_code == 422 and r.json()["reason"] == "no_face"
