"""The face-analysis network's training data: render shards on disk, and crops cut from them.

Shards are rendered once (resumable, by any number of processes: sample i's draws depend only on
i) and hold whole-face renders with their landmark truth and the box dlib's detector puts on
each, so training crops can be cut exactly as the query path cuts them from a detector box.
Held-out identities (procedural head index % VAL_EVERY == 0) are never trained on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from glassfinder.catalog.ingest import catalog_assets
from glassfinder.embed.augment import QUERY_DAMAGE, photometric
from glassfinder.embed.default_model import prepare_catalog
from glassfinder.errors import FaultError
from glassfinder.face.crop import INPUT_PX, crop_matrix, cut
from glassfinder.face.detect import QUERY_DETECTION_THRESHOLD, detect_boxes
from glassfinder.face.training.views import render_face_samples

log = logging.getLogger(__name__)

SHARD_SIZE = 200
VAL_EVERY = 5
LENS_CODES = ("", "clear", "tinted", "mirrored")
#: The catalogue whose frames the face model and its verifier train on (a seed no bench uses).
TRAINING_SEED = 6161
TRAINING_PRODUCTS = 80


def training_assets(work: Path) -> list[tuple[str, bytes]]:
    """(sha, GLB bytes) of the training catalogue, generated once into work/catalog."""
    store = prepare_catalog(work / "catalog", TRAINING_PRODUCTS, seed=TRAINING_SEED)
    return catalog_assets(store, limit=TRAINING_PRODUCTS)


#: Bumped when what a shard holds changes meaning, so a work folder's older shards are rendered
#: again rather than mixed in. 2: truth in pixel-index coordinates (render.tryon.window_to_pixel_index).
SHARD_FORMAT = 2


def shard_path(root: Path, shard: int) -> Path:
    return root / f"shard-v{SHARD_FORMAT}-{shard:04d}.npz"


def render_shard(root: Path, shard: int, assets: Sequence[tuple[str, bytes]]) -> Path:
    """Render shard `shard` (samples shard*SHARD_SIZE ...) unless it exists; atomic on disk."""
    path = shard_path(root, shard)
    if path.exists():
        return path
    indices = range(shard * SHARD_SIZE, (shard + 1) * SHARD_SIZE)
    rgb, lms, worn, boxes, det, faces, lens = [], [], [], [], [], [], []
    for s in render_face_samples(assets, indices):
        rgb.append(s.rgb)
        lms.append(s.landmarks_xy)
        worn.append(s.worn)
        boxes.append(s.glasses_box_xyxy)
        found = detect_boxes(s.rgb, threshold=QUERY_DETECTION_THRESHOLD)
        det.append(found[0].box_xyxy if found else (-1, -1, -1, -1))
        faces.append(s.face_index)
        lens.append(LENS_CODES.index(s.lens_style))
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        rgb=np.stack(rgb),
        landmarks=np.stack(lms),
        worn=np.asarray(worn),
        glasses_box=np.stack(boxes),
        det_box=np.asarray(det, np.float32),
        face_index=np.asarray(faces),
        lens=np.asarray(lens, np.int8),
    )
    tmp.replace(path)
    return path


@dataclass
class FaceData:
    rgb: np.ndarray
    landmarks: np.ndarray
    worn: np.ndarray
    glasses_box: np.ndarray
    det_box: np.ndarray
    face_index: np.ndarray
    lens: np.ndarray

    def subset(self, mask: np.ndarray) -> FaceData:
        return FaceData(**{k: v[mask] for k, v in self.__dict__.items()})

    @property
    def held_out(self) -> np.ndarray:
        return self.face_index % VAL_EVERY == 0


def concat(*parts: FaceData) -> FaceData:
    return FaceData(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in parts[0].__dict__})


def load_shards(root: Path, shards: Sequence[int]) -> FaceData:
    parts = []
    for shard in shards:
        path = shard_path(root, shard)
        if not path.exists():
            raise FaultError(f"face data shard {path} is missing: render it first")
        with np.load(path) as z:
            parts.append({k: z[k] for k in z.files})
    return FaceData(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def proxy_box(landmarks: np.ndarray) -> np.ndarray:
    """A detector-like box from landmark truth, for renders dlib missed (profiles, dark lenses):
    as wide as the eye corners' span plus margins, from the brows to below the mouth."""
    eyes = landmarks[2:6]
    span = eyes[:, 0].max() - eyes[:, 0].min()
    mid = landmarks[0:2].mean(axis=0)
    mouth = landmarks[8:10].mean(axis=0)
    w = 1.65 * max(span, 1.0)  # 1.65 and the 0.07 below: dlib's median box on these renders
    cx = (eyes[:, 0].max() + eyes[:, 0].min()) / 2
    cy = (mid[1] + mouth[1]) / 2 - 0.07 * w
    return np.array([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], np.float32)


def training_crop(
    data: FaceData, i: int, rng: np.random.Generator, *, augment: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input crop, landmarks in crop pixels, glasses box in crop pixels) of sample i.

    Training jitters the box (scale, shift, a little rotation) beyond what dlib does between
    nearby frames, flips nothing (left and right are the subject's), and damages the crop like a
    phone photo.
    """
    box = data.det_box[i] if data.det_box[i, 0] >= 0 else proxy_box(data.landmarks[i])
    m = crop_matrix(box)
    if augment:
        w = box[2] - box[0]
        s = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))  # dlib's pyramid step is 1.2
        ang = np.radians(rng.normal(0, 6))
        dx, dy = rng.normal(0, 0.06 * w, 2)
        c = INPUT_PX / 2
        rot = cv2.getRotationMatrix2D((c, c), np.degrees(ang), s)
        m = (np.vstack([rot, [0, 0, 1]]) @ np.vstack([m, [0, 0, 1]]))[:2].astype(np.float32)
        m[:, 2] += np.array([dx, dy], np.float32) * m[0, 0]
    crop = cut(data.rgb[i], m)
    if augment:
        crop = photometric(crop, rng, QUERY_DAMAGE)
        if rng.random() < 0.15:
            crop = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    lm = data.landmarks[i] @ m[:, :2].T + m[:, 2]
    gb = data.glasses_box[i].reshape(2, 2) @ m[:, :2].T + m[:, 2]
    return crop, lm.astype(np.float32), gb.reshape(4).astype(np.float32)
