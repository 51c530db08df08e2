"""A video session's dataset export, written into one streaming ZIP (the caller's zipfile.ZipFile, mode "w",
possibly over a non-seekable stream: zipfile then writes data descriptors).

Only one ZIP member can be open at a time, so per-frame members are written whole as frames come, and what
accumulates (the COCO JSON, the overlay MP4) is spooled to files under `workdir` and copied in by `finish`.
Memory: one frame (its JPEG, decoded image and unit masks) plus the units' metadata, never the video.

ZIP layout, under `{root}/` (default `export/`); frame numbers are the session's frame indices, 6 digits;
every name goes through names.member, and user text only through names.safe_name (file_stem):

    manifest.json                      {"formats", "frames": {"start", "end", "count"}, "width", "height",
                                        "fps", "units": [{unit_id, obj_ids, class_name, instance_name,
                                        file_stem}], "classes", "source"}
    images/{frame:06d}.jpg             include_images: the frame JPEGs exactly as stored (no re-encode)
    annotations/instances.json         coco_instance: COCO instance segmentation, RLE masks, track_id =
                                       unit_id (see coco.py)
    classes.txt, data.yaml,            yolo_segmentation: Ultralytics polygons, one label file per frame
    labels/{frame:06d}.txt             (empty when nothing is on it; see yolo.py)
    masks/{file_stem}/{frame:06d}.png  binary_masks_png: 0/255 grayscale per unit and frame, all zero where
                                       the unit is absent (see png_masks.py)
    overlay.mp4                        overlay_mp4: masks, boxes and names drawn, H.264 at fps (see
                                       overlay_video.py)

Units (labels.py): one per object, or one per merge group (the union of its objects' masks per frame,
score = max); every box is the tight box of the unit's mask, recomputed from the RLE.
"""

from __future__ import annotations

import json
import zipfile

import cv2
import numpy as np

from serve_app.exports.coco import CocoWriter
from serve_app.exports.labels import Labels, frame_units
from serve_app.exports.names import member
from serve_app.exports.overlay_video import OverlayVideoWriter
from serve_app.exports.png_masks import PngMaskWriter
from serve_app.exports.yolo import YoloWriter
from serve_app.schemas import ExportOptions, VideoObject


def decode_jpeg(jpeg: bytes, width: int, height: int) -> np.ndarray:
    """JPEG bytes -> uint8 (height, width, 3) BGR, pixels as stored (EXIF orientation ignored: frames are
    stored in display orientation). ValueError if undecodable or not width x height."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError("frame JPEG cannot be decoded")
    if bgr.shape[:2] != (height, width):
        raise ValueError(f"frame JPEG is {bgr.shape[1]}x{bgr.shape[0]}, expected {width}x{height}")
    return bgr


class DatasetWriter:
    """Writes the formats of `options` into `zf` under `root`, frame by frame; see the module docstring.

    width, height: the frames' size in pixels (display orientation), which every mask must have. fps: the
    exported frames' rate (overlay video; manifest). workdir: an existing private directory for spool files
    (the caller removes it). source: free JSON for manifest["source"] (e.g. the session id)."""

    def __init__(self, zf: zipfile.ZipFile, options: ExportOptions, labels: Labels, *, width: int, height: int,
                 fps: float, workdir: str, root: str = "export", source: dict | None = None):
        if width <= 0 or height <= 0:
            raise ValueError(f"bad frame size {width}x{height}")
        self.zf, self.options, self.labels = zf, options, labels
        self.width, self.height, self.fps = width, height, float(fps)
        self.root = member(root)
        self.source = source
        formats = set(options.formats)
        self.formats = [f for f in ("coco_instance", "yolo_segmentation", "binary_masks_png", "overlay_mp4")
                        if f in formats]
        w, h = width, height
        self._coco = CocoWriter(labels, width=w, height=h, workdir=workdir) if "coco_instance" in formats else None
        self._yolo = YoloWriter(labels, width=w, height=h, root=self.root) if "yolo_segmentation" in formats else None
        self._png = PngMaskWriter(labels, width=w, height=h, root=self.root) if "binary_masks_png" in formats else None
        self._video = (OverlayVideoWriter(width=w, height=h, fps=fps, workdir=workdir) if "overlay_mp4" in formats
                       else None)
        self._needs_jpeg = options.include_images or self._video is not None
        self._first: int | None = None
        self._last: int | None = None
        self._count = 0
        self._finished = False

    @property
    def frames_written(self) -> int:
        return self._count

    def add_frame(self, frame_index: int, jpeg: bytes | None, objects: list[VideoObject]) -> None:
        """One frame of the scope, in increasing frame_index order. `jpeg` (the stored frame) is required
        with include_images or overlay_mp4 (ValueError if None then), ignored otherwise. Objects with no
        unit in `labels` are skipped; every mask must be height x width (ValueError)."""
        if self._finished:
            raise ValueError("export already finished")
        if self._last is not None and frame_index <= self._last:
            raise ValueError(f"frame {frame_index} after frame {self._last}: frames must come in increasing order")
        if frame_index < 0:
            raise ValueError(f"bad frame index {frame_index}")
        if self._needs_jpeg and jpeg is None:
            raise ValueError(f"frame {frame_index}: the JPEG is needed (include_images / overlay_mp4)")
        units = frame_units(self.labels, objects, self.height, self.width)
        if self.options.include_images and jpeg is not None:
            self.zf.writestr(member(self.root, "images", f"{frame_index:06d}.jpg"), jpeg,
                             compress_type=zipfile.ZIP_STORED)
        if self._coco is not None:
            self._coco.add_frame(frame_index, units)
        if self._yolo is not None:
            self._yolo.add_frame(self.zf, frame_index, units)
        if self._png is not None:
            self._png.add_frame(self.zf, frame_index, units)
        if self._video is not None and jpeg is not None:
            self._video.add_frame(decode_jpeg(jpeg, self.width, self.height), units)
        self._first = frame_index if self._first is None else self._first
        self._last = frame_index
        self._count += 1

    def manifest(self) -> dict:
        units = [{"unit_id": u.unit_id, "obj_ids": list(u.obj_ids), "class_name": u.class_name,
                  "instance_name": u.instance_name, "file_stem": u.file_stem} for u in self.labels.units]
        return {"formats": self.formats, "frames": {"start": self._first, "end": self._last, "count": self._count},
                "width": self.width, "height": self.height, "fps": self.fps, "units": units,
                "classes": list(self.labels.classes), "source": self.source}

    def finish(self) -> dict:
        """Write the accumulated members and manifest.json; return the manifest. Call once, after the last
        frame; the caller then closes the ZipFile."""
        if self._finished:
            raise ValueError("export already finished")
        self._finished = True
        if self._coco is not None:
            self._coco.finish(self.zf, member(self.root, "annotations", "instances.json"))
        if self._yolo is not None:
            self._yolo.finish(self.zf)
        if self._png is not None:
            self._png.finish(self.zf)
        if self._video is not None:
            self._video.finish(self.zf, member(self.root, "overlay.mp4"))
        manifest = self.manifest()
        self.zf.writestr(member(self.root, "manifest.json"), json.dumps(manifest, ensure_ascii=False, indent=1))
        return manifest

    def abort(self) -> None:
        """Close the spool files and the video encoder without writing anything more (on an error path; the
        caller removes workdir). Idempotent."""
        self._finished = True
        if self._coco is not None:
            self._coco.close()
        if self._video is not None:
            try:
                self._video.close()
            except Exception:  # best effort: the export is failing anyway
                pass
