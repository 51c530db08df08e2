"""Per-instance mask encoding (serve_app.codecs.masks.encode_mask / encode_masks / MaskWindow): the same pixels,
RLE, area, box and polygons as the full-size upsample_masks + encode_rle path, one instance at a time."""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest

from serve_app.codecs import masks as masks_module
from serve_app.codecs.image_decode import DecodedImage
from serve_app.codecs.masks import (
    MaskWindow,
    decode_rle,
    encode_mask,
    encode_masks,
    encode_rle,
    mask_box_xyxy,
    mask_to_polygons,
    upsample_masks,
)
from serve_app.codecs.overlay import render_overlay
from serve_app.model.types import AutoResponse, ClickResponse, ConceptInstances, ConceptResponse, ObjectMasks
from serve_app.model.video_types import VideoFrameResult
from serve_app.pipelines.click import encode_auto, encode_objects
from serve_app.pipelines.concept import encode_response
from serve_app.pipelines.video import encode_frame
from serve_app.schemas import ClickOptions, ConceptOptions

# ------------------------------------------------------------------------------------------- low-res shapes
# Each returns float32 (h,w) "logits": > 0 inside the shape; probabilities are their sigmoid.


def _ellipse(rng, h, w, frac, cy=None, cx=None):
    ry, rx = np.sqrt(frac * h * w / np.pi) * rng.uniform(0.6, 1.5, 2)
    cy = rng.uniform(0, h) if cy is None else cy
    cx = rng.uniform(0, w) if cx is None else cx
    yy, xx = np.mgrid[0:h, 0:w]
    return (1 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)) * 8


def _blob(rng, h, w):
    return _ellipse(rng, h, w, rng.uniform(0.005, 0.1)) + rng.standard_normal((h, w)) * 0.5


def _blobs(rng, h, w):
    return np.max([_blob(rng, h, w) for _ in range(3)], axis=0)


def _border(rng, h, w):  # centred on an edge or a corner: touches the image border
    cy, cx = [(0, None), (h - 1, None), (None, 0), (None, w - 1), (0, 0), (h - 1, w - 1)][rng.integers(6)]
    return _ellipse(rng, h, w, rng.uniform(0.01, 0.1), cy, cx)


def _empty(rng, h, w):
    return -3 - rng.random((h, w)) * 5


def _full(rng, h, w):
    return 3 + rng.random((h, w)) * 5


def _spike(rng, h, w):  # one low-res pixel above the threshold
    z = _empty(rng, h, w)
    z[rng.integers(h), rng.integers(w)] = 4
    return z


def _line(rng, h, w):  # one low-res pixel thick, horizontal / vertical / diagonal
    z = _empty(rng, h, w)
    kind = rng.integers(3)
    if kind == 0:
        z[rng.integers(h), :] = 2
    elif kind == 1:
        z[:, rng.integers(w)] = 2
    else:
        n = min(h, w)
        z[np.arange(n), np.arange(n)] = 2
    return z


def _columns(rng, h, w):  # whole columns set: runs go on from one column into the next
    z = _empty(rng, h, w)
    a = int(rng.integers(0, w - 1))
    z[:, a:a + int(rng.integers(1, max(2, w // 4)))] = 4
    return z


def _noise(rng, h, w):  # uniform noise: above the threshold all over the image
    return rng.standard_normal((h, w)) * 3


def _plateau(rng, h, w):  # a blob with a rim of values exactly at the threshold: the margin must cover it
    z = _blob(rng, h, w)
    return np.where((z > -1) & (z <= 0), 0.0, z)


SHAPES = {f.__name__[1:]: f for f in (_blob, _blobs, _border, _empty, _full, _spike, _line, _columns, _noise,
                                         _plateau)}
SIZES = [(768, 1024), (3000, 4000), (481, 997), (1080, 1920), (289, 5000), (4000, 301), (300, 300), (90, 130)]
LOWRES = [(288, 288), (288, 288), (288, 288), (32, 32), (37, 53)]


def _probs(z: np.ndarray, threshold: float, dtype) -> np.ndarray:
    """Logits z -> values whose `> threshold` matches z > 0: z itself for threshold 0, else a sigmoid shifted
    so that z = 0 maps to the threshold exactly."""
    if threshold == 0.0:
        return z.astype(dtype)
    return (1 / (1 + np.exp(-z + np.log(1 / threshold - 1)))).astype(dtype)


def _cases(seed: int = 20240501, n: int = 70) -> list[tuple]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        size = SIZES[i % len(SIZES)] if i < 2 * len(SIZES) else SIZES[rng.integers(len(SIZES))]
        shape = list(SHAPES)[i % len(SHAPES)]
        lowres = LOWRES[rng.integers(len(LOWRES))]
        threshold = [0.0, 0.5, 0.3][rng.integers(3)]
        dtype = np.float16 if rng.random() < 0.8 else np.float32
        cases.append((i, size, lowres, shape, threshold, dtype))
    return cases


def _check(probs: np.ndarray, height: int, width: int, threshold: float) -> MaskWindow:
    """encode_mask(probs) against the full-size path; returns the MaskWindow."""
    ref = upsample_masks(probs[None], height, width, threshold)[0]
    m = encode_mask(probs, height, width, threshold)
    np.testing.assert_array_equal(m.full(), ref)
    rle = m.rle()
    assert rle == encode_rle(ref)  # the same compressed string (RLE is canonical)
    assert m.area == int(ref.sum())
    assert m.box_xyxy == mask_box_xyxy(ref)
    assert m.polygons() == mask_to_polygons(ref)
    if m.area:
        np.testing.assert_array_equal(decode_rle(rle)[m.y0:m.y0 + m.crop.shape[0], m.x0:m.x0 + m.crop.shape[1]],
                                      m.crop)
    return m


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c[0]}-{c[3]}-{c[1][0]}x{c[1][1]}-t{c[4]}")
def test_bit_identical_to_full_size_path(case):
    i, (height, width), (h, w), shape, threshold, dtype = case
    rng = np.random.default_rng(i)
    _check(_probs(SHAPES[shape](rng, h, w), threshold, dtype), height, width, threshold)


@pytest.mark.parametrize("height, width", [(768, 1024), (3000, 4000), (481, 997)])
def test_real_model_sizes_many_blobs(height, width):
    """288x288 float16 probabilities and logits, the real model's, at its usual thresholds."""
    rng = np.random.default_rng(height)
    for _ in range(6):
        z = _blobs(rng, 288, 288)
        _check(_probs(z, 0.5, np.float16), height, width, 0.5)
        _check(z.astype(np.float16), height, width, 0.0)


@pytest.mark.parametrize("probs, height, width", [
    (np.full((32, 32), np.nan, np.float16), 90, 130),  # not finite: the full-size path
    (np.where(np.eye(32, dtype=bool), np.inf, -1.0).astype(np.float16), 90, 130),
    (np.linspace(-1, 1, 288 * 288).reshape(288, 288).astype(np.float16), 100, 700),  # downscaling rows
    (np.linspace(-1, 1, 288).reshape(1, 288).astype(np.float16), 50, 600),  # a 1-pixel side
    (np.float16([[1.0, -1.0], [-1.0, 1.0]]), 3, 3),
])
def test_fallbacks_match(probs, height, width):
    _check(probs, height, width, 0.0)


def test_values_at_the_threshold_and_one_ulp_around():
    rng = np.random.default_rng(7)
    for t in (0.5, 0.3, 0.0):
        t16 = np.float16(t)
        near = np.array([np.nextafter(t16, np.float16(-1)), t16, np.nextafter(t16, np.float16(1))])
        probs = rng.choice(near, size=(288, 288)).astype(np.float16)
        probs[:100] = np.float16(t - 0.25)  # only the lower part is near the threshold
        _check(probs, 768, 1024, t)
        _check(probs.astype(np.float32), 3000, 4000, t)


# ------------------------------------------------------------------------------------------- the API


def test_one_instance_at_a_time():
    """encode_masks is a generator over instances; encode_mask takes ONE (h,w) instance, never (n,h,w)."""
    assert inspect.isgeneratorfunction(encode_masks)
    good = _probs(_blob(np.random.default_rng(1), 288, 288), 0.5, np.float16)

    def instances():
        yield good
        raise AssertionError("the second instance was read before the first was consumed")

    first = next(encode_masks(instances(), 768, 1024, 0.5))  # type: ignore[arg-type]
    assert isinstance(first, MaskWindow) and first.crop.ndim == 2
    with pytest.raises(ValueError):
        encode_mask(np.stack([good, good]), 768, 1024, 0.5)


def test_only_the_window_is_upsampled(monkeypatch):
    """A small instance in a large image: every resize is far smaller than the image, and the MaskWindow keeps
    only the crop (no (H,W) array, let alone (n,H,W))."""
    sizes, real_resize = [], cv2.resize

    def resize(img, dsize, interpolation):
        sizes.append(dsize)
        return real_resize(img, dsize, interpolation=interpolation)

    monkeypatch.setattr(masks_module.cv2, "resize", resize)
    rng = np.random.default_rng(3)
    probs = _probs(_ellipse(rng, 288, 288, 0.01, 200, 150), 0.5, np.float16)
    monkeypatch.setattr(masks_module, "upsample_masks", None)  # the full-size path is not taken
    (m,) = encode_masks(probs[None], 3000, 4000, 0.5)
    assert sizes and all(w * h < 3000 * 4000 / 4 for w, h in sizes)
    assert 0 < m.crop.size < 3000 * 4000 / 20 and m.area > 0


def test_mask_window_wraps_a_full_mask():
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:30] = True
    m = MaskWindow.tight(mask, 0, 0, *mask.shape)
    assert (m.x0, m.y0, m.crop.shape) == (5, 10, (10, 25))
    assert m.box_xyxy == mask_box_xyxy(mask) == [5.0, 10.0, 30.0, 20.0]
    assert m.rle() == encode_rle(mask) and m.area == 250
    np.testing.assert_array_equal(m.full(), mask)
    empty = MaskWindow.tight(np.zeros((4, 4), bool), 0, 0, 4, 4)
    assert empty.area == 0 and empty.box_xyxy == [0.0] * 4 and empty.polygons() == []
    assert empty.rle() == encode_rle(np.zeros((4, 4), bool))


# ------------------------------------------------------------------------------------------- the pipelines


def _instances(rng, n: int, lowres: int = 288) -> np.ndarray:
    return np.stack([_probs(_blob(rng, lowres, lowres), 0.5, np.float16) for _ in range(n)])


@pytest.mark.parametrize("mask_format", ["rle", "polygon"])
def test_concept_encode_response_matches_full_size(mask_format):
    rng = np.random.default_rng(11)
    height, width = 481, 997
    image = DecodedImage(rgb=rng.integers(0, 256, (height, width, 3), dtype=np.uint8), sha256="0" * 64, format="PNG")
    probs = _instances(rng, 5)
    boxes = np.tile(np.float32([[10, 20, 200, 300]]), (5, 1))
    out = ConceptResponse([ConceptInstances(np.linspace(0.9, 0.5, 5).astype(np.float32), boxes, probs)])
    opts = ConceptOptions(prompts=[{"text": "thing"}], mask_format=mask_format, overlay=True, mask_threshold=0.5)
    results, overlay = encode_response(image, opts, out)
    full = upsample_masks(probs, height, width, 0.5)
    for k, inst in enumerate(results[0].instances):
        assert inst.area == int(full[k].sum())
        if mask_format == "rle":
            assert inst.mask is not None and inst.mask.model_dump() == encode_rle(full[k])
        else:
            assert inst.polygons == mask_to_polygons(full[k])
    items = [(full[k], inst.box, f"thing {inst.score:.2f}", 0) for k, inst in enumerate(results[0].instances)]
    assert overlay == render_overlay(image.rgb, items)  # windowed blending == full-mask blending


def test_click_and_video_encoders_match_full_size():
    rng = np.random.default_rng(12)
    height, width = 768, 1024
    logits = np.stack([_blob(rng, 288, 288).astype(np.float16) for _ in range(3)])
    full = upsample_masks(logits, height, width, 0.0)
    scores = np.float32([0.2, 0.9, 0.5])
    (obj,) = encode_objects(ClickResponse([ObjectMasks(logits, scores, 0.7)], (height, width), True),
                            ClickOptions(objects=[{"points": [[1, 1]]}], multimask_output=True))
    assert obj.candidates is not None
    for cand, k in zip(obj.candidates, [1, 2, 0]):
        assert cand.mask.model_dump() == encode_rle(full[k]) and cand.area == int(full[k].sum())
        assert cand.box == mask_box_xyxy(full[k])
    auto = encode_auto(AutoResponse(logits, scores, scores, np.zeros((3, 4), np.float32), np.zeros((3, 2), np.float32),
                                    (height, width), cache_hit=True), "area")
    assert [m.area for m in auto] == sorted((int(f.sum()) for f in full), reverse=True)
    assert all(m.mask.model_dump() == encode_rle(full[k]) for m, k in
               zip(auto, np.argsort([-int(f.sum()) for f in full], kind="stable")))
    logits[2] = -5  # an empty object is left out
    frame = encode_frame(VideoFrameResult(4, np.int64([3, 5, 8]), scores, np.zeros((3, 4), np.float32), logits),
                         height, width)
    assert [o.id for o in frame.objects] == [3, 5]
    for o, k in zip(frame.objects, [0, 1]):
        assert o.mask.model_dump() == encode_rle(full[k]) and o.area == int(full[k].sum())
