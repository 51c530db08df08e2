"""The mask_input handle: exact round trip, and every malformed handle is a 400 invalid_mask_input."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest

from serve_app.codecs.mask_input import decode_mask_input, encode_mask_input
from serve_app.errors import InvalidInput


def test_round_trip_is_exact_fp16():
    logits = (np.random.RandomState(0).randn(32, 32) * 8).astype(np.float16)
    handle = encode_mask_input(logits)
    assert handle.isascii() and "=" not in handle
    out = decode_mask_input(handle, 32)
    assert out.dtype == np.float16 and out.shape == (32, 32)
    np.testing.assert_array_equal(out, logits)


def _handle(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw)).decode()


@pytest.mark.parametrize("handle", [
    "", "***", "abcd", encode_mask_input(np.zeros((16, 16))),  # other model size
    _handle(b"XXXX" + struct.pack("<HH", 32, 32) + bytes(2 * 32 * 32)),  # bad magic
    _handle(b"S3M1" + struct.pack("<HH", 32, 32) + bytes(2 * 32 * 32 + 2)),  # trailing bytes
    _handle(b"S3M1" + struct.pack("<HH", 32, 32) + np.full((32, 32), np.inf, "<f2").tobytes()),  # not finite
    _handle(bytes(10_000_000)),  # zip bomb-ish: decompression is capped
])
def test_malformed_handles(handle):
    with pytest.raises(InvalidInput) as err:
        decode_mask_input(handle, 32)
    assert err.value.code == "invalid_mask_input" and err.value.status_code == 400
