"""Annotated overlay PNGs (OpenCV): coloured translucent masks, boxes and labels over the image."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from serve_app.codecs.masks import MaskWindow

# One instance to draw: (mask: a MaskWindow, a bool (H,W) array or None; box xyxy in pixels; label text;
# colour index).
OverlayItem = tuple[MaskWindow | np.ndarray | None, list[float], str, int]


def palette(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for label index i (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def render_overlay(rgb: np.ndarray, items: list[OverlayItem], alpha: float = 0.45) -> bytes:
    """Draw instances (see OverlayItem) over uint8 (H,W,3) RGB and return PNG bytes of the same size.
    Masks are blended in float32 inside the union of their boxes only (the rest is left as it is)."""
    masks = [(m if isinstance(m, MaskWindow) else MaskWindow.tight(m, 0, 0, *m.shape), color_idx)
             for m, _, _, color_idx in items if m is not None]
    masks = [(m, color_idx) for m, color_idx in masks if m.crop.size]
    out = np.array(rgb, dtype=np.uint8, order="C")
    if masks:
        boxes = np.array([m.box_xyxy for m, _ in masks], dtype=np.int64)  # x0, y0, x1, y1 (exclusive)
        (ux0, uy0), (ux1, uy1) = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
        canvas = out[uy0:uy1, ux0:ux1].astype(np.float32)
        for (m, color_idx), (x0, y0, x1, y1) in zip(masks, boxes):
            region = canvas[y0 - uy0:y1 - uy0, x0 - ux0:x1 - ux0]
            region[m.crop] = region[m.crop] * (1 - alpha) + np.array(palette(color_idx), np.float32) * alpha
        out[uy0:uy1, ux0:ux1] = canvas.clip(0, 255).astype(np.uint8)
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
