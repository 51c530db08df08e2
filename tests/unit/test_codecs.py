"""Image decoding limits, EXIF, resize parity with the SAM 3 processor, RLE/polygon round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.codecs.image_decode import check_content_type, decode_image, resize_square
from serve_app.codecs.masks import decode_rle, encode_rle, mask_box_xyxy, mask_to_polygons, upsample_masks
from serve_app.codecs.overlay import render_overlay
from serve_app.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from tests.helpers import encode, rgb_image

LIMITS = dict(max_bytes=5_000_000, max_pixels=4_000_000)


def test_decode_png_and_jpeg_give_rgb_and_sha256():
    img = rgb_image(64, 48)
    out = decode_image(encode(img, "PNG"), **LIMITS)
    assert out.rgb.shape == (48, 64, 3) and out.rgb.dtype == np.uint8
    assert np.array_equal(out.rgb, img)
    assert len(out.sha256) == 64 and out.format == "PNG"
    jpg = decode_image(encode(img, "JPEG"), **LIMITS)
    assert jpg.rgb.shape == (48, 64, 3) and jpg.format == "JPEG"


def test_exif_orientation_is_applied():
    img = rgb_image(64, 48)
    out = decode_image(encode(img, "JPEG", exif_orientation=6), **LIMITS)  # rotate 90 CW on display
    assert out.rgb.shape == (64, 48, 3)


@pytest.mark.parametrize(
    "data, error, code",
    [
        (b"", InvalidImage, "empty_image"),
        (b"this is not an image at all", InvalidImage, "invalid_image"),
    ],
)
def test_decode_rejects_garbage(data, error, code):
    with pytest.raises(error) as exc:
        decode_image(data, **LIMITS)
    assert exc.value.code == code


def test_truncated_jpeg_is_invalid():
    data = encode(rgb_image(200, 150), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_byte_and_pixel_limits():
    data = encode(rgb_image(200, 150))
    with pytest.raises(PayloadTooLarge) as exc:
        decode_image(data, max_bytes=100, max_pixels=10**7)
    assert exc.value.code == "image_too_large"
    with pytest.raises(PayloadTooLarge) as exc:
        decode_image(data, max_bytes=10**7, max_pixels=200 * 150 - 1)
    assert exc.value.code == "image_too_many_pixels"


def test_decompression_bomb_is_rejected_before_decoding():
    # A 20000x20000 PNG of zeros compresses to a few hundred KB but would decode to 1.2 GB.
    import struct
    import zlib

    w = h = 20000
    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * w for _ in range(64)))  # only 64 rows of data
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    with pytest.raises(PayloadTooLarge) as exc:
        decode_image(png, max_bytes=10**7, max_pixels=40_000_000)
    assert exc.value.code == "image_too_many_pixels"


def test_unsupported_formats_and_content_types():
    img = rgb_image(16, 16)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "ICO")
    with pytest.raises(UnsupportedMediaType):
        decode_image(buf.getvalue(), **LIMITS)
    with pytest.raises(UnsupportedMediaType):
        check_content_type("text/plain")
    check_content_type("image/png")
    check_content_type(None)


def test_resize_square_matches_sam3_processor(tiny_model_dir):
    from PIL import Image
    from transformers import Sam3ImageProcessor

    img = rgb_image(130, 90)
    ours = resize_square(img, 112).astype(np.float32) / 255 * 2 - 1
    ref = Sam3ImageProcessor.from_pretrained(tiny_model_dir)(Image.fromarray(img), return_tensors="pt")
    ref = ref.pixel_values[0].permute(1, 2, 0).numpy()
    assert ours.shape == ref.shape == (112, 112, 3)
    assert np.abs(ours - ref).max() <= 2.5 / 255 * 2  # within ~2 grey levels of torchvision's resize


def test_rle_round_trip_and_format():
    rng = np.random.RandomState(1)
    mask = rng.rand(37, 53) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle), mask)
    from pycocotools import mask as mask_utils

    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(mask.sum())


def test_polygons_and_box_of_a_rectangle():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:30] = True
    polys = mask_to_polygons(mask)
    assert len(polys) == 1
    xs, ys = polys[0][0::2], polys[0][1::2]
    assert (min(xs), min(ys), max(xs), max(ys)) == (5, 10, 29, 19)
    assert mask_box_xyxy(mask) == [5.0, 10.0, 30.0, 20.0]
    assert mask_box_xyxy(np.zeros((4, 4), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_upsample_matches_torch_bilinear():
    rng = np.random.RandomState(2)
    probs = rng.rand(3, 32, 32).astype(np.float16)
    ours = upsample_masks(probs, 90, 130, 0.5)
    ref = torch.nn.functional.interpolate(torch.from_numpy(probs.astype(np.float32))[None], size=(90, 130),
                                          mode="bilinear", align_corners=False)[0].numpy() > 0.5
    assert ours.shape == (3, 90, 130) and ours.dtype == bool
    assert (ours != ref).mean() < 0.002  # only float rounding exactly at the threshold may differ


def test_overlay_is_a_png_of_the_image_size():
    import cv2

    img = rgb_image(80, 60)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 10:40] = True
    png = render_overlay(img, [(mask, [10, 10, 40, 30], "car 0.90", 0)])
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (60, 80, 3)
    assert not np.array_equal(decoded[20, 20][::-1], img[20, 20])  # masked pixel is tinted
    assert np.array_equal(decoded[50, 70][::-1], img[50, 70])  # far pixel untouched
