"""Finding faces: dlib's HOG detector and its 5-point landmarks, for query photos and photo banks.

dlib's 5-point model (eye corners and the base of the nose) was trained on its author's own CC0
data and is shipped by the `face-recognition-models` package, located on disk without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from glassfinder.errors import FaultError, PhotoError

MIN_FACE_PX = 60


DETECTION_THRESHOLD = 0.5


#: The query path's detector threshold, below dlib's own default of 0: dark lenses hide the eyes,
#: so faces wearing them score lower (the face verifier and the landmarks' shape check stand
#: between a false face and a search). Face analysis trains on boxes found at the same threshold.
QUERY_DETECTION_THRESHOLD = -0.3


def _model_path(name: str) -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FaultError("face landmark models missing: pip install face-recognition-models==0.3.0")
    return os.path.join(os.path.dirname(spec.origin), "models", name)


_THREAD = threading.local()


def _dlib() -> tuple[Any, Any]:
    """This thread's detector and landmark model (dlib's objects are not safe to share)."""
    models = getattr(_THREAD, "dlib", None)
    if models is None:
        import dlib  # heavy native module: loaded by the first detection, not by importing face

        models = _THREAD.dlib = (
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(_model_path("shape_predictor_5_face_landmarks.dat")),
        )
    return models


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


def _hog(rgb: np.ndarray, upsample: int, floor: float) -> list[tuple[tuple[int, int, int, int], float]]:
    """The one detector: dlib's HOG boxes (x0, y0, x1, y1) scoring `floor` or more, with their raw
    scores, in dlib's order. Queries (detect_boxes) and photo banks (detect_face) both run it."""
    detector, _ = _dlib()
    dets, scores, _ = detector.run(np.ascontiguousarray(rgb), upsample, floor)
    return [((d.left(), d.top(), d.right(), d.bottom()), float(s)) for d, s in zip(dets, scores, strict=True)]


def detect_boxes(rgb: np.ndarray, *, threshold: float, upsample: int = 1) -> list[FaceBox]:
    """Every face dlib's HOG detector finds at or above `threshold`, most confident first."""
    found = [
        FaceBox(box, round(s, 3)) for box, s in _hog(rgb, upsample, min(threshold, 0.0)) if s >= threshold
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
    import cv2  # kept off the DAG-parse path (heads.photos imports this module)

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
    _, predictor = _dlib()
    scale = 1.0
    small = rgb
    if max_side_px is not None and max(rgb.shape[:2]) > max_side_px:
        scale = max_side_px / max(rgb.shape[:2])
        small = np.asarray(
            Image.fromarray(rgb).resize(
                (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.Resampling.BILINEAR
            )
        )
    hits = _hog(small, 1, min(threshold, 0.0))
    if not hits:
        raise PhotoError(name, "no_face", "no face found")
    (x0, y0, x1, y1), score = max(hits, key=lambda hit: hit[1])  # the first of equals, as argmax
    if score < threshold:
        raise PhotoError(name, "no_face", f"no face found (best detection score {score:.2f} < {threshold})")
    import dlib  # heavy native module, loaded with the detector (see _dlib)

    box = dlib.rectangle(round(x0 / scale), round(y0 / scale), round(x1 / scale), round(y1 / scale))
    if box.width() < MIN_FACE_PX:
        raise PhotoError(name, "face_too_small", f"face is {box.width()} px wide, below {MIN_FACE_PX} px")
    shape = predictor(rgb, box)
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
    return DetectedFace((box.left(), box.top(), box.right(), box.bottom()), round(score, 3), pts)
