"""The one real photo training may use: Grace Hopper's (matplotlib's public-domain sample), with her
hand-marked pupils and, for a bare real face, her own frames inpainted away along a hand-drawn mask.
The astronaut photo is the unseen test face and is never here.
"""

from __future__ import annotations

import cv2
import matplotlib.cbook
import numpy as np
from PIL import Image

#: Hopper's pupils on matplotlib's grace_hopper.jpg (512x600), the subject's left eye (image
#: right) first: centres of the dark pupil discs, marked at 16x zoom (about +-1 px, 0.012 IPD).
TRAINING_PHOTO_PUPILS = np.array([[305.0, 187.0], [222.0, 190.0]], np.float32)


#: Her frames, drawn over the photo: per lens (centre x, y, semi-axes a, b, rim width, browline
#: depth), then the bridge and both hinge ends as polygons. Everything inside is inpainted.
TRAINING_PHOTO_LENSES = ((216, 202, 37, 32, 10, 16), (314, 196, 40, 32, 10, 16))


TRAINING_PHOTO_FRAME_POLYGONS = (
    ((243, 170), (284, 164), (284, 190), (243, 194)),
    ((156, 168), (192, 168), (192, 194), (156, 192)),
    ((336, 156), (374, 160), (374, 190), (336, 192)),
)


TRAINING_PHOTO_GLINTS = ((331, 183, 5),)  # a reflection on the right lens's browline (x, y, radius)


def training_photo() -> np.ndarray:
    """The one real photo training may use (Grace Hopper, matplotlib's public-domain sample)."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.asarray(Image.open(path).convert("RGB"))


def training_photo_frame_mask(shape: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w): 255 where her own frames (rims, browline, bridge, hinges) are."""
    mask = np.zeros(shape, np.uint8)
    for cx, cy, a, b, rim, brow in TRAINING_PHOTO_LENSES:
        lens = np.zeros_like(mask)
        cv2.ellipse(lens, (cx, cy), (a, b), 0, 0, 360, 255, -1)
        inner = np.zeros_like(mask)
        cv2.ellipse(inner, (cx, cy), (a - rim, b - rim), 0, 0, 360, 255, -1)
        inner[: cy - b + brow] = 0  # the browline is solid: the whole top band goes
        mask |= lens & ~inner
    for poly in TRAINING_PHOTO_FRAME_POLYGONS:
        cv2.fillPoly(mask, [np.array(poly, np.int32)], 255)
    for x, y, r in TRAINING_PHOTO_GLINTS:
        cv2.circle(mask, (x, y), r, 255, -1)
    return mask


def training_photo_bare() -> np.ndarray:
    """Her photo with her frames inpainted away (Telea): soft bands where the rims were, no frame."""
    rgb = training_photo()
    bgr = cv2.inpaint(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), training_photo_frame_mask(rgb.shape[:2]), 6, cv2.INPAINT_TELEA
    )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
