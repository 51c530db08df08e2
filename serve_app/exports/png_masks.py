"""Binary mask PNGs: `masks/{file_stem}/{frame:06d}.png` for every unit on every frame in scope.

Each PNG is 8-bit grayscale at the frame size (width x height), 0 = background, 255 = the unit's mask; all
zero on frames where the unit is absent (that PNG is encoded once and reused). Encoded with
cv2.imencode(".png") (OpenCV's default zlib level, several times faster than PIL) and stored in the ZIP
without recompression (PNG is already deflated).
"""

from __future__ import annotations

import zipfile

import cv2
import numpy as np

from serve_app.exports.labels import Labels, UnitMask
from serve_app.exports.names import member


def encode_png(mask: np.ndarray) -> bytes:
    """bool (H,W) -> PNG bytes, 8-bit grayscale 0/255."""
    ok, png = cv2.imencode(".png", mask.astype(np.uint8) * np.uint8(255))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


class PngMaskWriter:
    """Writes every unit's PNG of a frame as the frame comes; nothing accumulates."""

    def __init__(self, labels: Labels, *, width: int, height: int, root: str):
        self.labels = labels
        self.root = root
        self._empty = encode_png(np.zeros((height, width), dtype=bool))

    def add_frame(self, zf: zipfile.ZipFile, frame_index: int, units: list[UnitMask]) -> None:
        present = {um.unit.unit_id: um for um in units}
        for unit in self.labels.units:
            um = present.get(unit.unit_id)
            data = encode_png(um.mask) if um is not None and um.area else self._empty
            zf.writestr(member(self.root, "masks", unit.file_stem, f"{frame_index:06d}.png"), data,
                        compress_type=zipfile.ZIP_STORED)

    def finish(self, zf: zipfile.ZipFile) -> None:
        """Nothing left to write (kept for the writers' common shape)."""
