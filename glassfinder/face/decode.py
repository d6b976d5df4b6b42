"""The one guarded image decoder: uploads and photos become upright RGB within a budget the bytes
cannot lie about.

Every path that turns someone else's bytes into pixels (the search CLI and service, the
evaluation page behind it, the photo bank) calls `decode_image`, so one set of checks holds:

- the header's pixel count is checked before any pixel is decoded (`max_pixels`);
- JPEGs (and MPO, the multi-frame JPEG phones write) are decoded in Pillow's draft mode at the
  smallest of 1/1, 1/2, 1/4, 1/8 scale that still keeps `work_side_px` on the longer side: a
  12 MP phone photo becomes 3 MP of RGB (9 MB, not 36), and a 629-byte file claiming
  6324 x 6324 px a quarter of a side;
- what the decode will hold at its peak (decoded pixels plus the RGB and upright copies) is
  estimated from the size after drafting and refused past `max_decode_bytes`, whatever the
  header claims about compression;
- truncated data is refused: a JPEG without an end-of-image marker after its scan, and any
  file Pillow cannot finish decoding (Pillow's LOAD_TRUNCATED_IMAGES is never consulted);
- phone formats come out as the same 8-bit upright RGB: MPO (first frame), 16-bit and palette
  PNG (alpha composited on white), CMYK JPEG (Adobe-inverted too), HEIC/HEIF through
  pillow-heif (libheif's decoder in a maintained wheel), EXIF orientation applied.

Failures are `ImageRefusedError`s with a stable reason: `not_an_image` (also truncated or
damaged data, the detail says which), `unsupported_format`, `too_many_pixels`.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

from glassfinder.errors import BadInputError, ImageRefusedError

#: Formats accepted by default (Pillow's names). HEIF is accepted when pillow-heif is installed.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "HEIF")
DEFAULT_MAX_PIXELS = 40_000_000
#: Peak bytes one decode may hold: a 16 MP PNG (48 MB of RGB, its upright copy, the decoder's own
#: buffer) fits, a 40 MP PNG does not; a JPEG of any size fits once drafted.
DEFAULT_MAX_DECODE_BYTES = 192 * 1024 * 1024
#: JPEGs are drafted to the smallest scale that keeps at least this many pixels on the longer
#: side: the detector's largest pass (search.query.DETECT_MAX_SIDE_PX), so no pass loses detail
#: (a 4032 x 3024 phone photo is decoded at 2016 x 1512).
DEFAULT_WORK_SIDE_PX = 1024
_JPEG_LIKE = ("JPEG", "MPO")
_HEIF_LOCK = threading.Lock()
_heif_registered: bool | None = None


@dataclass(frozen=True)
class DecodeBudget:
    """What one decode may cost; validated on construction so a bad flag fails at start-up."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    work_side_px: int = DEFAULT_WORK_SIDE_PX
    formats: tuple[str, ...] = ACCEPTED_FORMATS

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("max_pixels", 1, 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)),
            ("max_decode_bytes", 1024 * 1024, 64 * 1024**3),
            ("work_side_px", 64, 65_536),
        ):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise BadInputError(f"DecodeBudget.{name} must be between {lo:,} and {hi:,}, got {value:,}")


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF once, if pillow-heif is installed (it is optional: without it a
    HEIC upload is `unsupported_format`, never a crash)."""
    global _heif_registered
    with _HEIF_LOCK:
        if _heif_registered is None:
            try:
                import pillow_heif  # optional (see above): imported once, on the first HEIC/HEIF upload

                pillow_heif.register_heif_opener(thumbnails=False)
                _heif_registered = True
            except ImportError:
                _heif_registered = False
    return bool(_heif_registered)


def _jpeg_complete(data: bytes) -> bool:
    """An end-of-image marker (FF D9) after the first start-of-scan (FF DA): what a truncated
    JPEG lacks. libjpeg pads a cut-off scan with grey and Pillow returns it as if whole."""
    sos = data.find(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos + 2) >= 0


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    if mode in ("LA", "PA", "I;16", "I;16B", "I;16L", "I;16N"):
        return 2
    if mode == "RGB" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        return 3
    return 4  # RGBA, CMYK, I, F, RGBX, ...


def _to_rgb(img: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8 of any decoded mode: 16-bit grey scaled (not clipped), alpha on white."""
    mode = img.mode
    if mode.startswith("I"):  # 16-bit (or 32-bit) greyscale: Pillow's convert clips at 255
        a = np.asarray(img).astype(np.uint32)
        peak = 65535 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        grey = (a * 255 + peak // 2) // peak
        return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float32))
        grey = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, img.convert("RGBA")).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, name: str, budget: DecodeBudget = DecodeBudget()) -> np.ndarray:
    """(h, w, 3) uint8 upright RGB of an image's bytes, or ImageRefusedError saying why not.

    JPEGs larger than `budget.work_side_px` come back drafted (1/2, 1/4 or 1/8 of their size):
    callers measure in the returned pixels.
    """
    if "HEIF" in budget.formats:
        _register_heif()
    Image.init()
    # Only the accepted formats' plugins parse the header (MPO is found by the JPEG plugin).
    openers = [f for f in budget.formats if f in Image.OPEN and f != "MPO"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=openers)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefusedError("too_many_pixels", f"{name} is a decompression bomb ({exc})") from exc
    except Exception as exc:  # UnidentifiedImageError, OSError, ValueError, a plugin's own error
        raise ImageRefusedError("not_an_image", f"{name} is not a readable image") from exc
    if img.format not in budget.formats:
        raise ImageRefusedError(
            "unsupported_format",
            f"{name} is {img.format}, expected one of {', '.join(budget.formats)}",
        )
    width, height = img.size
    if width * height > budget.max_pixels:
        raise ImageRefusedError(
            "too_many_pixels", f"{name} is {width}x{height} px, more than {budget.max_pixels:,} pixels"
        )
    if img.format in _JPEG_LIKE:
        if not _jpeg_complete(data):
            raise ImageRefusedError("not_an_image", f"{name} is truncated (no end of image after its scan)")
        longer = max(width, height)
        if longer > budget.work_side_px:
            keep = budget.work_side_px / longer
            img.draft(img.mode if img.mode == "CMYK" else "RGB", (round(width * keep), round(height * keep)))
    # Peak: the decoded pixels, the RGB conversion, the upright copy (and compositing for alpha).
    peak = img.width * img.height * (_bytes_per_pixel(img.mode) + 3 * 3)
    if peak > budget.max_decode_bytes:
        raise ImageRefusedError(
            "too_many_pixels",
            f"{name} is {width}x{height} px: decoding it would hold ~{peak / 2**20:.0f} MiB, "
            f"more than the {budget.max_decode_bytes / 2**20:.0f} MiB budget",
        )
    truncated_setting = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        if truncated_setting:  # another caller's global: never decode a cut-off file here
            raise ImageRefusedError(
                "not_an_image", "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode uploads"
            )
        img.load()
        upright = ImageOps.exif_transpose(img)
        return _to_rgb(upright)
    except ImageRefusedError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefusedError("too_many_pixels", f"{name} is a decompression bomb ({exc})") from exc
    except Exception as exc:  # truncated data, bad chunks, EXIF that cannot be parsed, ...
        raise ImageRefusedError("not_an_image", f"{name} is damaged ({type(exc).__name__}: {exc})") from exc
