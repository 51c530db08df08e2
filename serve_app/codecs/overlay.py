"""Annotated overlay PNGs (OpenCV): coloured translucent masks, boxes and labels over the image."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

# One instance to draw: (mask bool (H,W) or None, box xyxy in pixels, label text, colour index).
OverlayItem = tuple[np.ndarray | None, list[float], str, int]


def palette(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for label index i (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def render_overlay(rgb: np.ndarray, items: list[OverlayItem], alpha: float = 0.45) -> bytes:
    """Draw instances (see OverlayItem) over uint8 (H,W,3) RGB and return PNG bytes of the same size."""
    canvas = rgb.astype(np.float32)
    for mask, _, _, color_idx in items:
        if mask is not None and mask.any():
            canvas[mask] = canvas[mask] * (1 - alpha) + np.array(palette(color_idx), np.float32) * alpha
    out = np.ascontiguousarray(canvas.clip(0, 255).astype(np.uint8))
    scale = max(0.4, min(out.shape[:2]) / 800)
    for _, box, label, color_idx in items:
        color = palette(color_idx)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, max(1, int(2 * scale)))
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        ty = max(th + base, y0)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw, ty), color, -1)
        cv2.putText(out, label, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
