"""Image bytes -> validated, EXIF-corrected RGB pixels, and the model-input resize. CPU only (PIL/numpy).

Every failure is a typed 4xx error (serve_app.errors), never an uncaught exception: not an image,
truncated/corrupt data, too many bytes, too many pixels (decompression bombs) and unsupported formats.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from serve_app.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, not a grey bottom half

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
SUPPORTED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif", "application/octet-stream"}
)


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            if fmt not in SUPPORTED_FORMATS:
                raise UnsupportedMediaType(f"image format {fmt or 'unknown'} is not supported", "unsupported_image_type")
            w, h = img.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels, limit {max_pixels}", "image_too_many_pixels")
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = np.asarray(upright.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}", "image_too_many_pixels") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a decodable image", "invalid_image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated / corrupt data
        raise InvalidImage(f"corrupt or truncated image: {exc}", "invalid_image") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InvalidImage("image has no pixels", "invalid_image")
    return DecodedImage(rgb=np.ascontiguousarray(rgb), sha256=hashlib.sha256(data).hexdigest(), format=fmt)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H,W,3) -> uint8 (size,size,3), bilinear with antialiasing, aspect NOT kept (SAM 3 squashes)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
