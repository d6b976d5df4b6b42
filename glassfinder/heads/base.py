"""What every face source provides: a head to render (or a photo to render onto) and anchors.

Coordinates follow the asset convention: metres, +Y up, +Z out of the face, +X the subject's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh


@dataclass(frozen=True)
class Anchors:
    """Points fitting needs, in head coordinates (metres)."""

    pupil_left: np.ndarray
    pupil_right: np.ndarray
    nose_bridge: np.ndarray  # where a frame's bridge rests
    ear_left: np.ndarray  # where the left temple rests on the ear root
    ear_right: np.ndarray
    head_width_m: float  # across the temples (the bones behind the eyes)


@dataclass
class Head:
    """One identity: meshes with vertex colours, anchors and named 3D landmarks."""

    face_id: str
    meshes: list[tuple[str, trimesh.Trimesh]]  # (name, mesh with vertex colours)
    anchors: Anchors
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (3,)
    traits: dict[str, object] = field(default_factory=dict)

    def landmark_array(self) -> tuple[list[str], np.ndarray]:
        names = sorted(self.landmarks)
        return names, np.array([self.landmarks[n] for n in names])
