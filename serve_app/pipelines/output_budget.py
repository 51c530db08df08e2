"""The output budget of one request: how many full-size masks its response may carry, and its overlay's size.

Masks are counted BEFORE any encoding, as masks x H x W of the ORIGINAL image, against
`limits.max_output_pixels`: the worst case of a mask (upsampling, RLE or polygons of a mask covering the
whole image) costs in proportion to H x W, whatever the mask turns out to be. Over the budget:

- concept (`/v1/pcs/image`, `pcs_image` jobs): truncated to the highest-scoring instances that fit, across
  prompts (the model is asked for no more than fit per prompt); the response says `truncated`,
  `truncated_reason` "max_output_pixels" and `omitted_masks`. A mask returned as polygons counts
  POLYGON_MASK_COST times: its worst case (a noisy mask) is ~1 M coordinates as Python floats, ~30 MB at 40 MP,
  where its RLE is a ~1.8 MB string;
- automatic masks: truncated likewise (they come sorted by score);
- clicks: the objects were asked for one by one, so none is dropped: multimask candidates are left out
  first (truncated, as above); if even one mask per object does not fit, 413 `output_too_large`.

Overlays are drawn one instance at a time (`OverlayCanvas`: each mask blended as it is encoded, then
dropped) at most `limits.max_overlay_pixels` large: a larger image gets a proportionally downscaled overlay
(its masks drawn from the low-res probabilities at that size), never a refusal. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from serve_app.codecs.masks import MaskWindow
from serve_app.codecs.overlay import OverlayItem, palette, render_overlay

REASON_OUTPUT_PIXELS = "max_output_pixels"
POLYGON_MASK_COST = 4  # mask_format=polygon: each mask counts this many times against limits.max_output_pixels
_ALPHA = 0.45  # = codecs.overlay.render_overlay's default blend (tests/unit/test_mask_encoding.py checks it)


@dataclass(frozen=True)
class Truncation:
    """Masks a response leaves out to stay within the budget."""

    omitted: int
    reason: str = REASON_OUTPUT_PIXELS

    def fields(self) -> dict:
        """The response fields that say so (ConceptImageResponse, ClickImageResponse, AutoImageResponse)."""
        return {"truncated": True, "truncated_reason": self.reason, "omitted_masks": self.omitted}


def truncation_fields(truncation: Truncation | None) -> dict:
    return truncation.fields() if truncation is not None else {}


def masks_that_fit(height: int, width: int, max_output_pixels: int, cost: int = 1) -> int:
    """How many full-size (height x width) masks fit in the budget (0 if not even one), each counting `cost`
    times (POLYGON_MASK_COST for polygons)."""
    return max_output_pixels // max(1, height * width * cost)


def mask_cost(mask_format: str) -> int:
    """How many times one mask of a concept answer counts against the budget."""
    return POLYGON_MASK_COST if mask_format == "polygon" else 1


def top_scores(groups: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    """Per group (e.g. a prompt's instance scores), the indices of its instances among the k highest scores
    over all groups, in their original order (ties: the earlier group, then the earlier instance)."""
    sizes = [len(g) for g in groups]
    if sum(sizes) <= k:
        return [np.arange(n) for n in sizes]
    flat = np.concatenate([np.asarray(g, dtype=np.float64) for g in groups])
    keep = np.zeros(len(flat), dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:max(0, k)]] = True
    bounds = np.cumsum([0, *sizes])
    return [np.flatnonzero(keep[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def overlay_size(height: int, width: int, max_pixels: int | None) -> tuple[int, int]:
    """(h, w) of the overlay of a (height, width) image: the image's own size up to `max_pixels`, else
    scaled down (aspect kept, h*w <= max_pixels, each side >= 1)."""
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    s = math.sqrt(max_pixels / (height * width))
    h, w = max(1, int(height * s)), max(1, int(width * s))
    while h * w > max_pixels:  # only when a side was raised to 1
        if h >= w:
            h -= 1
        else:
            w -= 1
    return h, w


class OverlayCanvas:
    """An annotated overlay drawn one instance at a time, so no mask outlives its own encoding.

    `rgb`: uint8 (H,W,3), the original image. The overlay is (height, width) = overlay_size(H, W,
    max_pixels): `scaled` when smaller, then `add` takes masks at the overlay's size (e.g.
    encode_mask(probs, canvas.height, canvas.width, threshold)) and boxes in ORIGINAL pixels. Unscaled, the
    PNG is pixel for pixel codecs.overlay.render_overlay of the same items. Memory: a float32 copy of the
    overlay (12 bytes per overlay pixel) from the first mask on.
    """

    def __init__(self, rgb: np.ndarray, max_pixels: int | None = None):
        h, w = rgb.shape[:2]
        self.height, self.width = overlay_size(h, w, max_pixels)
        self.scaled = (self.height, self.width) != (h, w)
        self._sx, self._sy = self.width / w, self.height / h
        self._rgb = (cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA) if self.scaled
                     else rgb)
        self._canvas: np.ndarray | None = None
        self._items: list[OverlayItem] = []

    def add(self, mask: MaskWindow | None, box: list[float], label: str, color_idx: int) -> None:
        """Blend `mask` (at the overlay's size, or None) now; its box and label are drawn by `png`."""
        if self.scaled:
            box = [box[0] * self._sx, box[1] * self._sy, box[2] * self._sx, box[3] * self._sy]
        self._items.append((None, box, label, color_idx))
        if mask is None or mask.crop.size == 0:
            return
        if self._canvas is None:
            self._canvas = self._rgb.astype(np.float32)
        h, w = mask.crop.shape
        region = self._canvas[mask.y0:mask.y0 + h, mask.x0:mask.x0 + w]
        region[mask.crop] = region[mask.crop] * (1 - _ALPHA) + np.array(palette(color_idx), np.float32) * _ALPHA

    def png(self) -> bytes:
        """The overlay PNG: blended masks, then every box and label (render_overlay draws those)."""
        if self._canvas is None:
            out = self._rgb
        else:
            np.clip(self._canvas, 0, 255, out=self._canvas)
            out = self._canvas.astype(np.uint8)
            self._canvas = None
        return render_overlay(out, self._items)
