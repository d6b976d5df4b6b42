"""Backgrounds behind try-on renders: gradients, coloured noise and procedural textures.

Deterministic from a seed; returned as (size, size, 3) float32 in 0..1 display (sRGB) space, the
space the renderer's output is composited in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Backgrounds are drawn at most this large, then upscaled: they sit behind the subject, out of
#: focus, and drawing them at full size cost more than a quarter of a 512 px view.
DRAW_PX = 128


def background(kind: str, size_px: int, seed: int) -> np.ndarray:
    small = _draw(kind, min(size_px, DRAW_PX), seed)
    if small.shape[0] == size_px:
        return small
    img = Image.fromarray((small * 255 + 0.5).astype(np.uint8)).resize(
        (size_px, size_px), Image.Resampling.BICUBIC
    )
    return np.asarray(img, dtype=np.float32) / 255.0


def _draw(kind: str, size_px: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, size_px])
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32) / size_px
    a, b = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
        img = a * (1 - t) + b * t
    elif kind == "noise":
        freq = np.fft.fftfreq(size_px)
        fx, fy = np.meshgrid(freq, freq)
        blur = np.exp(-0.5 * (fx**2 + fy**2) / rng.uniform(0.01, 0.06) ** 2)
        field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size_px, size_px))) * blur))
        field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
        img = a * (1 - field[..., None]) + b * field[..., None]
    elif kind == "texture":
        period = rng.uniform(0.04, 0.2)
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        pattern = rng.integers(3)
        if pattern == 0:  # stripes
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        elif pattern == 1:  # checks
            t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        else:  # tiles with grout
            t = ((u / period) % 1 > 0.08) & ((v / period) % 1 > 0.08)
            t = t.astype(np.float32)
        img = a * (1 - t[..., None]) + b * t[..., None]
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    img = img + rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)
