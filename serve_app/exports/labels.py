"""Export units: which tracked objects become which exported instance, and their names and classes.

A unit is one exported instance track: a single object, or a merge group (the union of its objects' masks on
each frame). `build_labels` resolves ExportOptions.object_meta and ExportOptions.merge against the objects
that appear in the exported frames; `frame_units` turns one frame's VideoObjects into per-unit masks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils

from serve_app.errors import InvalidInput
from serve_app.exports.names import MAX_NAME_CHARS, safe_name
from serve_app.schemas import ExportOptions, VideoObject

if TYPE_CHECKING:
    from pycocotools import _EncodedRLE

DEFAULT_CLASS = "object"


@dataclass(frozen=True)
class ExportUnit:
    """One exported instance track.

    unit_id: 1-based, ordered by the smallest object id in the unit. obj_ids: sorted. class_name and
    instance_name: raw text (for JSON / classes.txt). file_stem: safe_name(instance_name), unique among the
    units of one export, case-insensitively (suffix _2, _3, ... in unit order)."""

    unit_id: int
    obj_ids: tuple[int, ...]
    class_name: str
    instance_name: str
    file_stem: str


class Labels:
    """The units of one export and its classes (sorted unique class names; YOLO class id = index in
    `classes`, COCO category id = index + 1)."""

    def __init__(self, units: list[ExportUnit]):
        self.units = units
        self.classes = sorted({u.class_name for u in units})
        self._by_obj = {obj_id: u for u in units for obj_id in u.obj_ids}
        self._class_idx = {name: i for i, name in enumerate(self.classes)}

    def unit_of(self, obj_id: int) -> ExportUnit | None:
        """The unit holding this object; None for an object that is not exported."""
        return self._by_obj.get(obj_id)

    def class_index(self, unit: ExportUnit) -> int:
        """0-based class index of the unit (YOLO class id; COCO category id - 1)."""
        return self._class_idx[unit.class_name]


def _check_meta(options: ExportOptions) -> None:
    seen: set[int] = set()
    for meta in options.object_meta:
        if meta.obj_id in seen:
            raise InvalidInput(f"object_meta lists object {meta.obj_id} twice", "duplicate_object_meta")
        seen.add(meta.obj_id)


def _groups(options: ExportOptions, present: set[int]) -> list[tuple[str, list[int]]]:
    """The merge groups as (name, obj_ids in the given order), validated."""
    groups = options.merge.groups
    if options.merge.mode == "none":
        if groups:
            raise InvalidInput('merge.groups needs merge.mode "group"', "invalid_merge_groups")
        return []
    names: set[str] = set()
    owner: dict[int, str] = {}
    for group in groups:
        if group.name in names:
            raise InvalidInput(f"two merge groups are named {group.name!r}", "invalid_merge_groups")
        names.add(group.name)
        for obj_id in group.obj_ids:
            if obj_id not in present:
                raise InvalidInput(f"merge group {group.name!r}: object {obj_id} is not in the exported frames",
                                   "unknown_merge_object")
            if obj_id in owner:
                raise InvalidInput(f"object {obj_id} is in merge groups {owner[obj_id]!r} and {group.name!r}"
                                   if owner[obj_id] != group.name else
                                   f"merge group {group.name!r} lists object {obj_id} twice", "invalid_merge_groups")
            owner[obj_id] = group.name
    return [(g.name, list(g.obj_ids)) for g in groups]


def _unique_stem(name: str, fallback: str, taken: set[str]) -> str:
    base = safe_name(name, fallback)
    stem, n = base, 1
    while stem.lower() in taken:
        n += 1
        suffix = f"_{n}"
        stem = base[:MAX_NAME_CHARS - len(suffix)] + suffix
    taken.add(stem.lower())
    return stem


def build_labels(options: ExportOptions, obj_ids: Iterable[int]) -> Labels:
    """Units for the objects `obj_ids` (those that appear in the exported frames; order and repeats do not
    matter). Unnamed objects: class "object", instance "object_{id}"; object_meta of absent objects is ignored.
    merge.mode "group": each group is one unit named by the group, whose class is the object_meta class of its
    first listed object that has one (else the group name); objects in no group are their own unit.

    Raises InvalidInput: duplicate_object_meta (an obj_id twice in object_meta), invalid_merge_groups (groups
    with mode "none", two groups with one name, an object in two groups or twice in one), unknown_merge_object
    (a group names an object that is not in `obj_ids`)."""
    _check_meta(options)
    present = {int(i) for i in obj_ids}
    meta = {m.obj_id: m for m in options.object_meta}
    groups = _groups(options, present)
    drafts: list[tuple[tuple[int, ...], str, str]] = []  # (obj_ids, class_name, instance_name)
    grouped: set[int] = set()
    for name, members in groups:
        classes = [c for c in (meta[i].class_name for i in members if i in meta) if c]
        drafts.append((tuple(sorted(members)), classes[0] if classes else name, name))
        grouped.update(members)
    for obj_id in present - grouped:
        m = meta.get(obj_id)
        class_name = (m.class_name if m else None) or DEFAULT_CLASS
        drafts.append(((obj_id,), class_name, (m.instance_name if m else None) or f"object_{obj_id}"))
    drafts.sort(key=lambda d: d[0][0])
    taken: set[str] = set()
    units = [ExportUnit(i, ids, cls, inst, _unique_stem(inst, f"unit_{i}", taken))
             for i, (ids, cls, inst) in enumerate(drafts, start=1)]
    return Labels(units)


class UnitMask:
    """One unit on one frame: the union of its objects' masks (frame size H x W), and the best object score.

    rle: pycocotools compressed RLE, counts as bytes (pycocotools' own form). `mask` decodes it once (bool
    (H,W), row-major), on first use only: a COCO-only export never decodes a mask."""

    def __init__(self, unit: ExportUnit, class_index: int, rle: _EncodedRLE, score: float):
        self.unit = unit
        self.class_index = class_index
        self.rle = rle
        self.score = score

    @cached_property
    def mask(self) -> np.ndarray:
        return mask_utils.decode(self.rle).astype(bool)

    @cached_property
    def area(self) -> int:
        """Mask pixels."""
        return int(mask_utils.area(self.rle))

    @cached_property
    def box_xywh(self) -> list[float]:
        """Tight box [x, y, w, h] in pixels (COCO bbox; x + w exclusive); zeros when the mask is empty."""
        return [float(v) for v in mask_utils.toBbox(self.rle)]

    @property
    def box_xyxy(self) -> list[float]:
        """Tight box [x0, y0, x1, y1] in pixels (x1/y1 exclusive)."""
        x, y, w, h = self.box_xywh
        return [x, y, x + w, y + h]


def _rle(obj: VideoObject, height: int, width: int) -> _EncodedRLE:
    size = [int(v) for v in obj.mask.size]
    if size != [height, width]:
        raise ValueError(f"object {obj.id}: mask size {size} is not the frame size [{height}, {width}]")
    return {"size": size, "counts": obj.mask.counts.encode("ascii")}


def frame_units(labels: Labels, objects: list[VideoObject], height: int, width: int) -> list[UnitMask]:
    """One frame's objects -> one UnitMask per unit present on it (in unit order; units with an empty union
    included). Objects with no unit are skipped. A merged unit's mask is the union of its objects' masks
    (pycocotools merge, on the RLEs) and its score their max. ValueError if a mask is not (height, width)."""
    found: dict[int, tuple[ExportUnit, list[_EncodedRLE], float]] = {}
    for obj in objects:
        unit = labels.unit_of(obj.id)
        if unit is None:
            continue
        _, rles, score = found.get(unit.unit_id, (unit, [], float("-inf")))
        rles.append(_rle(obj, height, width))
        found[unit.unit_id] = (unit, rles, max(score, float(obj.score)))
    out = []
    for unit_id in sorted(found):
        unit, rles, score = found[unit_id]
        rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=False)
        out.append(UnitMask(unit, labels.class_index(unit), rle, score))
    return out
