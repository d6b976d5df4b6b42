"""Lens outlines of the ten shape families, as smooth closed 2D curves in millimetres.

Outlines are drawn for the subject's left lens (at +X) with +x pointing outwards (towards the
temple) and +y up; the right lens mirrors it. Every outline is resampled by arc length and
low-pass filtered, so rims swept along it show no facets even at 512 px.
"""

from __future__ import annotations

import numpy as np

FAMILIES = (
    "round",
    "oval",
    "rectangle",
    "square",
    "cat-eye",
    "aviator",
    "browline",
    "geometric",
    "wayfarer",
    "oversized",
)

#: Points per outline: segments under 0.75 mm (about 2 px when a frame fills a 512 px image).
OUTLINE_POINTS = 300


def _superellipse(t: np.ndarray, n: float) -> np.ndarray:
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.sign(c) * np.abs(c) ** (2 / n), np.sign(s) * np.abs(s) ** (2 / n)], axis=1)


def _polygon(t: np.ndarray, sides: int, phase: float) -> np.ndarray:
    seg = 2 * np.pi / sides
    r = np.cos(np.pi / sides) / np.cos(((t - phase) % seg) - seg / 2)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _resample_closed(points: np.ndarray, count: int) -> np.ndarray:
    """Evenly spaced points by arc length along the closed polyline `points` (n, 2)."""
    loop = np.vstack([points, points[:1]])
    seg = np.linalg.norm(np.diff(loop, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, s[-1], count, endpoint=False)
    return np.stack([np.interp(targets, s, loop[:, i]) for i in range(2)], axis=1)


def _smooth_closed(points: np.ndarray, sigma_points: float) -> np.ndarray:
    """Circular Gaussian low-pass: rounds corners into fillets of ~sigma_points samples."""
    n = len(points)
    freqs = np.fft.fftfreq(n)
    gain = np.exp(-0.5 * (2 * np.pi * freqs * sigma_points) ** 2)
    return np.real(np.fft.ifft(np.fft.fft(points, axis=0) * gain[:, None], axis=0))


def lens_outline(family: str, width_mm: float, height_mm: float, shape: dict[str, float]) -> np.ndarray:
    """Outline (OUTLINE_POINTS, 2) of a lens `width_mm` x `height_mm`, centred on its bounding box.

    shape: family-specific knobs drawn by the design sampler (e.g. 'n' superellipse exponent,
    'lift' cat-eye corner lift, 'sag' aviator drop, 'taper' wayfarer trapezoid).
    """
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    if family in ("round", "oval"):
        p = _superellipse(t, shape.get("n", 2.0))
    elif family in ("rectangle", "square", "browline", "oversized"):
        p = _superellipse(t, shape["n"])
    elif family == "cat-eye":
        p = _superellipse(t, shape["n"])
        x, y = p[:, 0], p[:, 1]
        lift = shape["lift"]
        # Upper outer corner swept up and out; lower outer edge pulled in: the cat-eye wing.
        wing = np.clip(x, 0, None) ** 2 * np.clip(y + 0.3, 0, None)
        p = np.stack(
            [
                x * (1 + 0.25 * lift * np.clip(y, 0, None))
                - 0.2 * lift * np.clip(x, 0, None) * np.clip(-y, 0, None),
                y + lift * wing,
            ],
            1,
        )
    elif family == "aviator":
        p = _superellipse(t, shape["n"])
        x, y = p[:, 0], p[:, 1]
        sag = shape["sag"]
        # Teardrop: the lower half drops most on the nose side (-x), the top stays flat.
        y = np.where(y < 0, y * (1 + sag * np.clip(0.4 - x, 0, None)), y * 0.85)
        p = np.stack([x, y], 1)
    elif family == "geometric":
        p = _polygon(t, int(shape["sides"]), shape["phase"])
    elif family == "wayfarer":
        p = _superellipse(t, shape["n"])
        x, y = p[:, 0], p[:, 1]
        taper = shape["taper"]
        p = np.stack([x * (1 + taper * y), y + 0.18 * np.clip(y, 0, None) * x], 1)
    else:
        raise ValueError(f"unknown shape family {family!r}, expected one of {FAMILIES}")
    p = _resample_closed(p, 720)
    p = _smooth_closed(p, shape.get("fillet", 6.0))
    p = _resample_closed(p, OUTLINE_POINTS)
    lo, hi = p.min(0), p.max(0)
    p = (p - (lo + hi) / 2) / (hi - lo) * np.array([width_mm, height_mm])
    # Start at the outermost point and run counter-clockwise, so index 0 is the same for all.
    if _signed_area(p) < 0:
        p = p[::-1]
    return np.roll(p, -int(np.argmax(p[:, 0] - 0.01 * np.abs(p[:, 1]))), axis=0)


def _signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def outward_normals(p: np.ndarray) -> np.ndarray:
    """Unit in-plane outward normals (n, 2) of a counter-clockwise closed curve."""
    tangent = np.roll(p, -1, axis=0) - np.roll(p, 1, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)


def offset_outline(p: np.ndarray, distance_mm: float) -> np.ndarray:
    """The closed curve moved `distance_mm` outwards along its normals."""
    return p + outward_normals(p) * distance_mm
