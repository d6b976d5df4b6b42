"""Augmentations aimed at the synthetic-to-real gap, and the fixed damage applied to eval queries.

Renders are clean: sharp, noiseless, perfectly exposed, losslessly stored, unoccluded and
perfectly aligned. Shoppers' photos are none of those. Each function takes an explicit
generator, so a batch is reproducible from the training seed and step.

Hue is left alone on purpose: colourways of one shape differ *only* in colour, so the model
must keep colour as evidence. Brightness, contrast, saturation and white balance move a little.

The appearance draws (tone curve, resolution loss, lens glare) teach that a camera's rendering
of the same frame is the same frame: another renderer's tone curve, a phone's small face, a
reflection in the lens. Each is drawn only where its probability is above zero, so a config
without them (QUERY_DAMAGE) consumes the generator exactly as before and eval queries stay the same.

The camera draws (CAMERA_AUGMENT: motion blur, vignetting, sharpening halos, a second JPEG) add
what a phone does to a photo that the draws above do not: a shaken hand, a lens's fall-off, a
phone's edge enhancement, an image saved twice. Off by default, drawn the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from glassfinder.embed.align import CropGeometry, align_matrix, jitter_eyes


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and probabilities; the defaults are what training uses."""

    eye_sigma_frac: float = 0.03  # detector noise on each eye, as a fraction of eye distance
    flip_p: float = 0.5
    brightness: float = 0.25  # multiplicative, +-
    contrast: float = 0.25
    saturation: float = 0.25
    white_balance: float = 0.06  # per-channel gain, +-
    blur_p: float = 0.35
    blur_sigma: tuple[float, float] = (0.4, 1.6)
    noise_p: float = 0.5
    noise_sigma: tuple[float, float] = (0.005, 0.04)
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (25, 90)
    occlude_p: float = 0.25
    occlude_area: tuple[float, float] = (0.05, 0.2)
    gamma_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.45)  # x ** g on [0, 1], then an S-curve of the same draw
    downscale_p: float = 0.3
    downscale: tuple[float, float] = (0.3, 0.8)  # fraction of the crop's size, then back up
    glare_p: float = 0.3
    glare_alpha: tuple[float, float] = (0.08, 0.35)
    motion_p: float = 0.0
    motion_px: tuple[float, float] = (3.0, 9.0)  # length of the shake, crop pixels
    vignette_p: float = 0.0
    vignette: tuple[float, float] = (0.15, 0.45)  # darkening at the far corner
    sharpen_p: float = 0.0
    sharpen: tuple[float, float] = (0.5, 1.5)  # unsharp-mask amount
    double_jpeg_p: float = 0.0


#: Training without the appearance draws (what models before them trained with; for comparisons).
BASIC_AUGMENT = AugmentConfig(gamma_p=0.0, downscale_p=0.0, glare_p=0.0)
#: The appearance draws and the camera draws (default_model --augment camera).
CAMERA_AUGMENT = AugmentConfig(motion_p=0.25, vignette_p=0.3, sharpen_p=0.25, double_jpeg_p=0.25)

#: What eval queries get: every damage at once, moderate, so eval measures the gap it aims at.
QUERY_DAMAGE = AugmentConfig(
    eye_sigma_frac=0.03,
    flip_p=0.0,
    brightness=0.2,
    contrast=0.2,
    saturation=0.15,
    white_balance=0.04,
    blur_p=0.7,
    blur_sigma=(0.3, 1.2),
    noise_p=0.7,
    noise_sigma=(0.005, 0.025),
    jpeg_p=0.8,
    jpeg_quality=(40, 90),
    occlude_p=0.0,
    gamma_p=0.0,
    downscale_p=0.0,
    glare_p=0.0,
)


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w, 3) uint8: colour, tone, resolution, occlusion, blur, noise, JPEG."""
    x: np.ndarray = image.astype(np.float32) / 255.0
    x = x * (1.0 + rng.uniform(-cfg.brightness, cfg.brightness))
    mean = x.mean()
    x = (x - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * (1.0 + rng.uniform(-cfg.saturation, cfg.saturation)) + grey
    x = x * (1.0 + rng.uniform(-cfg.white_balance, cfg.white_balance, size=3)).astype(np.float32)
    if cfg.gamma_p > 0 and rng.random() < cfg.gamma_p:
        x = tone_curve(x, float(rng.uniform(*cfg.gamma)), float(rng.uniform(-0.3, 0.3)))
    if cfg.downscale_p > 0 and rng.random() < cfg.downscale_p:
        x = resolution_loss(x, float(rng.uniform(*cfg.downscale)))
    if cfg.vignette_p > 0 and rng.random() < cfg.vignette_p:
        x = vignette(x, float(rng.uniform(*cfg.vignette)), rng)
    if cfg.motion_p > 0 and rng.random() < cfg.motion_p:
        x = motion_blur(x, float(rng.uniform(*cfg.motion_px)), float(rng.uniform(0.0, np.pi)))
    h, w = x.shape[:2]
    if rng.random() < cfg.occlude_p:
        area = rng.uniform(*cfg.occlude_area) * h * w
        aspect = np.exp(rng.uniform(-0.8, 0.8))
        oh = int(min(h, max(2, np.sqrt(area / aspect))))
        ow = int(min(w, max(2, np.sqrt(area * aspect))))
        y0, x0 = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
        x[y0 : y0 + oh, x0 : x0 + ow] = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    if rng.random() < cfg.blur_p:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(*cfg.blur_sigma)))
    if cfg.sharpen_p > 0 and rng.random() < cfg.sharpen_p:
        x = x + float(rng.uniform(*cfg.sharpen)) * (x - cv2.GaussianBlur(x, (0, 0), 1.5))
    if rng.random() < cfg.noise_p:
        x = x + rng.normal(0.0, rng.uniform(*cfg.noise_sigma), size=x.shape).astype(np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_p:
        out = _jpeg(out, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
        if cfg.double_jpeg_p > 0 and rng.random() < cfg.double_jpeg_p:
            out = _jpeg(out, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return np.ascontiguousarray(out)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    return rgb if decoded is None else np.ascontiguousarray(decoded[:, :, ::-1])


def vignette(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A lens's fall-off: darker away from a centre near the middle, by `strength` at the farthest
    corner. The crop is a band of a larger photo, so the centre moves and the fall-off is uneven."""
    h, w = x.shape[:2]
    cy, cx = h * rng.uniform(0.2, 0.8), w * rng.uniform(0.2, 0.8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    gain = 1.0 - strength * r2 / float(r2.max())
    return (x * gain[:, :, None]).astype(np.float32)


def motion_blur(x: np.ndarray, length_px: float, angle: float) -> np.ndarray:
    """A shaken hand: the crop smeared along a line `length_px` long at `angle` (radians)."""
    size = int(np.ceil(length_px)) | 1  # odd, so the line is centred
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = np.cos(angle) * length_px / 2, np.sin(angle) * length_px / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    return cv2.filter2D(x, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT_101)


def tone_curve(x: np.ndarray, gamma: float, s_strength: float) -> np.ndarray:
    """A camera's or renderer's tone mapping: a gamma, then an S-curve (negative: a flattening)."""
    y = np.power(np.clip(x, 0.0, 1.0), gamma)
    s = y * y * (3.0 - 2.0 * y)  # smoothstep: the plain S-curve
    return (y + s_strength * (s - y)).astype(np.float32)


def resolution_loss(x: np.ndarray, frac: float) -> np.ndarray:
    """The crop as a smaller face would give it: down to `frac` of its size, back up bilinearly."""
    h, w = x.shape[:2]
    small = cv2.resize(x, (max(8, round(w * frac)), max(4, round(h * frac))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def lens_glare(
    image: np.ndarray, eyes: np.ndarray, eye_distance: float, rng: np.random.Generator, alpha: float
) -> np.ndarray:
    """A reflection on the lenses: a soft, tilted streak of sky or window light over one or both
    eyes (uint8 in and out). Where the lenses are comes from the aligned crop's eye positions."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = np.zeros((h, w), np.float32)
    for ex, ey in eyes[rng.permutation(2)[: int(rng.integers(1, 3))]]:
        cx = ex + rng.uniform(-0.2, 0.2) * eye_distance
        cy = ey + rng.uniform(-0.15, 0.15) * eye_distance
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        su, sv = eye_distance * rng.uniform(0.15, 0.35), eye_distance * rng.uniform(0.04, 0.12)
        light = np.maximum(light, np.exp(-0.5 * ((u / su) ** 2 + (v / sv) ** 2)))
    tint = rng.uniform(0.85, 1.0, size=3).astype(np.float32) * 255.0
    a = (alpha * light)[:, :, None]
    out = image.astype(np.float32) * (1.0 - a) + tint * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def augment_crop(
    loose: np.ndarray,
    loose_geometry: CropGeometry,
    geometry: CropGeometry,
    rng: np.random.Generator,
    cfg: AugmentConfig,
) -> np.ndarray:
    """A training crop from a loosely aligned one: alignment jitter, flip, then photometric damage.

    loose: (H, W, 3) uint8 aligned with `loose_geometry` (same eyes, a wider field), so the jitter
    can move the band without running out of picture.
    """
    if rng.random() < cfg.flip_p:
        loose = loose[:, ::-1]  # the canonical eyes are mirror-symmetric about the centre
    eyes = jitter_eyes(loose_geometry.eyes(), rng, cfg.eye_sigma_frac)
    crop = cv2.warpAffine(
        np.ascontiguousarray(loose),
        align_matrix(eyes, geometry),
        (geometry.width, geometry.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if cfg.glare_p > 0 and rng.random() < cfg.glare_p:
        canonical = geometry.eyes()
        distance = float(np.linalg.norm(canonical[1] - canonical[0]))
        crop = lens_glare(crop, canonical, distance, rng, float(rng.uniform(*cfg.glare_alpha)))
    return photometric(crop, rng, cfg)


def phone_damage_mapped(rgb: np.ndarray, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """A whole photo damaged like a shopper's phone upload, as JPEG bytes: reframed (70-100% of
    each side kept, off-centre), rescaled (0.6-1.6x), colour-cast, blurred, noisy and compressed;
    and the 2x3 affine from the input's pixels to the damaged photo's (pixel centres at integers),
    so a point known on the input (an eye) is known on the photo. Unlike `photometric`, which
    damages a crop, this changes what the face detector sees: its box, and so the crop itself.
    The benches make their photos with it, and the face network's presence head trains on it."""
    h, w = rgb.shape[:2]
    fx, fy = rng.uniform(0.7, 1.0, size=2)
    cw, ch = int(w * fx), int(h * fy)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = rgb[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
    scale = float(rng.uniform(0.6, 1.6))
    size = (max(64, int(cw * scale)), max(64, int(ch * scale)))
    img: np.ndarray = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    img = img * float(rng.uniform(0.85, 1.15)) * rng.uniform(0.94, 1.06, size=3)
    if rng.random() < 0.7:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), float(rng.uniform(0.3, 1.3)))
    img = img + rng.normal(0.0, rng.uniform(1.0, 6.0), size=img.shape)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 92))])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    sx, sy = size[0] / cw, size[1] / ch
    mapping = np.array([[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5]])
    return buf.tobytes(), mapping
