"""Checks of click geometry against an image or frame, shared by the click and video runners (numpy only).

Coordinates are ORIGINAL pixels of a W x H image (x right, y down); every failure is an InvalidInput with a
stable code, raised for the request it belongs to only.
"""

from __future__ import annotations

import numpy as np

from serve_app.errors import InvalidInput


def check_points_and_box(points_xy: object, point_labels: object, box_xyxy: object, where: str,
                         hw: tuple[int, int]) -> None:
    """points_xy (n,2) with one label in {0, 1} per point, and/or box_xyxy (4,) [x0, y0, x1, y1], all inside
    the H x W image (`hw`). At least one of the two must be given. `where` names the object in messages."""
    h, w = hw
    if points_xy is None and box_xyxy is None:
        raise InvalidInput(f"{where} needs points or a box", "empty_object")
    if points_xy is not None:
        pts = _floats(points_xy)
        if pts is None or pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0 or not np.isfinite(pts).all():
            raise InvalidInput(f"{where}.points must be a non-empty list of finite [x, y]", "invalid_points")
        labels = None if point_labels is None else _floats(point_labels)
        if labels is None or labels.shape != (len(pts),):
            raise InvalidInput(f"{where}: one point_label per point is required", "point_labels_mismatch")
        if not np.isin(labels, (0, 1)).all():
            raise InvalidInput(f"{where}.point_labels must be 0 or 1", "invalid_point_labels")
        if (pts < 0).any() or (pts[:, 0] > w).any() or (pts[:, 1] > h).any():
            raise InvalidInput(f"{where}: points must lie inside the {w}x{h} image", "point_outside_image")
    elif point_labels is not None:
        raise InvalidInput(f"{where}: point_labels without points", "point_labels_mismatch")
    if box_xyxy is not None:
        box = _floats(box_xyxy)
        if box is None or box.size != 4 or not np.isfinite(box).all():
            raise InvalidInput(f"{where}.box must be 4 finite numbers [x0, y0, x1, y1]", "invalid_box")
        box = box.reshape(4)
        if box[2] <= box[0] or box[3] <= box[1]:  # zero area (x0 == x1 or y0 == y1) included
            raise InvalidInput(f"{where}.box needs x0 < x1 and y0 < y1", "invalid_box")
        if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
            raise InvalidInput(f"{where}.box must lie inside the {w}x{h} image", "box_outside_image")


def _floats(values: object) -> np.ndarray | None:
    """`values` as a float64 array, or None when it is not numeric or ragged (a client's fault, not a 500)."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
