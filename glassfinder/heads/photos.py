"""Photo bank faces: real photos to render glasses onto, with landmarks and 6-DoF head pose.

Detection is glassfinder.face.detect's `detect_face` (dlib's HOG, best box, score >= 0.5, and its
5-point landmarks: eye corners and the base of the nose). Head pose comes
from cv2.solvePnP of those 5 points against the same points on GlassFinder's generic head, which
also serves as the occluder that hides temples behind the head. Each photo is analysed once; the
result (or the reason it is unusable) is cached in the store beside the pipeline's other data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from glassfinder import layout
from glassfinder.errors import ImageRefusedError, ObjectNotFoundError, PhotoError
from glassfinder.face.decode import decode_image
from glassfinder.face.detect import MIN_FACE_PX, detect_face
from glassfinder.heads.base import Head
from glassfinder.heads.procedural import head
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

#: Photos are analysed on a square crop around the face of this many pixels.
CROP_PX = 512
MAX_ABS_YAW_DEG = 55.0
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: The identity whose geometry is the generic head for pose estimation and occlusion.
GENERIC_HEAD_SEED = 0


@dataclass(frozen=True)
class PhotoFace:
    """One analysed photo: its square face crop and what was measured on it (crop pixels)."""

    face_id: str  # photo-<sha256 prefix>
    source: str
    crop_box: tuple[int, int, int, int]  # in the original photo
    landmarks5_xy: list[list[float]]  # dlib order: left-eye corners (2), right-eye corners (2), nose base
    eye_left_xy: list[float]  # subject's left eye centre
    eye_right_xy: list[float]
    focal_px: float
    rvec: list[float]  # OpenCV head-to-camera rotation (Rodrigues)
    tvec: list[float]  # metres
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    detection_score: float


def generic_head() -> Head:
    return head(GENERIC_HEAD_SEED)


def generic_model_points() -> np.ndarray:
    """(5, 3) points of the generic head in dlib's 5-point order (metres, head coordinates)."""
    lm = generic_head().landmarks
    return np.array(
        [
            lm["eye_left_outer"],
            lm["eye_left_inner"],
            lm["eye_right_outer"],
            lm["eye_right_inner"],
            lm["subnasale"],
        ]
    )


def _decode(data: bytes, name: str) -> np.ndarray:
    """The photo's upright RGB through the one guarded decoder (glassfinder.face.decode)."""
    try:
        rgb = decode_image(data, name)
    except ImageRefusedError as exc:
        raise PhotoError(name, "unreadable", f"is not a readable image ({exc.detail})") from exc
    if rgb.shape[1] < MIN_FACE_PX or rgb.shape[0] < MIN_FACE_PX:
        raise PhotoError(
            name, "too_small", f"is {rgb.shape[1]}x{rgb.shape[0]} px, too small to hold a usable face"
        )
    return rgb


def analyse_photo(data: bytes, name: str) -> tuple[PhotoFace, np.ndarray]:
    """Detect, align and measure the face of one photo; (measurements, RGB square crop)."""
    # cv2: imported on use, kept off the DAG-parse path (render.job imports this module)
    import cv2

    rgb = _decode(data, name)
    detected = detect_face(rgb, name)
    score, pts = detected.score, detected.landmarks5_xy
    # A square crop centred on the eyes, 2.6 face widths wide, resampled to CROP_PX.
    centre = pts[:4].mean(axis=0)
    half = 1.3 * detected.width
    x0, y0 = round(float(centre[0] - half)), round(float(centre[1] - half * 0.9))
    side = round(2 * half)
    pad = side  # replicate the border where the crop runs off the photo, rather than black
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    crop = (
        Image.fromarray(padded)
        .crop((x0 + pad, y0 + pad, x0 + pad + side, y0 + pad + side))
        .resize((CROP_PX, CROP_PX), Image.Resampling.LANCZOS)
    )
    scale = CROP_PX / side
    pts_c = (pts - [x0, y0]) * scale
    # Eye centres: dlib's points 0-1 are the corners of the eye on the image's right (the
    # subject's left), 2-3 the other eye.
    eye_left, eye_right = pts_c[0:2].mean(axis=0), pts_c[2:4].mean(axis=0)
    focal = 1.2 * CROP_PX  # a normal lens: about 50 mm equivalent for a face filling the crop
    camera = np.array([[focal, 0, CROP_PX / 2], [0, focal, CROP_PX / 2], [0, 0, 1]])
    model = generic_model_points() * [1, -1, -1]  # head (y up, z to camera) -> OpenCV (y down, z away)
    ok, rvec, tvec = cv2.solvePnP(model, pts_c, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, tvec = cv2.solvePnP(
            model, pts_c, camera, None, rvec, tvec, True, flags=cv2.SOLVEPNP_ITERATIVE
        )
    if not ok or tvec[2, 0] <= 0:
        raise PhotoError(name, "no_pose", "head pose could not be estimated from the landmarks")
    yaw, pitch, roll = _euler_deg(rvec)
    if abs(yaw) > MAX_ABS_YAW_DEG:
        raise PhotoError(
            name, "extreme_pose", f"head turned {yaw:+.0f} degrees, beyond +-{MAX_ABS_YAW_DEG:.0f}"
        )
    face = PhotoFace(
        face_id=f"photo-{hashlib.sha256(data).hexdigest()[:16]}",
        source=name,
        crop_box=(x0, y0, x0 + side, y0 + side),
        landmarks5_xy=pts_c.round(2).tolist(),
        eye_left_xy=eye_left.round(2).tolist(),
        eye_right_xy=eye_right.round(2).tolist(),
        focal_px=focal,
        rvec=rvec.ravel().tolist(),
        tvec=tvec.ravel().tolist(),
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
        detection_score=round(score, 3),
    )
    return face, np.asarray(crop)


def crop_mapping(crop_box: tuple[int, int, int, int], crop_px: int = CROP_PX) -> np.ndarray:
    """2x3 affine from a photo's pixels to those of the square face crop `analyse_photo` cut from
    it (pixel centres at integers): how a point marked on the photo (a pupil) lands on renders
    made on that crop."""
    x0, y0, x1, _ = crop_box
    s = crop_px / (x1 - x0)
    return np.array([[s, 0, (0.5 - x0) * s - 0.5], [0, s, (0.5 - y0) * s - 0.5]])


def _euler_deg(rvec: np.ndarray) -> tuple[float, float, float]:
    """Head yaw (turn), pitch (nod), roll (tilt) in degrees from an OpenCV rotation."""
    # cv2: imported on use, kept off the DAG-parse path (render.job imports this module)
    import cv2

    r_cv, _ = cv2.Rodrigues(rvec)
    flip = np.diag([1.0, -1.0, -1.0])
    r = flip @ r_cv @ flip  # head rotation in GlassFinder's camera frame (y up, z to camera)
    yaw = np.degrees(np.arctan2(r[0, 2], r[2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-r[1, 2], -1, 1)))
    roll = np.degrees(np.arctan2(r[1, 0], r[1, 1]))
    return round(float(yaw), 2), round(float(pitch), 2), round(float(roll), 2)


def head_pose_matrix(face: PhotoFace) -> np.ndarray:
    """4x4 pose of the generic head in a camera at the origin looking down -Z (pyrender's)."""
    # cv2: imported on use, kept off the DAG-parse path (render.job imports this module)
    import cv2

    r_cv, _ = cv2.Rodrigues(np.asarray(face.rvec, float))
    flip = np.diag([1.0, -1.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3] = flip @ r_cv @ flip
    pose[:3, 3] = flip @ np.asarray(face.tvec, float)
    return pose


@dataclass
class PhotoBank:
    """A folder (store prefix) of photos, analysed once and cached in `cache` (a store)."""

    photos: ObjectStore
    prefix: str
    cache: ObjectStore

    def _cache_key(self, digest: str) -> str:
        return layout.face_photo_analysis_key(digest)

    def scan(self) -> tuple[list[tuple[PhotoFace, str]], list[dict[str, str]]]:
        """(usable faces with their crop keys, quarantined photos with reasons), in key order."""
        usable: list[tuple[PhotoFace, str]] = []
        quarantined: list[dict[str, str]] = []
        for info in self.photos.list(self.prefix):
            if not info.key.lower().endswith(PHOTO_SUFFIXES):
                continue
            data = self.photos.get(info.key)
            digest = hashlib.sha256(data).hexdigest()
            key = self._cache_key(digest)
            try:
                cached = json.loads(self.cache.get(key))
            except ObjectNotFoundError:
                cached = self._analyse_and_cache(data, info.key, digest)
            if "quarantined" in cached:
                quarantined.append({"photo": info.key, **cached["quarantined"]})
                continue
            fields: dict[str, Any] = dict(cached["face"])
            fields["crop_box"] = tuple(fields["crop_box"])
            face = PhotoFace(**fields)
            usable.append((face, layout.face_photo_crop_key(digest)))
        return usable, quarantined

    def _analyse_and_cache(self, data: bytes, name: str, digest: str) -> dict[str, Any]:
        try:
            face, crop = analyse_photo(data, name)
        except PhotoError as exc:
            record: dict[str, Any] = {"quarantined": {"reason": exc.reason, "message": str(exc)}}
            log.warning("quarantined %s", exc)
        else:
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="PNG")
            self.cache.put(layout.face_photo_crop_key(digest), buf.getvalue())
            record = {"face": asdict(face)}
        self.cache.put(self._cache_key(digest), json.dumps(record).encode())
        return record

    def crop(self, crop_key: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.cache.get(crop_key))).convert("RGB"))
