"""Mask encodings: low-res probabilities -> full-size bool masks -> COCO RLE / polygons. CPU only.

Masks are bool (H,W) at the original (EXIF-corrected) image resolution. COCO RLE follows pycocotools:
column-major (Fortran) run lengths, `counts` as an ASCII str, `size` = [H, W].

The pipelines use `encode_mask` / `encode_masks`: one instance at a time, upsampled only near the instance
and kept as a `MaskWindow` (its tight crop), with the same pixels as `upsample_masks` (see encode_mask).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def upsample_masks(mask_probs: np.ndarray, height: int, width: int, mask_threshold: float) -> np.ndarray:
    """float16/32 (n,h,w) probabilities -> bool (n,H,W): bilinear (half-pixel centres, like
    torch.nn.functional.interpolate(align_corners=False)) then `> mask_threshold`."""
    n = mask_probs.shape[0]
    out = np.empty((n, height, width), dtype=bool)
    for i in range(n):
        up = cv2.resize(mask_probs[i].astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        np.greater(up, mask_threshold, out=out[i])
    return out


def encode_rle(mask: np.ndarray) -> dict:
    """bool (H,W) -> {"size": [H, W], "counts": str} (pycocotools compressed RLE)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]  # bytes from encode (the stubs' TypedDict also allows str, as decode accepts it)
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": text}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of encode_rle: -> bool (H,W)."""
    counts = rle["counts"]
    return mask_utils.decode(
        {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    ).astype(bool)


def mask_to_polygons(mask: np.ndarray, *, min_points: int = 3,
                     offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """bool (H,W) -> outer contours as flat [x0, y0, x1, y1, ...] lists in pixel coordinates (COCO style);
    `offset` (x, y) is added to every point (for a crop of a larger mask)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                   offset=offset)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= min_points]


def mask_box_xyxy(mask: np.ndarray) -> list[float]:
    """Tight box of a bool (H,W) mask in pixels [x0, y0, x1, y1] (x1/y1 exclusive); zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))  # 30x faster than nonzero
    if len(rows) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# ---------------------------------------------------------------------------------------------- per instance
# Margins of _limit, relative to the largest |value| and to the threshold: ~100x the float32 rounding.
_REL_MARGIN_VALUES, _REL_MARGIN_THRESHOLD = 1e-5, 1e-4
_MIN_SPAN = 8  # cv2.resize treats 1-pixel-wide images differently: windows and row bands are never that thin


def _transposed(mask: np.ndarray) -> np.ndarray:
    """bool (h,w) -> bool (w,h), C-contiguous: cv2's transpose of the bytes, ~20x faster than numpy's copy of
    a transposed bool view (~0.9 ms for a 1024x768 crop)."""
    if mask.size == 0 or mask.ndim != 2:
        return np.ascontiguousarray(mask.T)
    return cv2.transpose(np.ascontiguousarray(mask).view(np.uint8)).view(bool)


@dataclass(frozen=True)
class MaskWindow:
    """One instance's bool mask at the image size (height, width), kept as its tight crop.

    crop: bool (y1-y0, x1-x0), the mask inside its tight box [x0, y0, x1, y1) in pixels (x1/y1 exclusive, as
    mask_box_xyxy); every pixel outside it is False. An empty mask has a (0, 0) crop at x0 = y0 = 0.
    """

    crop: np.ndarray
    x0: int
    y0: int
    height: int
    width: int

    @property
    def area(self) -> int:
        """Number of True pixels."""
        return int(np.count_nonzero(self.crop))

    @property
    def box_xyxy(self) -> list[float]:
        """Tight box [x0, y0, x1, y1] in pixels (x1/y1 exclusive); zeros when empty (= mask_box_xyxy(full()))."""
        if self.crop.size == 0:
            return [0.0, 0.0, 0.0, 0.0]
        h, w = self.crop.shape
        return [float(self.x0), float(self.y0), float(self.x0 + w), float(self.y0 + h)]

    def full(self) -> np.ndarray:
        """bool (height, width): the whole mask (allocates it; prefer crop/x0/y0 where possible)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        h, w = self.crop.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.crop
        return out

    def rle(self) -> dict:
        """{"size": [H, W], "counts": str}: the same COCO RLE as encode_rle(full()), built from the crop."""
        n = self.height * self.width
        h, w = self.crop.shape
        # Column-major runs of ones: each crop column padded with a False above and below, so the changes
        # alternate start, end; positions in the whole image's column-major order.
        cols = np.zeros((w, h + 2), dtype=bool)
        cols[:, 1:-1] = _transposed(self.crop)
        flat = cols.reshape(-1)
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        col, row = np.divmod(change, h + 2)
        edges = (self.x0 + col) * self.height + (self.y0 - 1 + row)  # start, end, start, end, ...
        # An end equal to the next start: a run going on at the top of the next column (full-height crops).
        distinct = np.diff(edges) != 0
        keep = np.ones(len(edges), dtype=bool)
        keep[1:] &= distinct
        keep[:-1] &= distinct
        edges = edges[keep]
        counts = np.diff(np.r_[0, edges, n])  # zeros, ones, zeros, ... (the first may be 0)
        if len(counts) > 1 and counts[-1] == 0:
            counts = counts[:-1]
        rle = mask_utils.frPyObjects({"size": [self.height, self.width], "counts": counts.astype(np.uint32)},
                                     self.height, self.width)
        text = rle["counts"]
        return {"size": [self.height, self.width], "counts": text.decode("ascii") if isinstance(text, bytes) else text}

    def polygons(self) -> list[list[float]]:
        """= mask_to_polygons(full()), traced on the crop with a 1-pixel False border."""
        if self.crop.size == 0:
            return []
        return mask_to_polygons(np.pad(self.crop, 1), offset=(self.x0 - 1, self.y0 - 1))

    @classmethod
    def tight(cls, window: np.ndarray, x0: int, y0: int, height: int, width: int) -> MaskWindow:
        """bool `window` placed at (x0, y0) of a (height, width) mask that is False elsewhere -> MaskWindow
        (cropped to its tight box). MaskWindow.tight(mask, 0, 0, *mask.shape) wraps a full bool (H,W) mask."""
        rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
        if len(rows) == 0:
            return cls(np.zeros((0, 0), dtype=bool), 0, 0, height, width)
        crop = np.ascontiguousarray(window[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        return cls(crop, x0 + int(cols[0]), y0 + int(rows[0]), height, width)


def _span(lo: int, hi: int, src: int, dst: int) -> tuple[int, int, int, int]:
    """Along one axis: source pixels [lo, hi) -> (a, b, sa, sb): the output pixels [a, b) whose bilinear
    sources can include [lo, hi), and the source pixels [sa, sb) those outputs read; half a source pixel to
    spare each way. Output d reads sources floor(f), floor(f) + 1 of f = (d + 0.5) / s - 0.5, s = dst / src
    (half-pixel centres), so only d with lo - 1.5 <= f < hi + 0.5 may read [lo, hi)."""
    s = dst / src
    a = max(0, math.floor((lo - 1) * s - 0.5))
    b = min(dst, math.ceil((hi + 1) * s - 0.5) + 1)
    if b - a < _MIN_SPAN:
        a = max(0, min(a, dst - _MIN_SPAN))
        b = min(dst, a + _MIN_SPAN)
    sa = max(0, math.floor((a + 0.5) / s - 0.5) - 1)
    sb = min(src, math.floor((b - 0.5) / s - 0.5) + 3)
    if sb - sa < _MIN_SPAN:
        sa = max(0, min(sa, src - _MIN_SPAN))
        sb = min(src, sa + _MIN_SPAN)
    return a, b, sa, sb


def _prefix(needed: int, src: int, dst: int) -> tuple[int, int]:
    """The shortest source prefix [0, n), n >= needed, that maps to whole output pixels at the same scale:
    (n, n * dst / src). Resizing it gives the full resize's values except near its end (output pixel d's
    weights depend on d and the scale only); `needed` includes a spare source pixel for that."""
    unit = src // math.gcd(src, dst)
    n = min(src, -(-needed // unit) * unit)
    return n, n * dst // src


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def _key16(bits: np.ndarray) -> np.ndarray:
    """float16 bit patterns (int16) -> int16 keys in the order of the values (-0 one below +0)."""
    return bits ^ ((bits >> 15) & 0x7FFF)


def _limit(mask_threshold: float, largest: float) -> float:
    """A bilinear output is a convex combination of its (<= 4) sources, exact up to a few float32 ulps of the
    largest |value| and of the threshold: it can only exceed the threshold if a source exceeds this limit."""
    return mask_threshold - _REL_MARGIN_THRESHOLD * abs(mask_threshold) - _REL_MARGIN_VALUES * largest


def _candidates(probs: np.ndarray, mask_threshold: float) -> np.ndarray | None:
    """bool (h,w): the low-res values above _limit; None if a value is not finite."""
    if probs.dtype != np.float16:
        values = probs.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            return None
        return values > _limit(mask_threshold, float(np.abs(values).max()))
    # float16: compared through its bits, ~10x faster than converting to float32 first
    bits = probs.view(np.int16)
    top = int((bits & 0x7FFF).max())  # the largest |value|, as bits
    if top >= 0x7C00:  # inf or nan
        return None
    limit = _limit(mask_threshold, float(np.int16(top).view(np.float16)))
    below = np.float16(limit)  # v > limit <=> v > the largest float16 <= limit
    if float(below) > limit:
        below = np.nextafter(below, np.float16(-np.inf))
    return _key16(bits) > _key16(np.asarray(below + np.float16(0)).view(np.int16))  # (+ 0: -0 -> +0)


def encode_mask(probs: np.ndarray, height: int, width: int, mask_threshold: float) -> MaskWindow:
    """float16/32 (h,w) low-res probabilities (or logits) of ONE instance -> its MaskWindow at (height, width),
    pixel for pixel upsample_masks(probs[None], height, width, mask_threshold)[0].

    Only a window around the instance is upsampled: the output pixels whose sources include a low-res value
    above _limit (no other pixel can exceed the threshold). Bit-identity with the
    full resize: cv2.resize(INTER_LINEAR) of float32 equals a horizontal-only resize followed by a
    vertical-only one (two separable passes with float32 in between), and each pass computes every row
    (horizontal) or column (vertical) alone, from global coordinates. So the horizontal pass runs on the
    needed source rows at full width and the vertical pass on the window's columns at full height: neither
    pass is cropped along its own axis except to a prefix of the same scale (see _prefix). Non-finite
    inputs, downscaling and 1-pixel sides use the full resize.
    tests/unit/test_mask_encoding.py checks the identity over sizes, thresholds and shapes.
    """
    h, w = probs.shape
    candidates = None if min(h, w) < 2 or height < h or width < w else _candidates(probs, mask_threshold)
    if candidates is None:
        full = upsample_masks(probs[None], height, width, mask_threshold)[0]
        return MaskWindow.tight(full, 0, 0, height, width)
    rows = np.flatnonzero(candidates.any(axis=1))
    if len(rows) == 0:
        return MaskWindow(np.zeros((0, 0), dtype=bool), 0, 0, height, width)  # nothing can exceed it
    cols = np.flatnonzero(candidates.any(axis=0))
    y0, y1, sy0, sy1 = _span(int(rows[0]), int(rows[-1]) + 1, h, height)
    x0, x1, _, sx1 = _span(int(cols[0]), int(cols[-1]) + 1, w, width)
    src_w, out_w = _prefix(sx1 + 1, w, width)
    src_h, out_h = _prefix(sy1 + 1, h, height)
    # horizontal pass: the source rows the window reads, full width (up to a prefix); then its columns
    rows_up = _resize(probs[sy0:sy1, :src_w].astype(np.float32), out_w, sy1 - sy0)
    strip = np.zeros((src_h, x1 - x0), dtype=np.float32)  # other rows only feed pixels outside the window
    strip[sy0:sy1] = rows_up[:, x0:x1]
    # vertical pass: the window's columns, full height (up to a prefix); then its rows
    window = _resize(strip, x1 - x0, out_h)[y0:y1] > mask_threshold
    return MaskWindow.tight(window, x0, y0, height, width)


def encode_masks(mask_probs: np.ndarray, height: int, width: int, mask_threshold: float) -> Iterator[MaskWindow]:
    """float16/32 (n,h,w) -> one MaskWindow per instance, lazily (never an (n,H,W) array); see encode_mask."""
    for probs in mask_probs:
        yield encode_mask(probs, height, width, mask_threshold)
