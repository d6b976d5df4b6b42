"""Face-analysis training samples on a real face: Grace Hopper's photo, bare and wearing frames.

Renders of procedural heads teach exact geometry, but every real face scored as "wearing glasses"
more than any rendered bare head, and real eyes (lids over the iris) sat lower than rendered ones.
Hopper's public-domain photo (shipped with matplotlib) is the one real face training may use (the
astronaut is the unseen test face): her own frames are inpainted away along a hand-drawn mask to
give a bare real face, catalogue frames are rendered onto that bare face by the product's photo
renderer, and her hand-marked pupils give the eye truth on all of them. Only the pupils are marked;
the other landmarks are NaN and teach nothing (see face.training.fit.loss_of).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from glassfinder.catalog.loader import import_glb
from glassfinder.face.detect import QUERY_DETECTION_THRESHOLD, detect_boxes
from glassfinder.face.landmarks import FACE_LANDMARKS
from glassfinder.face.training.data import LENS_CODES, SHARD_FORMAT, FaceData
from glassfinder.face.training.views import FACE_SPEC
from glassfinder.heads.photos import CROP_PX, PhotoFace, analyse_photo, crop_mapping
from glassfinder.heads.training_photo import (
    TRAINING_PHOTO_PUPILS,
    training_photo,
    training_photo_bare,
    training_photo_frame_mask,
)
from glassfinder.render.packshot import encode_png
from glassfinder.render.spec import DEFAULT_LENS_PALETTE, ViewParams, plan_view
from glassfinder.render.tryon import (
    AssetMeshes,
    PhotoRenderer,
    RenderedView,
    TryOnRenderer,
    window_to_pixel_index,
)

#: Marks these samples in FaceData.face_index: no procedural identity is negative, and
#: -1 % VAL_EVERY != 0, so they are never in the held-out sets the figures come from.
PHOTO_FACE_INDEX = -1
#: Samples are stored at the procedural renders' size so the two concatenate.
SAMPLE_PX = FACE_SPEC.image_px
PHOTO_DATA_NAME = f"hopper-v{SHARD_FORMAT}.npz"

log = logging.getLogger(__name__)
#: Separates these samples' draws from the procedural renders' (seeded by [spec.seed, i]).
PHOTO_SEED_TAG = 7
CLEAR_LENSES = tuple(entry for entry in DEFAULT_LENS_PALETTE if entry[0] == "clear")


def _face_crop(rgb: np.ndarray, name: str) -> tuple[PhotoFace, np.ndarray, np.ndarray]:
    """The photo bank's square face crop of a photo, and the 2x3 map from photo to crop pixels."""
    face, crop = analyse_photo(encode_png(rgb), name)
    return face, crop, crop_mapping(face.crop_box)


def _sample(
    rgb: np.ndarray, to_sample: np.ndarray, worn: bool, box_xyxy: np.ndarray, lens: str
) -> dict[str, np.ndarray]:
    """One FaceData row from a face-crop image (to_sample maps original photo pixels onto it;
    `box_xyxy` is in its pixel-index coordinates)."""
    small = cv2.resize(rgb, (SAMPLE_PX, SAMPLE_PX), interpolation=cv2.INTER_AREA)
    k = SAMPLE_PX / rgb.shape[1]

    def resized(pts: np.ndarray) -> np.ndarray:  # pixel-index coordinates through cv2.resize
        return ((np.asarray(pts, np.float32) + 0.5) * k - 0.5).astype(np.float32)

    landmarks = np.full((len(FACE_LANDMARKS), 2), np.nan, np.float32)
    landmarks[0:2] = resized(TRAINING_PHOTO_PUPILS @ to_sample[:, :2].T + to_sample[:, 2])
    found = detect_boxes(small, threshold=QUERY_DETECTION_THRESHOLD)
    return {
        "rgb": small,
        "landmarks": landmarks,
        "worn": np.asarray(worn, np.bool_),
        "glasses_box": resized(box_xyxy) if worn else np.zeros(4, np.float32),
        "det_box": np.asarray(found[0].box_xyxy if found else (-1, -1, -1, -1), np.float32),
        "face_index": np.asarray(PHOTO_FACE_INDEX, np.int64),
        "lens": np.asarray(LENS_CODES.index(lens), np.int8),
    }


def render_photo_samples(assets: Sequence[tuple[str, bytes]], worn: int, bare_copies: int) -> FaceData:
    """`worn` renders of catalogue frames on bare Hopper, her original photo (her own frames, box
    from the mask) and `bare_copies` copies of her bare photo (training augments each differently).
    Draws follow FACE_SPEC's seed and the sample index, like the procedural renders."""
    face, crop, to_crop = _face_crop(training_photo_bare(), "grace_hopper.jpg (inpainted)")
    rows = [_sample(crop, to_crop, False, np.zeros(4), "")] * bare_copies
    original = training_photo()
    _, own_crop, own_to_crop = _face_crop(original, "grace_hopper.jpg")
    ys, xs = np.nonzero(training_photo_frame_mask(original.shape[:2]))
    own_box = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float32) @ own_to_crop[:, :2].T
    rows.append(_sample(own_crop, own_to_crop, True, (own_box + own_to_crop[:, 2]).ravel(), "clear"))
    for out, view in frames_on_training_photo(assets, face, crop, worn, PHOTO_SEED_TAG, first_view=0):
        box = window_to_pixel_index(out.glasses_box_xyxy)
        rows.append(_sample(out.rgb, to_crop, True, box, view.lens_style))
    missed = [r for r in rows if r["det_box"][0] < 0]
    if missed:  # training crops are cut around the detector's box, as at query time
        log.warning(
            "photo samples: dlib found no face on %d of %d; they are left out", len(missed), len(rows)
        )
        rows = [r for r in rows if r["det_box"][0] >= 0]
    return FaceData(**{k: np.stack([r[k] for r in rows]) for k in rows[0]})


#: Separates the presence stage's frame draws (face/training/presence.py) from the samples' above.
PRESENCE_SEED_TAG = 8


def frames_on_training_photo(
    assets: Sequence[tuple[str, bytes]],
    face: PhotoFace,
    crop: np.ndarray,
    count: int,
    seed_tag: int,
    *,
    first_view: int,
) -> Iterator[tuple[RenderedView, ViewParams]]:
    """`count` catalogue frames rendered onto bare Hopper's face crop (`_face_crop` of
    `training_photo_bare()`), with their view draws. Frame i is drawn from [FACE_SPEC.seed, seed_tag, i]
    and plans view first_view + i."""
    renderer = TryOnRenderer(CROP_PX)
    photo = PhotoRenderer(renderer)
    meshes: dict[str, AssetMeshes] = {}
    try:
        for i in range(count):
            rng = np.random.default_rng([FACE_SPEC.seed, seed_tag, i])
            sha, data = assets[int(rng.integers(len(assets)))]
            if sha not in meshes:
                meshes[sha] = AssetMeshes(import_glb(data))
            # Half clear lenses (the procedural palette's share is 2 in 10): real shoppers mostly
            # wear optical frames, and a clear lens over a real eye is the case renders lack.
            clear = CLEAR_LENSES[int(rng.integers(len(CLEAR_LENSES)))] if rng.random() < 0.5 else None
            view = plan_view(FACE_SPEC, sha, first_view + i, fixed_lens=clear)
            yield photo.render(meshes[sha], face, crop, view), view
    finally:
        renderer.close()


#: Separates the presence stage's frame draws (face/training/presence.py) from the samples' above.
PRESENCE_SEED_TAG = 8


def training_photo_wearing(assets: Sequence[tuple[str, bytes]], count: int) -> list[np.ndarray]:
    """`count` catalogue frames rendered onto bare Hopper, as whole face crops (CROP_PX): photos
    for the presence stage to damage like uploads."""
    face, crop, _ = _face_crop(training_photo_bare(), "grace_hopper.jpg (inpainted)")
    frames = frames_on_training_photo(assets, face, crop, count, PRESENCE_SEED_TAG, first_view=100_000)
    return [out.rgb for out, _ in frames]


def load_or_render_photo_samples(
    work: Path, assets: Sequence[tuple[str, bytes]], worn: int, bare_copies: int
) -> FaceData:
    """The samples of `render_photo_samples`, rendered once into `work` (atomic on disk)."""
    path = work / PHOTO_DATA_NAME
    if not path.exists():
        data = render_photo_samples(assets, worn, bare_copies)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **data.__dict__)
        tmp.replace(path)
    with np.load(path) as z:
        return FaceData(**{k: z[k] for k in z.files})
