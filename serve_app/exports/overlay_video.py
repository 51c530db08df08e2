"""Overlay video (`overlay.mp4`): the frames with each unit's mask, box and instance name drawn.

Each unit has a stable colour (serve_app.codecs.overlay.palette(unit_id)); its mask is blended at alpha 0.45,
its tight box outlined and `instance_name` written above it (OpenCV Hershey font: characters outside ASCII
show as "?"). Encoded with PyAV as H.264 (libx264, yuv420p, preset veryfast, crf 23) at `fps`; when this
PyAV build has no libx264, MPEG-4 Part 2 ("mpeg4", yuv420p) in the same MP4 container. yuv420p needs even
sides: an odd width / height is padded by one black column / row (right / bottom). Frame i has pts i in
the encoder's time base 1 / rate, rate = fps as a Fraction with denominator <= 1001 (29.97 -> 2997/100,
30000/1001 stays, 7.5 -> 15/2).

The MP4 is written to a spool file under `workdir` frame by frame (memory: one frame plus the encoder's
lookahead) and copied into the ZIP by `finish`.
"""

from __future__ import annotations

import os
import zipfile
from fractions import Fraction

import av
import cv2
import numpy as np

from serve_app.codecs.overlay import palette
from serve_app.exports.labels import UnitMask

ALPHA = 0.45
MAX_LABEL_CHARS = 48


def video_codec() -> str:
    """"libx264" when this PyAV build has it, else "mpeg4"."""
    return "libx264" if "libx264" in av.codec.codecs_available else "mpeg4"


def frame_rate(fps: float) -> Fraction:
    """fps -> the rate as a Fraction with denominator <= 1001; ValueError if not > 0."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps} is too small")
    return rate


def draw_units(bgr: np.ndarray, units: list[UnitMask]) -> None:
    """Draw the units over uint8 (H,W,3) BGR in place: blended masks first (inside each box only), then the
    boxes and labels."""
    drawn = [um for um in units if um.area]
    for um in drawn:
        x0, y0, x1, y1 = (int(v) for v in um.box_xyxy)
        region, crop = bgr[y0:y1, x0:x1], um.mask[y0:y1, x0:x1]
        r, g, b = palette(um.unit.unit_id)
        color = np.empty_like(region)
        color[:] = (b, g, r)
        # blend the whole box with cv2 (SIMD), keep it only under the mask: 2x faster than blending the
        # masked pixels through a float32 fancy-index round trip
        np.copyto(region, cv2.addWeighted(region, 1 - ALPHA, color, ALPHA, 0), where=crop[..., None])
    scale = max(0.4, min(bgr.shape[:2]) / 800)
    for um in drawn:
        r, g, b = palette(um.unit.unit_id)
        x0, y0, x1, y1 = (int(v) for v in um.box_xyxy)
        cv2.rectangle(bgr, (x0, y0), (x1 - 1, y1 - 1), (b, g, r), max(1, int(2 * scale)))
        label = um.unit.instance_name[:MAX_LABEL_CHARS].encode("ascii", "replace").decode("ascii")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
        ty = max(th + base, y0)
        cv2.rectangle(bgr, (x0, ty - th - base), (x0 + tw, ty), (b, g, r), -1)
        cv2.putText(bgr, label, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), 1, cv2.LINE_AA)


class OverlayVideoWriter:
    """Encodes overlay frames to `{workdir}/overlay.mp4` as they come; `finish` copies it into the ZIP."""

    def __init__(self, *, width: int, height: int, fps: float, workdir: str):
        self.width, self.height = width, height
        self.out_width, self.out_height = width + width % 2, height + height % 2
        self.rate = frame_rate(fps)
        self.codec = video_codec()
        self.path = os.path.join(workdir, "overlay.mp4")
        self.frames = 0
        self._container = av.open(self.path, mode="w", format="mp4")
        stream = self._container.add_stream(self.codec, rate=self.rate)
        assert isinstance(stream, av.video.stream.VideoStream)
        self._stream = stream
        self._stream.width, self._stream.height = self.out_width, self.out_height
        self._stream.pix_fmt = "yuv420p"
        # the encoder's time base, not the stream's: mpeg4 refuses frames when the stream's is set before muxing
        self._stream.codec_context.time_base = 1 / self.rate
        if self.codec == "libx264":
            self._stream.options = {"preset": "veryfast", "crf": "23"}
        self._closed = False

    def add_frame(self, bgr: np.ndarray, units: list[UnitMask]) -> None:
        """uint8 (height, width, 3) BGR frame (drawn on in place) and its units -> one video frame."""
        if bgr.shape != (self.height, self.width, 3):
            raise ValueError(f"frame shape {bgr.shape} is not ({self.height}, {self.width}, 3)")
        draw_units(bgr, units)
        if (self.out_width, self.out_height) != (self.width, self.height):
            bgr = cv2.copyMakeBorder(bgr, 0, self.out_height - self.height, 0, self.out_width - self.width,
                                     cv2.BORDER_CONSTANT, value=(0, 0, 0))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the MP4 (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def finish(self, zf: zipfile.ZipFile, name: str) -> None:
        """Close the MP4 and copy it into the ZIP as `name` (stored: H.264 does not deflate)."""
        self.close()
        zf.write(self.path, name, compress_type=zipfile.ZIP_STORED)
