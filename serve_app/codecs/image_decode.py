"""Image bytes -> validated, EXIF-corrected RGB pixels, and the model-input resize. CPU only (PIL/numpy).

Every failure is a typed 4xx error (serve_app.errors), never an uncaught exception: not an image,
truncated/corrupt data, too many bytes, too many pixels (decompression bombs) and unsupported formats.

Pixel formats (PIL modes) -> RGB uint8, never silently white or black:
- RGB, RGBX, CMYK (Adobe-inverted JPEGs included), YCbCr, L, 1 (0/255), P without transparency: converted.
- Alpha (RGBA, LA, PA, premultiplied RGBa/La) and P/L/RGB with a transparency key: composited over white.
- 16-bit (I;16, I;16B, ...) and 32-bit integer (I) images with values in 0..65535: scaled v * 255 / 65535
  (rounded), not clipped; 16-bit RGB(A) PNG/TIFF are reduced to 8 bits by Pillow itself.
- 32-bit float (F): values must be finite and within [0, 1], scaled by 255.
- Anything else (LAB, HSV, I outside 0..65535, F outside [0, 1]): 415 unsupported_image_mode.
- Animated GIF/PNG/WebP and multi-page TIFF: the FIRST frame is used (the others are never decoded).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from serve_app.errors import InvalidImage, PayloadTooLarge, Sam3Error, UnsupportedMediaType

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, not a grey bottom half

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
SUPPORTED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif", "application/octet-stream"}
)
_CONVERTIBLE_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"})  # PIL converts these to RGB
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """rgb: uint8 (H,W,3), EXIF orientation applied; sha256: hex digest of the original bytes."""

    rgb: np.ndarray
    sha256: str
    format: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def check_content_type(content_type: str | None) -> None:
    """415 for declared types that are certainly not images (a missing type is sniffed from the bytes)."""
    if content_type is None:
        return
    base = content_type.split(";")[0].strip().lower()
    if base and base not in SUPPORTED_CONTENT_TYPES:
        raise UnsupportedMediaType(f"unsupported image content type {base!r}", "unsupported_image_type")


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode `data` into RGB uint8 (H,W,3) at its EXIF-corrected orientation.

    Raises PayloadTooLarge (too many bytes or width*height > max_pixels, checked from the header before
    decoding), UnsupportedMediaType (an image format we do not accept), InvalidImage (empty, not an
    image, truncated, corrupt).
    """
    if not data:
        raise InvalidImage("image is empty", "empty_image")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes, limit {max_bytes}", "image_too_large")
    try:
        # Pillow raises DecompressionBombError itself above 2x Image.MAX_IMAGE_PIXELS; below, our own limit
        # (checked from the header, before any pixel is decoded) decides. No warnings filter: it is
        # process-global state and this runs in worker threads.
        img = Image.open(io.BytesIO(data))
        fmt = img.format or ""
        if fmt not in SUPPORTED_FORMATS:
            raise UnsupportedMediaType(f"image format {fmt or 'unknown'} is not supported", "unsupported_image_type")
        w, h = img.size
        if w * h > max_pixels:
            raise PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels, limit {max_pixels}", "image_too_many_pixels")
        img.load()  # the first frame of an animated / multi-page image: the one we use
        # exif_transpose copies the whole image even when there is nothing to rotate: ask first
        upright = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
        rgb = to_rgb(upright)
    except Sam3Error:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}", "image_too_many_pixels") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a decodable image", "invalid_image") from exc
    except MemoryError as exc:
        raise PayloadTooLarge("image is too large to decode", "image_too_many_pixels") from exc
    except Exception as exc:  # truncated / corrupt data: any decoder failure is the bytes' fault
        raise InvalidImage(f"corrupt or truncated image ({type(exc).__name__})", "invalid_image") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InvalidImage("image has no pixels", "invalid_image")
    return DecodedImage(rgb=np.ascontiguousarray(rgb), sha256=hashlib.sha256(data).hexdigest(), format=fmt)


def to_rgb(img: Image.Image) -> np.ndarray:
    """A loaded PIL image of any supported mode -> uint8 (H,W,3) (the rules in the module docstring).
    Raises UnsupportedMediaType (unsupported_image_mode) for pixel formats without a faithful 8-bit RGB."""
    mode = img.mode
    if mode in _CONVERTIBLE_MODES and "transparency" in img.info and mode != "CMYK":
        img, mode = img.convert("RGBA"), "RGBA"  # a transparency key (tRNS / GIF): composite like alpha
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)  # convert("RGB") would copy the image once more
    if mode in _CONVERTIBLE_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema() == (255, 255):  # fully opaque: nothing to composite
            return np.asarray(rgba.convert("RGB"), dtype=np.uint8)
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba.convert("RGB"), mask=alpha)
        return np.asarray(canvas, dtype=np.uint8)
    if mode in _INT_MODES:
        return _gray_to_rgb(_scale_16bit(np.asarray(img), mode))
    if mode == "F":
        return _gray_to_rgb(_scale_float(np.asarray(img, dtype=np.float32)))
    raise UnsupportedMediaType(f"pixel format {mode} is not supported (use 8- or 16-bit RGB or grayscale)",
                               "unsupported_image_mode")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when absent or unreadable), as ImageOps.exif_transpose reads it."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except (TypeError, ValueError):
        return 0  # unreadable: let exif_transpose decide


def _scale_16bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Integer samples in 0..65535 -> uint8, v * 255 / 65535 rounded (65535 -> 255, 257 -> 1)."""
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise UnsupportedMediaType(f"{mode} image with values in {lo}..{hi}: only 0..65535 is supported",
                                   "unsupported_image_mode")
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """float samples in [0, 1] -> uint8 (x 255, rounded); anything else is ambiguous: 415."""
    if values.size and not np.isfinite(values).all():
        raise UnsupportedMediaType("float image with NaN or infinite values", "unsupported_image_mode")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise UnsupportedMediaType(f"float image with values in [{lo:g}, {hi:g}]: only [0, 1] is supported",
                                   "unsupported_image_mode")
    return np.rint(values * 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H,W,3) -> uint8 (size,size,3), bilinear with antialiasing, aspect NOT kept (SAM 3 squashes)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
