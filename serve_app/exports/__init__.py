"""Dataset exports of video sessions: COCO instance JSON, YOLO segmentation labels, binary mask PNGs and an
overlay MP4, written into one streaming ZIP (layout: serve_app.exports.dataset). Pure CPU code: no Ray,
FastAPI or torch.

    labels = build_labels(options, obj_ids_in_scope)
    writer = DatasetWriter(zf, options, labels, width=W, height=H, fps=fps, workdir=tmp, source={...})
    for frame_index, jpeg, objects in frames_in_scope:   # increasing frame_index
        writer.add_frame(frame_index, jpeg, objects)
    manifest = writer.finish()                            # then the caller closes zf
"""

from serve_app.exports.dataset import DatasetWriter
from serve_app.exports.labels import ExportUnit, Labels, build_labels
from serve_app.exports.names import member, safe_name

__all__ = ["DatasetWriter", "ExportUnit", "Labels", "build_labels", "member", "safe_name"]
