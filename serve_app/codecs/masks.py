"""Mask encodings: low-res probabilities -> full-size bool masks -> COCO RLE / polygons. CPU only.

Masks are bool (H,W) at the original (EXIF-corrected) image resolution. COCO RLE follows pycocotools:
column-major (Fortran) run lengths, `counts` as an ASCII str, `size` = [H, W].
"""

from __future__ import annotations

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


def mask_to_polygons(mask: np.ndarray, *, min_points: int = 3) -> list[list[float]]:
    """bool (H,W) -> outer contours as flat [x0, y0, x1, y1, ...] lists in pixel coordinates (COCO style)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= min_points]


def mask_box_xyxy(mask: np.ndarray) -> list[float]:
    """Tight box of a bool (H,W) mask in pixels [x0, y0, x1, y1] (x1/y1 exclusive); zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))  # 30x faster than nonzero
    if len(rows) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
