"""Eye-band alignment: one similarity transform from two eye centres to a canonical crop.

Renders (whose eye positions the renderer knows) and query photos (whose eyes a detector finds)
go through the same function, so the model sees the same geometry on both sides. Training
perturbs the eye positions by about a detector's error so the model tolerates it.

Eye order everywhere: [subject's left eye, subject's right eye]; the subject's left eye appears
on the image's right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from glassfinder.errors import FaultError


@dataclass(frozen=True)
class CropGeometry:
    """Where the eyes land in the crop: a 2:1 band wide enough for temples-to-hinges frames.

    A frame is about 2.2 eye distances wide, so an eye distance of 0.34 crop widths leaves the
    hinges inside with a margin for pose and fit.
    """

    width: int = 128
    height: int = 64
    eye_distance_frac: float = 0.34  # of the width
    eye_y_frac: float = 0.45  # of the height, from the top

    def eyes(self) -> np.ndarray:
        """(2, 2) float: canonical [left eye, right eye] positions in crop pixels."""
        half = self.eye_distance_frac * self.width / 2
        cx, cy = self.width / 2, self.eye_y_frac * self.height
        return np.array([[cx + half, cy], [cx - half, cy]], dtype=np.float64)

    def scaled(self, factor: float) -> CropGeometry:
        """The same field of view at `factor` times the resolution."""
        return CropGeometry(
            round(self.width * factor), round(self.height * factor), self.eye_distance_frac, self.eye_y_frac
        )

    def widened(self, factor: float) -> CropGeometry:
        """A crop `factor` times larger around the same eyes at the same resolution per eye distance."""
        width, height = round(self.width * factor), round(self.height * factor)
        eye_y = (self.eye_y_frac * self.height + (height - self.height) / 2) / height
        return CropGeometry(width, height, self.eye_distance_frac / factor, eye_y)


def _check_eyes(eyes_xy: np.ndarray) -> np.ndarray:
    eyes = np.asarray(eyes_xy, dtype=np.float64)
    if eyes.shape != (2, 2):
        raise FaultError(f"eyes must have shape (2, 2) [left eye, right eye], got {eyes.shape}")
    if not np.isfinite(eyes).all():
        raise FaultError(f"eye positions must be finite, got {eyes.tolist()}")
    if np.linalg.norm(eyes[0] - eyes[1]) < 2.0:
        raise FaultError(f"eyes are less than 2 px apart ({eyes.tolist()}): cannot align")
    return eyes


def align_matrix(eyes_xy: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """(2, 3) float: the similarity transform taking image pixels to crop pixels.

    eyes_xy: (2, 2) float, [left eye, right eye] in image pixels.
    """
    src = _check_eyes(eyes_xy)
    dst = geometry.eyes()
    # Similarity from two point pairs, as complex numbers: z' = a z + b.
    zs = complex(*src[0]), complex(*src[1])
    zd = complex(*dst[0]), complex(*dst[1])
    a = (zd[0] - zd[1]) / (zs[0] - zs[1])
    b = zd[0] - a * zs[0]
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def align_crop(image: np.ndarray, eyes_xy: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """(height, width, c) uint8: the aligned eye band of an RGB (or RGBA) image.

    image: (h, w, 3) or (h, w, 4) uint8. Large photos are halved (Gaussian pyramid) until at most 2x the
    crop's scale first, so a 4000 px upload does not alias into the crop.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise FaultError(f"image must be (h, w, 3) or (h, w, 4) uint8, got {img.shape} {img.dtype}")
    eyes = _check_eyes(eyes_xy)
    matrix = align_matrix(eyes, geometry)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    while scale < 0.5 and min(img.shape[:2]) > 2:
        img = cv2.pyrDown(img)
        eyes = eyes / 2.0
        matrix = align_matrix(eyes, geometry)
        scale *= 2.0
    return cv2.warpAffine(
        img,
        matrix,
        (geometry.width, geometry.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def jitter_eyes(eyes_xy: np.ndarray, rng: np.random.Generator, sigma_frac: float) -> np.ndarray:
    """Eye positions moved independently by Gaussian noise of sigma_frac x eye distance.

    The 5-point detector's eye centres move 1-6% of the eye distance under sunglasses, so
    training with sigma_frac around 0.03 covers what queries bring.
    """
    eyes = _check_eyes(eyes_xy)
    distance = float(np.linalg.norm(eyes[0] - eyes[1]))
    return eyes + rng.normal(0.0, sigma_frac * distance, size=(2, 2))
