"""Glasses layers put onto a new real face each time training draws them (#33).

A photo-bank render composites its glasses onto one face, once: every epoch shows a product on
the same two faces, and a face can end up telling products apart. A glasses-layer spec
(RenderSpec.glasses_layer) keeps the layer alone, fitted and lit for a bank face; training puts it
over a face drawn anew at every step, with the renderer's own over-operator (premultiplied colour
plus (1 - alpha) x face), so what changes from draw to draw is the face, never the glasses.
Faces are aligned on their eyes like the views, so the layer lands where its own face's eyes were.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from glassfinder.embed.align import CropGeometry, align_crop
from glassfinder.heads.photos import PhotoBank
from glassfinder.render.spec import photo_bank_location
from glassfinder.store.base import ObjectStore


@dataclass
class LayerViews:
    """What compositing needs besides a view's premultiplied colour (kept in `ViewSet.crops`).

    row_layer: (n,) int, one per row of the ViewSet that holds this: the row's index into
    `alpha` (its crop is then the layer's premultiplied colour), or -1 for a whole view;
    alpha: (m, h, w) uint8 coverage of each layer view;
    faces: (k, h, w, 3) uint8 bare faces aligned like the views, drawn from per step.
    """

    row_layer: np.ndarray
    alpha: np.ndarray
    faces: np.ndarray

    def subset(self, mask: np.ndarray) -> LayerViews:
        """The same layers for the rows `mask` keeps (the alphas they index stay as they are)."""
        return replace(self, row_layer=self.row_layer[mask])

    def view(self, crop: np.ndarray, row: int, rng: np.random.Generator) -> np.ndarray:
        """Row `row`'s crop as training sees it: a whole view as stored (drawing nothing), a
        layer over a face drawn from `rng` (mirrored half the time)."""
        layer = int(self.row_layer[row])
        if layer < 0:
            return crop
        face = self.faces[int(rng.integers(len(self.faces)))]
        if rng.random() < 0.5:
            face = face[:, ::-1]  # the canonical eyes are mirror-symmetric about the centre
        return over(crop, self.alpha[layer], face)


def over(premult: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """(h, w, 3) premultiplied colour + (h, w) alpha over a (h, w, 3) backdrop, all uint8."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = premult.astype(np.float32) + (1.0 - a) * backdrop.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def bank_faces(store: ObjectStore, face_source: str, geometry: CropGeometry) -> np.ndarray:
    """(k, h, w, 3) the usable faces of a spec's photo bank, aligned on their eyes.

    store: where the bank's analyses and crops are cached (the store the layers were rendered
    into, which cached them while rendering).
    """
    bank_store, prefix = photo_bank_location(face_source, store)
    photos, _ = PhotoBank(bank_store, prefix, store).scan()
    crops = PhotoBank(store, "", store)
    return np.stack(
        [
            align_crop(crops.crop(key), np.array([face.eye_left_xy, face.eye_right_xy]), geometry)
            for face, key in photos
        ]
    )
