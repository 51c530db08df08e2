"""Test helpers: synthetic images in several encodings and response decoding."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def rgb_image(width: int = 130, height: int = 90, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 (H,W,3) RGB: a gradient with a few solid rectangles."""
    rng = np.random.RandomState(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    for _ in range(3):
        x0, y0 = rng.randint(0, width // 2), rng.randint(0, height // 2)
        img[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.randint(0, 255, 3)
    return img


def encode(img: np.ndarray, fmt: str = "PNG", exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    pil.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_bytes(width: int = 130, height: int = 90, seed: int = 0) -> bytes:
    return encode(rgb_image(width, height, seed))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
