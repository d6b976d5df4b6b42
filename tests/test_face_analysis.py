"""The query's face analysis on photos whose truth is known: renders of held-out identities.

Each photo is a whole-face render of a procedural head the packaged network never trained on
(identities whose index is a multiple of 5 are held out), upscaled and pasted into a larger
picture like a phone photo, so the renderer's own projection of the pupils is the truth. What a
shopper relies on: the eyes are found where they are (alignment hangs on them), sunglasses are
accepted, a bare face is refused, and awkward uploads (several faces, a tiny face, a face cut by
the border, no face) get a searched face or a reason.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from glassfinder.catalog.generate import generate_catalog
from glassfinder.catalog.ingest import catalog_assets, ingest_manifest
from glassfinder.errors import PhotoError, QueryRefusedError
from glassfinder.face.crop import INPUT_PX
from glassfinder.face.detect import QueryFace, find_query_face
from glassfinder.face.net import (
    BAND_HALF_WIDTH,
    STRIDE,
    VERIFIED_DETECTION_THRESHOLD,
    FaceAnalyser,
    FaceNet,
    band_grid,
    decode,
    neighbour_table,
    packaged_analyser,
)
from glassfinder.face.training.fit import FitConfig, loss_of
from glassfinder.face.training.photo_data import PHOTO_FACE_INDEX, render_photo_samples
from glassfinder.face.training.presence import BandSet, PresenceConfig, fit_head, upload_crops
from glassfinder.face.training.views import FACE_SPEC, FaceSample, render_face_samples
from glassfinder.heads.training_photo import training_photo, training_photo_bare, training_photo_frame_mask
from glassfinder.search.query import DETECT_FAST_SIDES_PX, DETECT_MAX_SIDE_PX, check_analysis, find_face
from glassfinder.store import LocalStore

TINTED = ("tinted", (0.05, 0.05, 0.055, 0.8))
MIRRORED = ("mirrored", (0.12, 0.25, 0.7, 0.88))
CLEAR = ("clear", (0.95, 0.95, 0.9, 0.08))
HELD_OUT = (995, 990, 985, 980)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    root = tmp_path_factory.mktemp("face-analysis")
    generate_catalog(LocalStore(root / "export"), 4, seed=21, workers=1)
    store = LocalStore(root / "store")
    ingest_manifest(f"{root / 'export'}/manifest.parquet", dest=store)
    return catalog_assets(store)


@pytest.fixture(scope="module")
def analyser() -> FaceAnalyser:
    return packaged_analyser()[1]


def render(
    assets: list[tuple[str, bytes]], face: int, *, worn: bool, lens: tuple = TINTED, index: int = 0
) -> FaceSample:
    spec = replace(
        FACE_SPEC,
        face_first=face,
        face_count=1,
        yaw_deg=(-15.0, 15.0),
        pitch_deg=(-6.0, 6.0),
        roll_deg=(-6.0, 6.0),
        lens_palette=(lens,),
    )
    return next(render_face_samples(assets, [index], spec=spec, worn_share=1.0 if worn else 0.0))


def paste(canvas: np.ndarray, sample: FaceSample, scale: float, at: tuple[int, int]) -> np.ndarray:
    """Paste the render, scaled, with its top-left at `at` (may be off the canvas); its pupils
    in canvas pixels."""
    img = cv2.resize(sample.rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    h, w = canvas.shape[:2]
    x, y = at
    sx0, sy0 = max(0, -x), max(0, -y)
    dx0, dy0 = max(0, x), max(0, y)
    cw, ch = min(img.shape[1] - sx0, w - dx0), min(img.shape[0] - sy0, h - dy0)
    canvas[dy0 : dy0 + ch, dx0 : dx0 + cw] = img[sy0 : sy0 + ch, sx0 : sx0 + cw]
    return (sample.landmarks_xy[0:2] + 0.5) * scale - 0.5 + np.array([x, y])


def background(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(90, 170, size=(h // 40 + 1, w // 40 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


def find(rgb: np.ndarray) -> QueryFace:
    """The face the query path would search (weak-detection fallback included)."""
    return find_face(rgb, "upload.jpg")


def refusal(rgb: np.ndarray, analyser: FaceAnalyser) -> str | None:
    """The query path's refusal reason before the search (detect, analyse, check), or None."""
    try:
        face = find_face(rgb, "upload.jpg")
        check_analysis(analyser.analyse(rgb, face.box_xyxy), analyser.threshold, "upload.jpg", face.box_xyxy)
    except QueryRefusedError as exc:
        assert "upload.jpg" in str(exc)
        return exc.reason
    return None


def eye_error(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(found - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1]))


def test_eyes_are_found_behind_sunglasses_and_the_face_is_accepted(assets, analyser: FaceAnalyser) -> None:
    errors = []
    for i, face in enumerate(HELD_OUT):
        sample = render(assets, face, worn=True, lens=(TINTED, MIRRORED)[i % 2], index=i)
        photo = background(720, 540, seed=i)
        truth = paste(photo, sample, 2.0, (180, 60))
        found = find(photo)
        a = analyser.analyse(photo, found.box_xyxy)
        assert a.glasses_probability >= analyser.threshold, (face, a.glasses_probability)
        assert a.looks_like_a_face, (face, a.shape_disagreement)
        assert a.eyes_xy[0, 0] > a.eyes_xy[1, 0]  # the subject's left eye is on the image's right
        errors.append(eye_error(a.eyes_xy, truth))
    assert max(errors) < 0.10 and float(np.median(errors)) < 0.06, errors


def test_a_bare_face_is_refused(assets, analyser: FaceAnalyser) -> None:
    probabilities = []
    for i, face in enumerate(HELD_OUT):
        sample = render(assets, face, worn=False, index=i)
        photo = background(720, 540, seed=10 + i)
        paste(photo, sample, 2.0, (180, 60))
        probabilities.append(analyser.analyse(photo, find(photo).box_xyxy).glasses_probability)
    assert all(p < analyser.threshold for p in probabilities), (probabilities, analyser.threshold)


def test_a_false_detection_that_is_not_a_face_is_refused_as_no_face(analyser: FaceAnalyser) -> None:
    """A detector's false face (a mission patch, a print, a texture) can score as glasses; the
    landmarks' disagreement with their neighbours' votes refuses it before the search."""
    import skimage.data

    rng = np.random.default_rng(0)
    textures = {
        "grey.jpg": np.full((300, 300, 3), 128, np.uint8),
        "noise.jpg": rng.integers(0, 256, (300, 300, 3), dtype=np.uint8),
        "brick.jpg": np.repeat(skimage.data.brick()[..., None], 3, axis=2),
        "coffee.jpg": skimage.data.coffee(),
    }
    for name, rgb in textures.items():
        h, w = rgb.shape[:2]
        side = min(h, w) // 2
        box = (w // 2 - side // 2, h // 2 - side // 2, w // 2 + side // 2, h // 2 + side // 2)
        a = analyser.analyse(rgb, box)
        assert not a.looks_like_a_face, (name, a.shape_disagreement)
        with pytest.raises(QueryRefusedError) as refused:
            check_analysis(a, analyser.threshold, name, box)
        assert refused.value.reason == "no_face" and name in str(refused.value)


def test_a_texture_the_detector_takes_for_a_face_is_refused_by_the_verifier(analyser: FaceAnalyser) -> None:
    """dlib scores scikit-image's coins above the query threshold and the landmarks hold a face's
    shape on them: before the verifier, a photo of coins was searched as a face wearing glasses."""
    import skimage.data

    coins = np.repeat(skimage.data.coins()[..., None], 3, axis=2)
    found = find(coins)
    assert not found.weak
    a = analyser.analyse(coins, found.box_xyxy)
    assert not a.verified_as_face and not a.looks_like_a_face, a.face_probability
    with pytest.raises(QueryRefusedError) as refused:
        check_analysis(a, analyser.threshold, "coins.png", found.box_xyxy)
    assert refused.value.reason == "no_face" and "does not look like a face" in str(refused.value)


def test_a_face_found_only_below_the_threshold_is_verified_and_analysed(
    assets, analyser: FaceAnalyser
) -> None:
    """Large dark lenses can put a face under the detector's threshold: the best box down to the
    weak threshold is returned, marked weak, and the verifier (not the score) accepts it."""
    photo = background(720, 540, seed=8)
    truth = paste(photo, render(assets, 990, worn=True, lens=TINTED), 2.0, (180, 60))

    def unreachable(weak_threshold: float | None) -> QueryFace:
        return find_query_face(
            photo,
            "upload.jpg",
            threshold=5.0,
            weak_threshold=weak_threshold,
            fast_sides_px=DETECT_FAST_SIDES_PX,
            full_side_px=DETECT_MAX_SIDE_PX,
        )

    with pytest.raises(PhotoError) as err:
        unreachable(None)
    assert err.value.reason == "no_face"
    found = unreachable(VERIFIED_DETECTION_THRESHOLD)
    assert found.weak and found.score < 5.0
    a = analyser.analyse(photo, found.box_xyxy)
    assert a.looks_like_a_face, (a.face_probability, a.shape_disagreement)
    assert eye_error(a.eyes_xy, truth) < 0.10


def test_non_face_photos_the_verifier_never_saw_are_refused(analyser: FaceAnalyser) -> None:
    """The verifier's held-out non-face photos (a moon, a rocket, ...), whole and cropped, through
    the query path's detection, weak fallback and checks: none is searched."""
    from glassfinder.face.training.verify import held_out_source, non_face_photos, photo_variant

    assert analyser.verifier is not None
    rng = np.random.default_rng(5)
    held = [(name, image) for k, (name, image) in enumerate(non_face_photos()) if held_out_source(k)]
    assert len(held) >= 6
    reasons = [
        refusal(np.ascontiguousarray(view), analyser)
        for _name, image in held
        for view in [image] + [photo_variant(image, rng) for _ in range(2)]
    ]
    assert None not in reasons, reasons
    assert set(reasons) <= {"no_face", "face_too_small", "no_glasses"}


def test_the_verifier_threshold_refuses_at_most_its_target_share_of_fit_faces() -> None:
    from glassfinder.face.training.verify import TARGET_FACE_REFUSAL, fit_verifier, rates

    rng = np.random.default_rng(0)
    faces = rng.normal(0.6, 1.0, (400, 8))
    textures = rng.normal(-0.6, 1.0, (400, 8))
    verifier = fit_verifier(faces, textures)
    measured = rates(verifier, faces, textures)
    assert measured["face_refusal"] <= TARGET_FACE_REFUSAL + 1 / len(faces)
    assert measured["non_face_accept"] < 0.9  # overlapping classes: the low threshold lets many in


def test_a_profile_is_refused_as_no_face_even_with_the_weak_fallback(assets, analyser: FaceAnalyser) -> None:
    """A head turned 80 degrees shows one eye: the frontal detector, the weak fallback and the
    verifier must not turn it into a searched face with made-up eyes."""
    spec = replace(FACE_SPEC, face_first=995, face_count=1, yaw_deg=(80.0, 80.0), pitch_deg=(0.0, 0.0))
    for i, sample in enumerate(render_face_samples(assets, [0, 1], spec=spec, worn_share=1.0)):
        photo = background(720, 540, seed=20 + i)
        paste(photo, sample, 2.0, (180, 60))
        with pytest.raises(QueryRefusedError) as refused:
            face = find_face(photo, "profile.jpg")
            check_analysis(
                analyser.analyse(photo, face.box_xyxy), analyser.threshold, "profile.jpg", face.box_xyxy
            )
        assert refused.value.reason == "no_face" and "profile.jpg" in str(refused.value)


def test_several_faces_the_largest_is_searched_and_counted(assets, analyser: FaceAnalyser) -> None:
    """Two faces of about the same size (so the same detection pass finds both): the larger wins."""
    photo = background(900, 480, seed=3)
    sample = render(assets, 995, worn=True, lens=CLEAR)
    paste(photo, sample, 1.8, (40, 40))
    truth = paste(photo, sample, 2.1, (450, 20))
    found = find(photo)
    assert found.faces_found == 2 and found.box_xyxy[0] > 450
    a = analyser.analyse(photo, found.box_xyxy)
    assert eye_error(a.eyes_xy, truth) < 0.10


def test_a_tiny_face_is_found_by_the_full_size_pass(assets, analyser: FaceAnalyser) -> None:
    """A face ~100 px wide in a 1800 px photo: invisible at the fast pass's 320 px, found at 1024."""
    photo = background(1800, 1200, seed=4)
    truth = paste(photo, render(assets, 985, worn=True, lens=CLEAR), 1.0, (900, 500))
    found = find(photo)
    assert found.faces_found == 1 and not found.at_border
    assert eye_error(analyser.analyse(photo, found.box_xyxy).eyes_xy, truth) < 0.12


def test_a_face_cut_by_the_border_is_searched_and_flagged(assets, analyser: FaceAnalyser) -> None:
    photo = background(600, 480, seed=5)
    truth = paste(photo, render(assets, 980, worn=True, lens=TINTED), 2.0, (-70, 60))
    found = find(photo)
    assert found.at_border
    assert eye_error(analyser.analyse(photo, found.box_xyxy).eyes_xy, truth) < 0.12


def test_no_face_and_a_too_small_face_are_refused_with_their_reason(assets, analyser: FaceAnalyser) -> None:
    assert refusal(background(640, 480, seed=6), analyser) == "no_face"
    photo = background(400, 300, seed=7)
    paste(photo, render(assets, 995, worn=True), 0.28, (150, 100))  # a face ~30 px wide
    assert refusal(photo, analyser) in ("no_face", "face_too_small")


def test_real_face_samples_carry_her_pupils_and_lose_her_frames(assets) -> None:
    """Training on Grace Hopper's photo hangs on two things: her marked pupils land on her pupils
    in every sample (bare, her own frames, rendered frames), and the bare photo has lost most of
    her frame's dark browline (its darkest part), leaving the rest of the photo untouched."""
    photos = render_photo_samples(assets, worn=2, bare_copies=1)
    assert list(photos.worn) == [False, True, True, True]
    assert (photos.face_index == PHOTO_FACE_INDEX).all() and not photos.held_out.any()
    assert np.isnan(photos.landmarks[:, 2:]).all() and np.isfinite(photos.landmarks[:, :2]).all()
    for i in range(len(photos.worn)):
        gray = cv2.cvtColor(photos.rgb[i], cv2.COLOR_RGB2GRAY).astype(float)
        x0, y0, x1, y1 = (int(v) for v in photos.det_box[i])
        face = np.median(gray[y0:y1, x0:x1])
        for x, y in photos.landmarks[i, :2]:
            assert gray[round(y), round(x)] < 0.6 * face, f"sample {i}: pupil ({x:.0f}, {y:.0f}) is not dark"
        if photos.worn[i]:
            gx0, gy0, gx1, gy1 = photos.glasses_box[i]
            assert all(gx0 < x < gx1 and gy0 < y < gy1 for x, y in photos.landmarks[i, :2])
    before, after = training_photo(), training_photo_bare()
    mask = training_photo_frame_mask(before.shape[:2]) > 0
    brow = mask.copy()
    brow[195:] = False  # the browline band above the eyes, not the rims around them
    dark_before = (cv2.cvtColor(before, cv2.COLOR_RGB2GRAY)[brow] < 60).mean()
    dark_after = (cv2.cvtColor(after, cv2.COLOR_RGB2GRAY)[brow] < 60).mean()
    assert dark_after < 0.5 * dark_before  # measured: 0.25 -> 0.09
    assert (before[~mask] == after[~mask]).all()


def test_training_ignores_landmarks_a_sample_has_no_truth_for() -> None:
    """Photo samples mark only the pupils: the loss and its gradients stay finite, and an unmarked
    landmark's (NaN) heatmap gets no gradient while the marked ones do."""
    torch.manual_seed(0)
    net = FaceNet(neighbour_table(np.random.default_rng(0).uniform(20, 140, (10, 2))))
    x = torch.rand(2, 3, INPUT_PX, INPUT_PX)
    lm = torch.rand(2, 10, 2) * 150
    lm[1, 2:] = float("nan")
    batch = {
        "x": x,
        "lm": lm,
        "box": torch.rand(2, 4),
        "worn": torch.tensor([1.0, 0.0]),
        "photo": torch.tensor([False, True]),
    }
    out = net(x)
    out["heat"].retain_grad()
    loss = loss_of(net, out, batch, FitConfig())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    heat_grad = out["heat"].grad.abs().flatten(2).sum(-1)  # (B, L)
    assert (heat_grad[1, 2:] == 0).all() and (heat_grad[1, :2] > 0).all() and (heat_grad[0] > 0).all()


def test_decode_merges_neighbour_votes_only_where_the_model_says() -> None:
    """The card's merge_votes picks, per landmark, PIPNet's vote average or the landmark's own
    estimate; the packaged model keeps its pupils' own estimates (the votes made them worse)."""
    torch.manual_seed(1)
    net = FaceNet(neighbour_table(np.random.default_rng(1).uniform(20, 140, (10, 2)))).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, INPUT_PX, INPUT_PX))
    grid = INPUT_PX // STRIDE
    merged = decode(out, net.neighbours, grid)
    own = decode(out, net.neighbours, grid, torch.zeros(10, dtype=torch.bool))
    mixed = decode(out, net.neighbours, grid, torch.tensor([False, True] * 5))
    assert not torch.allclose(merged, own)
    assert torch.equal(mixed[0, 0::2], own[0, 0::2]) and torch.equal(mixed[0, 1::2], merged[0, 1::2])
    analyser = packaged_analyser()[1]
    assert analyser.merge is not None and not analyser.merge[:2].any()


def _sampled_pixels(pupils: list[list[float]]) -> np.ndarray:
    """Where the presence band samples, in input pixels: read back from maps holding each
    cell centre's own x and y."""
    grid = INPUT_PX // STRIDE
    centres = torch.arange(grid).float() * STRIDE + (STRIDE - 1) / 2
    maps = torch.stack([centres.view(1, grid).expand(grid, grid), centres.view(grid, 1).expand(grid, grid)])
    g = band_grid(torch.tensor([pupils]), grid, grid)
    return torch.nn.functional.grid_sample(maps[None], g, align_corners=False)[0].permute(1, 2, 0).numpy()


def test_the_presence_band_sits_on_the_eyes_and_turns_with_them() -> None:
    """The presence decision reads the eye band along the network's pupils: centred between them,
    BAND_HALF_WIDTH pupil distances to each side along the eye line, whatever the head's roll."""
    level = _sampled_pixels([[100.0, 70.0], [60.0, 70.0]])  # subject's left eye (image right) first
    rows, cols = level.shape[:2]
    assert np.allclose(level[rows // 2, cols // 2], [80.0, 70.0], atol=1e-3)
    assert np.allclose(level[rows // 2, [0, -1], 0], [80 - 40 * BAND_HALF_WIDTH, 80 + 40 * BAND_HALF_WIDTH])
    assert (np.diff(level[:, cols // 2, 1]) > 0).all()  # rows run from brow to cheek
    turned = _sampled_pixels([[80.0, 90.0], [80.0, 50.0]])  # rolled 90 degrees
    assert np.allclose(turned[rows // 2, cols // 2], [80.0, 70.0], atol=1e-3)
    assert np.allclose(turned[rows // 2, [0, -1], 1], [70 - 40 * BAND_HALF_WIDTH, 70 + 40 * BAND_HALF_WIDTH])


def test_the_presence_fit_learns_the_band_and_weighs_real_uploads_as_configured() -> None:
    """Stage 3 fits the head alone. Here renders and real uploads show glasses in different band
    features (the render-to-photo gap): a few real uploads, weighted as much as all the renders,
    teach the head theirs; weighted at nothing, they would not."""
    rng = np.random.default_rng(0)
    n_render, n_real = 400, 40
    worn = np.r_[np.arange(n_render) % 2 == 0, np.arange(n_real) % 2 == 0]
    real = np.r_[np.zeros(n_render, bool), np.ones(n_real, bool)]
    band = rng.normal(0, 1, (len(worn), 224, 5, 9)).astype(np.float32)
    sign = np.where(worn, 3.0, -3.0)
    band[~real, 0, 2, 4] += sign[~real]
    band[real, 2, 2, 4] += sign[real]
    bands = BandSet(band.astype(np.float16), worn, real)
    net = FaceNet(neighbour_table(np.random.default_rng(1).uniform(20, 140, (10, 2))))
    trunk = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("band_presence.")}

    def accuracy(real_weight: float) -> tuple[float, float]:
        fit_head(net.band_presence, bands, PresenceConfig(epochs=20, batch_size=32, real_weight=real_weight))
        with torch.no_grad():
            right = (torch.sigmoid(net.band_presence(torch.from_numpy(band))).numpy() >= 0.5) == worn
        return float(right[~real].mean()), float(right[real].mean())

    on_renders, on_real = accuracy(1.0)
    assert on_renders > 0.95 and on_real == 1.0, (on_renders, on_real)
    assert accuracy(0.0)[1] < 0.8
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in trunk.items())  # the trunk is untouched


def test_presence_uploads_are_found_and_cut_as_the_query_path_does() -> None:
    """Stage 3's real samples are whole uploads (mirrored, reframed, rescaled, damaged) of Hopper's
    bare photo, cut from the box the query path's detector finds: every crop holds her face."""
    crops = upload_crops([training_photo_bare()], 6, np.random.default_rng(3), "grace_hopper.jpg")
    assert len(crops) == 6 and all(c.shape == (INPUT_PX, INPUT_PX, 3) for c in crops)
    assert len({c.tobytes() for c in crops}) == 6  # every upload drawn differently
    for crop in crops:  # the face fills the crop: dlib finds it again at about the crop's scale
        boxes = find_query_face(crop, "crop", threshold=-0.5)
        width = boxes.box_xyxy[2] - boxes.box_xyxy[0]
        assert INPUT_PX / 2.2 < width < INPUT_PX / 1.1, width
