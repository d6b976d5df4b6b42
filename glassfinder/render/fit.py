"""Fitting a frame on a face: bridge on the nose, lens centres at pupil height, width to the head,
temples swung to the ears; optional jitter (slid down the nose, tilted) as real wearers do.

Poses are 4x4 matrices from asset coordinates to head coordinates (both in the convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from glassfinder.catalog.convention import part_of
from glassfinder.heads.base import Anchors

#: The frame's front is this much wider than the head across the temples.
WIDTH_MARGIN = 1.04
#: Gap between the cornea and the back of the lens (the "vertex distance").
VERTEX_DISTANCE_M = 0.012
SCALE_LIMITS = (0.75, 1.3)


@dataclass(frozen=True)
class Fit:
    front_pose: np.ndarray  # frame, lenses, nose pads
    temple_poses: dict[str, np.ndarray]  # 'left' / 'right'
    scale: float


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1 / (1 + c))


def part_vertices(scene: trimesh.Scene) -> dict[str, np.ndarray]:
    """World-space vertices of each role of an asset scene."""
    out: dict[str, list[np.ndarray]] = {}
    for node in scene.graph.nodes_geometry:
        role = part_of(node) or "frame"
        pose, geom = scene.graph[node]
        v = np.asarray(scene.geometry[geom].vertices)
        out.setdefault(role, []).append(v @ pose[:3, :3].T + pose[:3, 3])
    return {k: np.vstack(v) for k, v in out.items()}


def fit_frame(
    parts: dict[str, np.ndarray], anchors: Anchors, *, slide_m: float = 0.0, tilt_deg: float = 0.0
) -> Fit:
    """Where the asset's parts go on a head with `anchors`."""
    lens = np.vstack([parts["lens_left"], parts["lens_right"]])
    front = np.vstack([parts["frame"], lens])
    front = front[front[:, 2] > front[:, 2].max() - 0.03]  # the front, not the temples
    width = float(np.ptp(front[:, 0]))
    scale = float(np.clip(anchors.head_width_m * WIDTH_MARGIN / width, *SCALE_LIMITS))
    lens_centre_y = float(np.mean([parts["lens_left"][:, 1].min(), parts["lens_left"][:, 1].max()]))
    lens_back_z = float(np.percentile(lens[:, 2], 5))
    pupils = (anchors.pupil_left + anchors.pupil_right) / 2
    origin = np.array(
        [
            pupils[0],
            pupils[1] - scale * lens_centre_y - slide_m,
            max(anchors.nose_bridge[2] + 0.002, pupils[2] + VERTEX_DISTANCE_M - scale * lens_back_z)
            - 0.6 * slide_m,
        ]
    )
    front_pose = np.eye(4)
    front_pose[:3, :3] = (
        trimesh.transformations.rotation_matrix(np.radians(tilt_deg), [0, 0, 1])[:3, :3] * scale
    )
    front_pose[:3, 3] = origin
    temple_poses = {}
    for side, ear in (("left", anchors.ear_left), ("right", anchors.ear_right)):
        temple = parts.get(f"temple_{side}")
        if temple is None:
            continue
        hinge = temple[np.argmax(temple[:, 2])]
        # The straight part of the temple, before the bend behind the ear.
        straight = temple[temple[:, 2] > hinge[2] - 0.09]
        far = straight[np.argmin(straight[:, 2])]
        hinge_w = front_pose[:3, :3] @ hinge + origin
        far_w = front_pose[:3, :3] @ far + origin
        rot = _rotation_between(far_w - hinge_w, ear - hinge_w)
        pose = np.eye(4)
        pose[:3, :3] = rot @ front_pose[:3, :3]
        pose[:3, 3] = hinge_w - pose[:3, :3] @ hinge
        temple_poses[side] = pose
    return Fit(front_pose, temple_poses, scale)
