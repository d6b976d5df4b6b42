"""The asset convention every GlassFinder eyewear asset follows (DESIGN.md, "Asset convention").

GLB, metres, +Y up, +Z out of the face towards the camera, temples towards -Z, origin at the
bridge centre. Parts are nodes named after their role; a part made of several materials has
extra nodes named `<role>.<detail>` (e.g. `temple_left.tip`). The subject's left is +X.
Lens materials use alphaMode BLEND.
"""

from __future__ import annotations

import numpy as np

PARTS = ("frame", "lens_left", "lens_right", "temple_left", "temple_right", "nose_pads")
REQUIRED_PARTS = ("frame", "lens_left", "lens_right")


def part_of(node_name: str) -> str | None:
    """The role a node belongs to, or None when its name follows no role."""
    role = node_name.split(".", 1)[0]
    return role if role in PARTS else None


def bridge_centre(vertices: np.ndarray) -> np.ndarray:
    """Where the origin goes: the centre of the bridge, in an asset already oriented (n, 3).

    The bridge is the frontmost geometry crossing the vertical mid-plane; nose pads, which can
    also come near the mid-plane on narrow bridges, sit several millimetres behind it.
    """
    near = bridge_vertices(vertices)
    return np.array(
        [
            (vertices[:, 0].min() + vertices[:, 0].max()) / 2,
            (near[:, 1].min() + near[:, 1].max()) / 2,
            (near[:, 2].min() + near[:, 2].max()) / 2,
        ]
    )


def bridge_vertices(vertices: np.ndarray, *, depth_m: float = 0.004) -> np.ndarray:
    """Vertices of the bridge: near the mid-plane (3% of the width) and within `depth_m` of the
    frontmost of those."""
    x = vertices[:, 0]
    xmid = (x.min() + x.max()) / 2
    near = np.abs(x - xmid) < 0.03 * max(float(np.ptp(x)), 1e-9)
    if not near.any():
        near = np.abs(x - xmid) <= np.abs(x - xmid).min() + 1e-9
    sel = vertices[near]
    return sel[sel[:, 2] > sel[:, 2].max() - depth_m]
