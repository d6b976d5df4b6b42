"""Whole-face try-on renders with exact landmark truth: the face-analysis network's training data.

The renderer knows where every landmark of a procedural head lands in the image, so eye centres,
eye corners, nose and mouth come without a human annotator, with and without glasses, under every
pose, lens and light the render spec draws. Views are framed on the whole head (not the eye band
the embedding sees) because the network looks at what a face detector hands it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from glassfinder.catalog.loader import import_glb
from glassfinder.errors import BadInputError
from glassfinder.face.landmarks import FACE_LANDMARKS
from glassfinder.heads.procedural import head
from glassfinder.render.spec import DEFAULT_LENS_PALETTE, RenderSpec, plan_view
from glassfinder.render.tryon import AssetMeshes, TryOnRenderer, window_to_pixel_index

#: Gradient lenses (dark at the top, clear at the bottom are not modelled; a mid tint stands in).
_EXTRA_LENSES: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("tinted", (0.35, 0.25, 0.15, 0.45)),
    ("tinted", (0.2, 0.3, 0.2, 0.55)),
    ("mirrored", (0.8, 0.75, 0.7, 0.9)),
)
#: Wider poses than the catalogue (shoppers turn and tilt), the whole head in view, identities
#: 0-999 (held-out identities are chosen by the trainer), a seed no other spec uses.
FACE_SPEC = RenderSpec(
    image_px=192,
    yaw_deg=(-45.0, 45.0),
    pitch_deg=(-15.0, 15.0),
    roll_deg=(-15.0, 15.0),
    framing_m=(0.24, 0.36),
    fit_jitter=0.5,
    lens_palette=DEFAULT_LENS_PALETTE + _EXTRA_LENSES,
    seed=6161,
)


@dataclass(frozen=True)
class FaceSample:
    """One render and its truth (pixel-index coordinates of `rgb`: pixel i's centre at i)."""

    index: int
    rgb: np.ndarray  # (s, s, 3) uint8
    landmarks_xy: np.ndarray  # (len(FACE_LANDMARKS), 2) float32
    worn: bool
    glasses_box_xyxy: np.ndarray  # (4,) float32; zeros when bare
    face_index: int
    lens_style: str  # "" when bare


def render_face_samples(
    assets: Sequence[tuple[str, bytes]],
    indices: Sequence[int],
    *,
    spec: RenderSpec = FACE_SPEC,
    worn_share: float = 0.65,
) -> Iterator[FaceSample]:
    """Sample `i` of `indices`: a catalogue frame (or none) on a procedural head, all draws seeded
    by (spec.seed, i), so any subset of indices can be rendered by any process and resumed."""
    if not assets:
        raise BadInputError("face renders need at least one catalogue asset, got none")
    renderer = TryOnRenderer(spec.image_px, head_cache=8)
    meshes: dict[str, AssetMeshes] = {}
    try:
        for i in indices:
            rng = np.random.default_rng([spec.seed, int(i)])
            sha, data = assets[int(rng.integers(len(assets)))]
            worn = bool(rng.random() < worn_share)
            view = plan_view(spec, sha, int(i), fixed_lens=None)
            view = replace(
                view, aim_offset=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.04, 0.02)))
            )
            asset = None
            if worn:
                if sha not in meshes:
                    meshes[sha] = AssetMeshes(import_glb(data))
                asset = meshes[sha]
            out = renderer.render(asset, head(view.face_index), view)
            no_box = np.zeros(4, np.float32)
            order = [out.landmark_names.index(n) for n in FACE_LANDMARKS]
            yield FaceSample(
                index=int(i),
                rgb=out.rgb,
                landmarks_xy=window_to_pixel_index(out.landmarks_xy[order]),
                worn=worn,
                glasses_box_xyxy=window_to_pixel_index(out.glasses_box_xyxy) if worn else no_box,
                face_index=view.face_index,
                lens_style=view.lens_style if worn else "",
            )
    finally:
        renderer.close()
