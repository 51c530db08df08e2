"""COCO instance segmentation JSON (`annotations/instances.json`), built with bounded memory.

The `images` and `annotations` arrays grow with the video, so their entries are appended as JSON text to two
spool files under `workdir` as frames come; `finish` streams header + images + annotations + categories into
one ZIP member (zip64 when large). Memory: one frame's annotations.

Layout: images [{id: frame_index + 1, file_name: "images/{frame:06d}.jpg" (relative to the export root; the
file exists only with include_images), width, height, frame_index}]; categories [{id: class index + 1, name,
supercategory: "object"}]; annotations [{id (1, 2, ...), image_id, category_id, segmentation: compressed RLE
{"size": [H, W], "counts": str} (pixel coordinates of the frame, column-major as pycocotools), area (int
pixels), bbox [x, y, w, h] (float pixels, tight box of the mask), iscrowd: 0, track_id: unit_id,
instance_name, score}], one per unit and frame where the unit's mask is non-empty. Loads with
pycocotools.coco.COCO; annToMask gives back the unit's mask.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from typing import IO

from serve_app.exports.labels import Labels, UnitMask

_COPY_CHUNK = 1 << 20


class _JsonArraySpool:
    """A JSON array written piece by piece to a file: the entries, comma-separated, without the brackets."""

    def __init__(self, path: str):
        self.path = path
        self._file: IO[str] | None = open(path, "w", encoding="utf-8")
        self.count = 0

    def append(self, entry: dict) -> None:
        assert self._file is not None, "spool already closed"
        self._file.write(("," if self.count else "") + json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
        self.count += 1

    def close(self) -> int:
        """Close the file; its size in bytes."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return os.path.getsize(self.path)

    def copy_to(self, dest: IO[bytes]) -> None:
        with open(self.path, "rb") as src:
            shutil.copyfileobj(src, dest, _COPY_CHUNK)


class CocoWriter:
    """Accumulates the COCO JSON of an export; see the module docstring for its content."""

    def __init__(self, labels: Labels, *, width: int, height: int, workdir: str, info: dict | None = None):
        self.labels = labels
        self.width, self.height = width, height
        self.info = {"description": "sam3-serve video export", "version": "1.0", **(info or {})}
        self._images = _JsonArraySpool(os.path.join(workdir, "coco_images.jsonl"))
        self._annotations = _JsonArraySpool(os.path.join(workdir, "coco_annotations.jsonl"))

    def add_frame(self, frame_index: int, units: list[UnitMask]) -> None:
        """One frame (in order): its image entry and one annotation per unit with a non-empty mask."""
        image_id = frame_index + 1
        self._images.append({"id": image_id, "file_name": f"images/{frame_index:06d}.jpg", "width": self.width,
                             "height": self.height, "frame_index": frame_index})
        for um in units:
            area = um.area
            if area == 0:
                continue
            counts = um.rle["counts"]
            self._annotations.append({
                "id": self._annotations.count + 1, "image_id": image_id, "category_id": um.class_index + 1,
                "segmentation": {"size": [self.height, self.width],
                                 "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts},
                "area": area, "bbox": um.box_xywh, "iscrowd": 0, "track_id": um.unit.unit_id,
                "instance_name": um.unit.instance_name, "score": float(um.score)})

    def close(self) -> None:
        """Close the spool files (idempotent; finish does it too)."""
        self._images.close()
        self._annotations.close()

    @property
    def annotation_count(self) -> int:
        return self._annotations.count

    def finish(self, zf: zipfile.ZipFile, name: str) -> None:
        """Write the whole JSON as ZIP member `name` (the ZipFile's compression), streamed from the spools."""
        categories = [{"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(self.labels.classes)]
        head = ('{"info":' + json.dumps(self.info, ensure_ascii=False) + ',"licenses":[],"categories":'
                + json.dumps(categories, ensure_ascii=False) + ',"images":[').encode("utf-8")
        middle, tail = b'],"annotations":[', b"]}"
        size = len(head) + self._images.close() + len(middle) + self._annotations.close() + len(tail)
        # the size is known exactly: zip64 only when needed (zipfile cannot tell for a member opened for writing)
        with zf.open(name, "w", force_zip64=size * 1.05 > zipfile.ZIP64_LIMIT) as dest:
            dest.write(head)
            self._images.copy_to(dest)
            dest.write(middle)
            self._annotations.copy_to(dest)
            dest.write(tail)

