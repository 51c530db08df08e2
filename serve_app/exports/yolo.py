"""YOLO segmentation labels (Ultralytics format): `labels/{frame:06d}.txt`, `classes.txt`, `data.yaml`.

One label file per frame in scope (empty when nothing is on it). One line per polygon:
`class_idx x1 y1 x2 y2 ...`, coordinates normalised by the frame width / height, 6 decimals.

Polygons: cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE) on the unit's mask, then cv2.approxPolyDP with
epsilon 0.75 px (drops the staircase points, keeps small shapes). Every external connected component
(8-connected, any size >= 1 px) is its own line, with the same class; holes are not represented (YOLO has
none). A component whose polygon has fewer than 3 points even unsimplified (a single pixel, a 2-pixel
fragment) is skipped.

Coordinate frame: the image spans [0, 1] corner to corner (pixel (x, y) covers [x, x+1) x [y, y+1) before
normalising), and vertices are the centres of the traced boundary pixels: ((x + 0.5) / W, (y + 0.5) / H).
Denormalising and truncating to int (as Ultralytics' polygon2mask does before cv2.fillPoly) gives back the
traced pixel indices, so the round trip reproduces the mask up to the simplification (tested: IoU >= 0.9
for shapes of 20x20 px and more).
"""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np

from serve_app.exports.labels import Labels, UnitMask
from serve_app.exports.names import member

APPROX_EPSILON_PX = 0.75


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """bool (H,W) -> one float64 (n,2) array of (x, y) vertices per external component, n >= 3, in pixel
    index coordinates (the centre of pixel (x, y) is (x, y))."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for contour in contours:
        simple = cv2.approxPolyDP(contour, APPROX_EPSILON_PX, True)
        chosen = simple if len(simple) >= 3 else contour
        if len(chosen) >= 3:
            out.append(chosen.reshape(-1, 2).astype(np.float64))
    return out


def label_lines(units: list[UnitMask], width: int, height: int) -> str:
    """The label file text of one frame ("" when no unit has a polygon)."""
    lines = []
    scale = np.array([width, height], dtype=np.float64)
    for um in units:
        if um.area == 0:
            continue
        for poly in mask_polygons(um.mask):
            coords = ((poly + 0.5) / scale).clip(0.0, 1.0).reshape(-1)
            lines.append(f"{um.class_index} " + " ".join(f"{v:.6f}" for v in coords))
    return "".join(line + "\n" for line in lines)


def _yaml_str(text: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


class YoloWriter:
    """Writes one label file per frame as frames come; classes.txt and data.yaml at finish."""

    def __init__(self, labels: Labels, *, width: int, height: int, root: str):
        self.labels = labels
        self.width, self.height = width, height
        self.root = root

    def add_frame(self, zf: zipfile.ZipFile, frame_index: int, units: list[UnitMask]) -> None:
        text = label_lines(units, self.width, self.height)
        zf.writestr(member(self.root, "labels", f"{frame_index:06d}.txt"), text)

    def finish(self, zf: zipfile.ZipFile) -> None:
        classes = self.labels.classes
        zf.writestr(member(self.root, "classes.txt"), "".join(" ".join(c.splitlines()) + "\n" for c in classes))
        names = "".join(f"  {i}: {_yaml_str(c)}\n" for i, c in enumerate(classes))
        yaml = f"path: .\ntrain: images\nval: images\nnc: {len(classes)}\nnames:\n" + (names or "  {}\n")
        zf.writestr(member(self.root, "data.yaml"), yaml)
