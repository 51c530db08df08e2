"""CPU-side video ingest for video sessions: probe, validate, decode at a processing fps, store JPEG frames.

    probe = probe_video(path, limits)                       # cheap checks; raises typed errors (400/413/415)
    meta = ingest_video(store, tenant, sid, path, limits, fps=None, max_frames=None, on_progress=cb)
    # frames t/{tenant}/sessions/{sid}/frames/{i}.jpg for i in 0..meta.num_frames-1, then the manifest
    # t/{tenant}/sessions/{sid}/frames/index.json (written LAST: its presence means the frames are complete)

Conventions (all of them hold for every function here):
- A frame is an RGB uint8 array (H,W,3) in DISPLAY orientation: the container's display matrix (the
  rotation/mirror phones write instead of rotating pixels) is applied, so `width`/`height` are what a player
  shows. Pixel coordinates are x right, y down, (0,0) the top-left corner of the displayed frame.
- Times are seconds (float). A source timestamp is the frame's presentation time relative to the FIRST
  decoded frame of the video stream (so the first frame is at 0.0), exact from the container's pts:
  `pts * time_base`. Matroska/WebM store milliseconds, so their times are multiples of 0.001.
- Processed frame i (the session's frame index) targets time t_i = i / fps and shows the source frame
  with the latest timestamp <= t_i (+ `TIMESTAMP_EPS_S`): selection by TIMESTAMP, not by index, so
  variable-frame-rate input is sampled correctly; targets run while t_i <= the last source timestamp,
  and never past `max_frames`.

Safety: the file is read through a Python file object with FFmpeg's `protocol_whitelist` empty, so a
playlist-like input (HLS `.m3u8`, ffconcat) cannot make FFmpeg open other local files or URLs; image
"containers" (PNG, JPEG... which FFmpeg happily reads as one-frame videos) and playlist formats are refused
as `invalid_video`. The size limit is checked before FFmpeg sees a byte; pixel and duration limits from the
container's metadata before anything is decoded, and again on the decoded frames and packet timestamps
(metadata can lie).

No Ray, FastAPI or torch here: the ingress and the session actors call it from a worker thread
(`asyncio.to_thread`); every function blocks (file, decode and storage I/O).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np

from serve_app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

TIMESTAMP_EPS_S = 1e-3
"""Tolerance when comparing a source timestamp with a target time: Matroska/WebM round pts to 1 ms, and
1 ms stays below half a frame interval up to 500 fps."""

MANIFEST_VERSION = 1
_JPEG = "image/jpeg"
_JSON = "application/json"
_WRITE_THREADS = 2  # JPEG encode (cv2 releases the GIL) + storage put, overlapped with decoding
_MAX_IN_FLIGHT = 4  # frames decoded but not yet stored: bounds memory to a few frames
_VFR_TOLERANCE_S = 2e-3  # pts intervals differing by more than this (and 5%) mean variable frame rate

# Demuxers that are not video files: single images (FFmpeg reads them as one-frame videos), playlists and
# text formats that could pull in other files, and lavfi (a filter graph, not a file).
_REFUSED_FORMATS = frozenset({
    "image2", "apng", "webp", "hls", "applehttp", "concat", "dash", "lavfi", "tty", "bin", "adf", "idf", "xbin",
})


def session_frames_index_key(tenant: str, session_id: str) -> str:
    """`t/{tenant}/sessions/{sid}/frames/index.json`: the frames manifest written by `ingest_video`."""
    return keys.session_prefix(tenant, session_id) + "frames/index.json"


# -- data -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestLimits:
    """Hard limits of one ingest. Exceeding one raises PayloadTooLarge (413) with the code named here.

    max_video_bytes: file size (`video_too_large`), checked before the file is opened.
    max_duration_s: seconds of the video stream (`video_too_long`).
    max_frame_pixels: width*height of a decoded frame (`frame_too_large`).
    max_frames: upper bound on processed frames; the processing fps is lowered to stay within it.
    jpeg_quality: 1..100, quality of the stored frames.
    """

    max_video_bytes: int
    max_duration_s: float
    max_frame_pixels: int
    max_frames: int
    jpeg_quality: int = 90

    def __post_init__(self):
        if self.max_video_bytes < 1 or self.max_frame_pixels < 1 or self.max_frames < 1:
            raise ValueError("IngestLimits: byte, pixel and frame limits must be >= 1")
        if not self.max_duration_s > 0:
            raise ValueError("IngestLimits: max_duration_s must be > 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("IngestLimits: jpeg_quality must be in 1..100")


@dataclass(frozen=True)
class VideoProbe:
    """What `probe_video` learned about a file without decoding more than its first frame.

    format_name: FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm".
    codec: codec name, e.g. "h264", "mpeg4", "vp9", "av1" (the format, not the decoder library).
    width, height: pixels of the DISPLAYED frame (after rotation: a 90-degree phone video that stores
        1920x1080 reports width 1080, height 1920).
    rotation: counter-clockwise degrees (0, 90, 180, 270) the stored pixels are turned for display, from
        the stream's display matrix; `mirrored`: then flipped left-right (x -> W-1-x).
    duration_s: seconds the video stream covers (last timestamp + that frame's duration).
    last_timestamp_s: timestamp of the last frame (seconds after the first frame).
    source_fps: average frame rate of the stream (frames per second).
    frame_count: frames in the stream (its packets: exact for ordinary files, an estimate otherwise).
    variable_frame_rate: True if frame intervals differ (by > 2 ms and > 5%), None if it cannot tell.
    size_bytes: file size.
    """

    format_name: str
    codec: str
    width: int
    height: int
    rotation: int
    mirrored: bool
    duration_s: float
    last_timestamp_s: float
    source_fps: float
    frame_count: int
    variable_frame_rate: bool | None
    size_bytes: int


@dataclass(frozen=True, eq=False)
class DecodedFrame:
    """One processed frame.

    index: processed frame index (0, 1, ...: the session's frame index).
    source_index: index of the source frame in presentation order (0-based) that it shows.
    timestamp_s: that source frame's presentation time, seconds after the first frame.
    rgb: uint8 (H,W,3) RGB in display orientation, read-only; consecutive DecodedFrames that show the same
        source frame share one array.
    """

    index: int
    source_index: int
    timestamp_s: float
    rgb: np.ndarray


@dataclass(frozen=True)
class VideoMeta:
    """A session's frames as ingested (also the JSON manifest `frames/index.json`, via `as_dict`).

    num_frames: stored frames, indices 0..num_frames-1. fps: processing frame rate (frame i targets i/fps s).
    source_fps, duration_s, rotation, mirrored, codec, format_name, variable_frame_rate,
    source_frame_count: from the source (see VideoProbe). width, height: pixels of every stored frame (display
    orientation). timestamps_s[i] (seconds after the first source frame) and source_indices[i] identify the
    source frame that frame i shows.
    """

    num_frames: int
    fps: float
    source_fps: float
    width: int
    height: int
    duration_s: float
    rotation: int
    mirrored: bool
    codec: str
    format_name: str
    variable_frame_rate: bool | None
    source_frame_count: int
    timestamps_s: tuple[float, ...]
    source_indices: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists instead of tuples) with a `version` key."""
        out: dict[str, Any] = {"version": MANIFEST_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoMeta:
        """Inverse of `as_dict`; unknown keys (newer manifest versions) are ignored, missing ones raise."""
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        if missing:
            raise ValueError(f"video manifest lacks {sorted(missing)}")
        values = {name: data[name] for name in names}
        values["timestamps_s"] = tuple(float(t) for t in values["timestamps_s"])
        values["source_indices"] = tuple(int(i) for i in values["source_indices"])
        if not len(values["timestamps_s"]) == len(values["source_indices"]) == values["num_frames"]:
            raise ValueError("video manifest: num_frames, timestamps_s and source_indices disagree")
        return cls(**values)


# -- pure helpers -----------------------------------------------------------------------------------


def processing_fps(source_fps: float, duration_s: float, max_frames: int,
                   requested_fps: float | None = None) -> float:
    """Frames per second to process: min(source_fps, requested_fps, max_frames / duration_s).

    Never above the source rate (no invented frames), and low enough that the whole duration fits in
    `max_frames`. A `source_fps` or `duration_s` that is not > 0 (unknown) drops its term.
    Raises InvalidInput `invalid_fps` if `requested_fps` is not a finite number > 0.
    """
    if requested_fps is not None and not (math.isfinite(requested_fps) and requested_fps > 0):
        raise InvalidInput("fps must be a number > 0", "invalid_fps")
    if max_frames < 1:
        raise InvalidInput("max_frames must be >= 1", "invalid_max_frames")
    candidates = [requested_fps if requested_fps is not None else math.inf]
    if source_fps and source_fps > 0:
        candidates.append(source_fps)
    if duration_s and duration_s > 0:
        candidates.append(max_frames / duration_s)
    fps = min(candidates)
    return fps if math.isfinite(fps) else 1.0


def expected_frame_count(last_timestamp_s: float, fps: float, max_frames: int) -> int:
    """How many frames `decode_frames` yields: i = 0, 1, ... while i/fps <= last timestamp (+ eps), capped."""
    limit = max(0.0, last_timestamp_s) + TIMESTAMP_EPS_S
    n = int(limit * fps)  # candidate largest i; fix float rounding with the exact predicate below
    while n > 0 and n / fps > limit:
        n -= 1
    while (n + 1) / fps <= limit:
        n += 1
    return min(max_frames, n + 1)


def orient(rgb: np.ndarray, rotation: int, mirrored: bool = False) -> np.ndarray:
    """Stored pixels -> display: rotate uint8 (H,W,3) counter-clockwise by `rotation` degrees (a multiple
    of 90), then flip left-right if `mirrored`. Returns a C-contiguous array ((W,H,3) for 90/270)."""
    out = np.rot90(rgb, (rotation // 90) % 4) if rotation % 360 else rgb
    if mirrored:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _sign(v: int) -> int:
    return -1 if v < 0 else 1


# Display matrix (FFmpeg AV_PKT_DATA_DISPLAYMATRIX, 16.16 fixed point) -> (ccw rotation, mirrored), for the
# eight axis-aligned matrices. Same result as FFmpeg's own autorotate (fftools/ffmpeg_filter.c) and as
# PyAV's `VideoStream.set_display_rotation(degrees, hflip, vflip)` on write (tests check all 16 inputs).
_DIAGONAL = {(1, 1): (0, False), (1, -1): (180, True), (-1, 1): (0, True), (-1, -1): (180, False)}
_ANTI_DIAGONAL = {(-1, 1): (90, False), (1, 1): (270, True), (-1, -1): (90, True), (1, -1): (270, False)}


def orientation_from_display_matrix(matrix: list[int] | tuple[int, ...] | None) -> tuple[int, bool]:
    """(rotation ccw degrees in {0,90,180,270}, mirrored) of a 9-int display matrix; identity for None.

    Non-axis-aligned rotations snap to the nearest quarter turn.
    """
    if matrix is None or len(matrix) < 5:
        return 0, False
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    if a == b == c == d == 0:
        return 0, False
    if abs(a) + abs(d) >= abs(b) + abs(c):
        return _DIAGONAL[(_sign(a), _sign(d))]
    return _ANTI_DIAGONAL[(_sign(b), _sign(c))]


def _frame_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """Orientation of a decoded frame from its DISPLAYMATRIX side data (copied from the stream by FFmpeg)."""
    side_data: Any = frame.side_data  # a SideDataContainer at runtime (the av 18 stub says SideData)
    try:
        for sd in side_data:
            if getattr(sd.type, "name", str(sd.type)).upper().endswith("DISPLAYMATRIX"):
                matrix = np.frombuffer(bytes(sd), dtype="=i4")
                return orientation_from_display_matrix(matrix.tolist())
    except (TypeError, ValueError):  # side data not readable as bytes: fall back to the rotation only
        rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
        return rotation, False
    return 0, False


# -- container access -------------------------------------------------------------------------------


def _check_size(path: str, limits: IngestLimits | None) -> int:
    size = os.path.getsize(path)
    if limits is not None and size > limits.max_video_bytes:
        raise PayloadTooLarge(
            f"video is {size} bytes, the limit is {limits.max_video_bytes}", "video_too_large")
    return size


class _NamelessReader:
    """Read-only view of an open file for PyAV. Nameless, so FFmpeg picks the demuxer from the bytes and never
    from a file extension; a seek outside the file is answered with AVERROR(EINVAL), which FFmpeg handles as
    a read error, instead of a Python exception escaping from inside the demuxer."""

    def __init__(self, f):
        self._f = f
        self._size = os.fstat(f.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._f.tell(), 2: self._size}.get(whence)
        if base is None or base + offset < 0:
            return -errno.EINVAL
        return self._f.seek(base + offset)


@contextlib.contextmanager
def _open_video(path: str) -> Iterator[av.container.InputContainer]:
    """Open `path` for demuxing, sandboxed (no nested protocol access); non-video -> InvalidInput."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InvalidInput("the file is empty", "invalid_video")
        try:
            container = av.open(_NamelessReader(f), "r", container_options={"protocol_whitelist": "none"},
                                metadata_errors="replace")
        except av.error.FFmpegError as exc:
            raise InvalidInput("the file is not a video that can be decoded", "invalid_video") from exc
        with container:
            names = set(container.format.name.split(","))
            if names & _REFUSED_FORMATS or any(n.endswith("_pipe") for n in names):
                raise InvalidInput(f"the file is not a video ({container.format.name})", "invalid_video")
            yield container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first decodable video stream that is not cover art; typed errors otherwise."""
    if not container.streams:
        raise InvalidInput("the file has no readable streams (truncated or not a video)", "invalid_video")
    candidates = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not candidates:
        raise UnsupportedMediaType("the file has no video stream", "unsupported_codec")
    for stream in candidates:
        if stream.codec_context is not None:
            return stream
    raise UnsupportedMediaType("the video codec is not supported by this server", "unsupported_codec")


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return float(rate)
    return 0.0


def _check_pixels(width: int, height: int, limits: IngestLimits | None) -> None:
    if limits is not None and width * height > limits.max_frame_pixels:
        raise PayloadTooLarge(
            f"video frames are {width}x{height} pixels, the limit is {limits.max_frame_pixels} pixels",
            "frame_too_large")


def _check_duration(duration_s: float, limits: IngestLimits | None) -> None:
    if limits is not None and duration_s > limits.max_duration_s + TIMESTAMP_EPS_S:
        raise PayloadTooLarge(
            f"video is {duration_s:.3f} s long, the limit is {limits.max_duration_s:g} s", "video_too_long")


def _stream_duration(stream) -> float | None:
    """The video stream's own duration from the container header (Matroska has none), else None."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def _container_duration(container) -> float | None:
    """The whole file's duration (all streams: an audio track may be longer than the video), else None."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


@dataclass(frozen=True)
class _PacketScan:
    count: int
    last_timestamp_s: float | None  # None: no packet had a pts
    duration_s: float | None
    variable_frame_rate: bool | None


def _scan_packets(container, stream, fps: float, limits: IngestLimits | None) -> _PacketScan:
    """Demux (no decode) the video stream: frame count, timestamps span, frame-rate regularity."""
    tb = stream.time_base
    pts: list[int] = []
    count = 0
    first = last = None
    last_duration = 0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        count += 1
        if packet.pts is None or tb is None:
            continue
        pts.append(packet.pts)
        first = packet.pts if first is None else min(first, packet.pts)
        if last is None or packet.pts > last:
            last, last_duration = packet.pts, packet.duration or 0
            _check_duration(float((last - first) * tb), limits)  # stop reading an endless file early
    if first is None or last is None or tb is None:
        return _PacketScan(count, None, None, None)
    span = Fraction(last - first) * tb
    if last_duration > 0:
        frame_duration = Fraction(last_duration) * tb
    else:
        frame_duration = Fraction(1 / fps) if fps > 0 else Fraction(0)
    vfr = None
    if len(pts) >= 3:
        steps = np.diff(np.sort(np.asarray(pts, dtype=np.int64))) * float(tb)
        spread = float(steps.max() - steps.min())
        vfr = spread > max(_VFR_TOLERANCE_S, 0.05 * float(np.median(steps)))
    return _PacketScan(count, float(span), float(span + frame_duration), vfr)


# -- public API -------------------------------------------------------------------------------------


def probe_video(path: str, limits: IngestLimits | None = None) -> VideoProbe:
    """Inspect the video file at `path` (and check it against `limits`, if given).

    Order: file size (before opening; `video_too_large`), container (`invalid_video`), video stream and
    decoder (`unsupported_codec`), metadata pixels (`frame_too_large`) and duration (`video_too_long`),
    first frame decode (`no_frames` / `invalid_video`; gives the orientation and the real frame size),
    then a demux-only pass over the packets (frame count, exact duration, VFR flag; `video_too_long` again).

    Raises InvalidInput (400: invalid_video, no_frames), UnsupportedMediaType (415: unsupported_codec),
    PayloadTooLarge (413: video_too_large, video_too_long, frame_too_large).
    """
    size = _check_size(path, limits)
    with _open_video(path) as container:
        stream = _video_stream(container)
        format_name = container.format.name
        codec = getattr(stream.codec_context.codec, "canonical_name", None) or stream.codec_context.name
        if stream.width and stream.height:
            _check_pixels(stream.width, stream.height, limits)
        meta_duration = _stream_duration(stream)
        if meta_duration is not None:
            _check_duration(meta_duration, limits)
        meta_duration = meta_duration or _container_duration(container)
        fps = _stream_fps(stream)
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as exc:
            raise InvalidInput("the video stream could not be decoded", "invalid_video") from exc
        if first is None:
            raise InvalidInput("the video has no decodable frames", "no_frames")
        _check_pixels(first.width, first.height, limits)
        rotation, mirrored = _frame_orientation(first)
        stored_w, stored_h = first.width, first.height
    with _open_video(path) as container:
        stream = _video_stream(container)
        try:
            scan = _scan_packets(container, stream, fps, limits)
        except av.error.FFmpegError as exc:
            raise InvalidInput("the video file is corrupt", "invalid_video") from exc
    if scan.duration_s is not None:
        duration = scan.duration_s
    elif meta_duration is not None:
        duration = meta_duration
    else:
        duration = scan.count / fps if fps > 0 else 0.0
    _check_duration(duration, limits)
    if scan.last_timestamp_s is not None:
        last_ts = scan.last_timestamp_s
    else:
        last_ts = max(0.0, duration - (1 / fps if fps > 0 else 0.0))
    if fps <= 0:
        fps = (scan.count / duration) if duration > 0 else 1.0
    width, height = (stored_h, stored_w) if rotation in (90, 270) else (stored_w, stored_h)
    return VideoProbe(format_name=format_name, codec=codec, width=width, height=height, rotation=rotation,
                      mirrored=mirrored, duration_s=duration, last_timestamp_s=last_ts, source_fps=fps,
                      frame_count=max(scan.count, 1), variable_frame_rate=scan.variable_frame_rate,
                      size_bytes=size)


def _frame_cap(limits: IngestLimits, max_frames: int | None) -> int:
    if max_frames is None:
        return limits.max_frames
    if max_frames < 1:
        raise InvalidInput("max_frames must be >= 1", "invalid_max_frames")
    return min(limits.max_frames, max_frames)


def decode_frames(path: str, fps: float, limits: IngestLimits, max_frames: int | None = None
                  ) -> Generator[DecodedFrame, None, None]:
    """Stream processed frames of the video at `path`, sampled at `fps` by timestamp (module docstring).

    Yields at most min(limits.max_frames, max_frames) DecodedFrames in index order; holds one source frame
    (plus the decoder's own buffers), never the whole video. Closing the generator early (`close()`, or
    dropping it) stops decoding and closes the file. The orientation of the first frame applies to
    every frame; a frame whose size differs from the first (a mid-stream resolution change) is scaled to
    the first frame's size. Decoding uses FFmpeg's frame/slice threads (`thread_type = "AUTO"`).

    Raises InvalidInput (invalid_video, no_frames, invalid_fps), PayloadTooLarge (frame_too_large,
    video_too_long: timestamps beyond `limits.max_duration_s`). Call `probe_video` first for the other
    checks (file size, codec).
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise InvalidInput("fps must be a number > 0", "invalid_fps")
    cap = _frame_cap(limits, max_frames)
    with _open_video(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        default_step = Fraction(1 / _stream_fps(stream)) if _stream_fps(stream) > 0 else Fraction(1, 25)
        stream_tb = stream.time_base
        size = orientation = t0 = None
        last_time = Fraction(0)
        prev: tuple[int, float, av.VideoFrame] | None = None  # (source index, timestamp, frame)
        prev_rgb: np.ndarray | None = None
        out = 0
        source_index = -1

        def emit() -> DecodedFrame:
            nonlocal prev_rgb
            assert prev is not None and size is not None and orientation is not None
            if prev_rgb is None:
                frame = prev[2]
                if (frame.width, frame.height) == size:
                    rgb = frame.to_ndarray(format="rgb24")
                else:
                    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                prev_rgb = orient(rgb, *orientation)
                prev_rgb.setflags(write=False)
            return DecodedFrame(out, prev[0], prev[1], prev_rgb)

        try:
            for frame in container.decode(stream):
                if out >= cap:
                    break
                source_index += 1
                _check_pixels(frame.width, frame.height, limits)
                tb = frame.time_base or stream_tb
                if frame.pts is not None and tb is not None:
                    time = Fraction(frame.pts) * tb
                    if t0 is None:
                        t0 = time
                    time = max(time - t0, last_time)  # broken files: never step back in time
                else:
                    time = last_time + default_step if prev is not None else Fraction(0)
                last_time = time
                if size is None:
                    size, orientation = (frame.width, frame.height), _frame_orientation(frame)
                ts = float(time)
                _check_duration(ts, limits)
                while prev is not None and out < cap and out / fps + TIMESTAMP_EPS_S < ts:
                    yield emit()
                    out += 1
                prev, prev_rgb = (source_index, ts, frame), None
            while prev is not None and out < cap and out / fps <= prev[1] + TIMESTAMP_EPS_S:
                yield emit()
                out += 1
        except av.error.FFmpegError as exc:
            raise InvalidInput(f"decoding failed after {source_index + 1} frames: the video is corrupt",
                               "invalid_video") from exc
        if source_index < 0:
            raise InvalidInput("the video has no decodable frames", "no_frames")


def _encode_and_put(store: ArtifactStore, key: str, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {key}")
    store.put(key, buf.tobytes(), _JPEG)


def ingest_video(
    store: ArtifactStore,
    tenant: str,
    session_id: str,
    path: str,
    limits: IngestLimits,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> VideoMeta:
    """Probe and check the video at `path`, decode it at the processing fps and store the session's frames.

    fps: requested processing rate (None: the source rate); the result is
        `processing_fps(source_fps, duration_s, min(limits.max_frames, max_frames), fps)`.
    on_progress(done, total): called from this thread with (0, expected) first, then after each stored
        frame; `done` only grows and the last call is (num_frames, num_frames).

    Writes frame i as a JPEG (RGB, display orientation, `limits.jpeg_quality`) to
    `keys.session_frame_key(tenant, session_id, i)`, each exactly once, at most a few frames in flight,
    then the manifest (`VideoMeta.as_dict()` as JSON) to `session_frames_index_key`: its presence means
    every frame is stored. On an error, frames already written stay (the session's owner deletes them with
    the session). Raises what `probe_video` and `decode_frames` raise, and storage errors.
    """
    index_key = session_frames_index_key(tenant, session_id)  # validates tenant and session id first
    probe = probe_video(path, limits)
    cap = _frame_cap(limits, max_frames)
    proc_fps = processing_fps(probe.source_fps, probe.duration_s, cap, fps)
    expected = expected_frame_count(probe.last_timestamp_s, proc_fps, cap)
    timestamps: list[float] = []
    sources: list[int] = []
    size: tuple[int, int] | None = None
    done = 0
    reported = (0, expected)
    if on_progress is not None:
        on_progress(*reported)
    pending: deque[Future] = deque()

    def finish_oldest() -> None:
        nonlocal done, reported
        pending.popleft().result()
        done += 1
        reported = (done, max(expected, len(timestamps)))
        if on_progress is not None:
            on_progress(*reported)

    with ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="ingest-jpeg") as pool:
        try:
            for frame in decode_frames(path, proc_fps, limits, cap):
                size = (frame.rgb.shape[1], frame.rgb.shape[0])
                key = keys.session_frame_key(tenant, session_id, frame.index)
                pending.append(pool.submit(_encode_and_put, store, key, frame.rgb, limits.jpeg_quality))
                timestamps.append(frame.timestamp_s)
                sources.append(frame.source_index)
                while len(pending) >= _MAX_IN_FLIGHT:
                    finish_oldest()
            while pending:
                finish_oldest()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    if size is None:
        raise InvalidInput("the video has no decodable frames", "no_frames")
    n = len(timestamps)
    if on_progress is not None and reported != (n, n):
        on_progress(n, n)
    meta = VideoMeta(
        num_frames=n, fps=proc_fps, source_fps=probe.source_fps, width=size[0], height=size[1],
        duration_s=probe.duration_s, rotation=probe.rotation, mirrored=probe.mirrored, codec=probe.codec,
        format_name=probe.format_name, variable_frame_rate=probe.variable_frame_rate,
        source_frame_count=probe.frame_count, timestamps_s=tuple(timestamps), source_indices=tuple(sources),
    )
    store.put(index_key, json.dumps(meta.as_dict(), separators=(",", ":")).encode(), _JSON)
    return meta


def load_video_meta(store: ArtifactStore, tenant: str, session_id: str) -> VideoMeta:
    """The manifest written by `ingest_video`. Raises NotFound if the ingest has not completed."""
    return VideoMeta.from_dict(json.loads(store.get(session_frames_index_key(tenant, session_id)).data))
