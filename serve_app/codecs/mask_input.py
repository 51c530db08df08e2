"""The `mask_input` handle of POST /v1/pvs/image: a previous prediction's low-res logits, held by the client.

Format (opaque to clients, documented for the curious): URL-safe base64 (no padding) of
zlib(level 1) of

    b"S3M1" | uint16 LE height m | uint16 LE width m | float16 LE logits, row-major (m, m)

The logits are the mask decoder's low-resolution output for one mask (m = ModelInfo.mask_size: 288 for
facebook/sam3, 32 for the tiny test checkpoint), covering the whole image in the model's square frame.
The server keeps no state: the next click sends the handle back and the decoder uses it as its dense
mask prompt. fp16 keeps the logits exact enough for refinement; a 288x288 handle is ~100-170 kB.
Decoding never trusts the input: size-capped decompression, magic, shape and finiteness are checked,
and every failure is InvalidInput("invalid_mask_input"). CPU only (numpy/zlib).
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib

import numpy as np

from serve_app.errors import InvalidInput

MAGIC = b"S3M1"
_HEADER = struct.Struct("<4sHH")


def encode_mask_input(logits: np.ndarray) -> str:
    """float (m,m) logits -> handle string."""
    arr = np.ascontiguousarray(logits, dtype="<f2")
    if arr.ndim != 2:
        raise ValueError(f"mask logits must be 2-D, got {arr.shape}")
    raw = _HEADER.pack(MAGIC, arr.shape[0], arr.shape[1]) + arr.tobytes()
    return base64.urlsafe_b64encode(zlib.compress(raw, 1)).rstrip(b"=").decode("ascii")


def decode_mask_input(handle: str, mask_size: int, *, where: str = "mask_input") -> np.ndarray:
    """Handle string -> float16 (mask_size, mask_size). Raises InvalidInput("invalid_mask_input")."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"{where} is not a mask_input handle returned by this service ({why})",
                            "invalid_mask_input")

    expected = _HEADER.size + 2 * mask_size * mask_size
    if not isinstance(handle, str) or not handle or len(handle) > 4 * expected + 64:
        raise bad("empty or too long")
    try:
        packed = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, expected + 1)
    except (binascii.Error, ValueError, zlib.error):
        raise bad("not base64/zlib") from None
    if len(raw) != expected or inflater.unconsumed_tail:
        raise bad("wrong size for this model")
    magic, h, w = _HEADER.unpack_from(raw)
    if magic != MAGIC or (h, w) != (mask_size, mask_size):
        raise bad(f"header {magic!r} {h}x{w}, expected {mask_size}x{mask_size}")
    logits = np.frombuffer(raw, dtype="<f2", offset=_HEADER.size).reshape(h, w)
    if not np.isfinite(logits).all():
        raise bad("non-finite values")
    return logits.astype(np.float16)
