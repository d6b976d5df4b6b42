"""The face-analysis network's input: a square cut around a detector box, the same at query time
and in training (training jitters the box, see face.training.data).
"""

from __future__ import annotations

import cv2
import numpy as np

#: The network's input: a square of this many pixels around the detector's box.
INPUT_PX = 160


#: The crop around a detector box: side = CROP_SCALE * box width, centre shifted by
#: CROP_SHIFT * box width downward-positive (dlib's box starts at the brows; the crop keeps the
#: forehead and chin in view).
CROP_SCALE = 1.5


CROP_SHIFT = -0.05


def crop_matrix(box_xyxy: np.ndarray, size: int = INPUT_PX) -> np.ndarray:
    """2x3 affine from image pixels to the network's input square for a detector box."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    w = x1 - x0 + 1
    side = CROP_SCALE * w
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + CROP_SHIFT * w
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)


def cut(rgb: np.ndarray, matrix: np.ndarray, size: int = INPUT_PX) -> np.ndarray:
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
