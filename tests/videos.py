"""Synthetic test videos written with PyAV, with exact ground truth (pixels, masks, timestamps).

Reusable by unit and integration tests. Everything is deterministic and small (e.g. 24 frames of 160x120).

- `moving_shapes(n, h, w)`: uint8 RGB frames (n,h,w,3) of a red disc moving right (object 1) and a blue
  square moving down (object 2) on grey, with bool (n,h,w) masks per object, and a frame counter in the
  top-left corner that `read_counter` reads back, so a test can tell WHICH source frame a decoded frame is.
- `write_video(path, frames, fps, codec=..., rotation=..., pts=...)`: encode frames (container from the
  suffix: .mp4 .mkv .webm .mov .avi), constant frame rate or explicit VFR timestamps, optional display
  matrix (rotation / mirror), and return the exact presentation time of every frame in seconds.
- `make_video(path, ...)`: both in one call, returned as a `SyntheticVideo`.
- `requires_encoder(codec)`: a skip mark for codecs the installed PyAV wheel cannot encode.
- `write_audio_only`, `write_empty_video_track`: files for the error paths.

Frame counter: `COUNTER_BITS` blocks of 8x8 pixels in rows 0..7, block b covering columns 8b..8b+7,
white (255) where bit b (least significant first) of the frame index is 1, black (0) where it is 0.
8x8 blocks aligned to the codec's blocks survive lossy encoding and 4:2:0 chroma subsampling. The masks
are False under the counter.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import numpy as np
import pytest

COUNTER_BITS = 8  # up to 256 distinct frame indices
_BLOCK = 8

GREY = (128, 128, 128)
RED = (220, 30, 30)
BLUE = (30, 30, 220)

# Per-encoder settings: high quality so pixel checks stay tight, fast presets so tests stay cheap.
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "12", "preset": "veryfast", "bf": "2"},  # keeps B-frames: decode order != display order
    "libx265": {"crf": "12", "preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"crf": "8", "b": "1M", "deadline": "realtime", "cpu-used": "8"},
    "mpeg4": {"qscale": "2"},
    "libsvtav1": {"crf": "20", "preset": "12"},
}


def encoder_available(codec: str) -> bool:
    """True if the installed PyAV/FFmpeg build has an encoder named `codec`."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


def requires_encoder(codec: str) -> pytest.MarkDecorator:
    """`@requires_encoder("libvpx-vp9")`: skip (with the reason) when the PyAV wheel lacks the encoder."""
    return pytest.mark.skipif(not encoder_available(codec),
                              reason=f"the installed PyAV {av.__version__} wheel has no {codec!r} encoder")


# -- pixels -----------------------------------------------------------------------------------------


def draw_counter(frame: np.ndarray, index: int) -> None:
    """Draw `index` (0 <= index < 2**COUNTER_BITS) into rows 0..7 of `frame` (uint8 (H,W,3)), in place."""
    if not 0 <= index < 2**COUNTER_BITS:
        raise ValueError(f"counter index {index} out of range")
    if frame.shape[1] < COUNTER_BITS * _BLOCK or frame.shape[0] < 2 * _BLOCK:
        raise ValueError(f"frame {frame.shape[1]}x{frame.shape[0]} too small for the counter")
    for b in range(COUNTER_BITS):
        frame[:_BLOCK, b * _BLOCK:(b + 1) * _BLOCK] = 255 if (index >> b) & 1 else 0


def read_counter(rgb: np.ndarray) -> int:
    """The frame index drawn by `draw_counter`, read from a decoded uint8 (H,W,3) frame in its original
    (unrotated) orientation. Reads the centre 4x4 of each block, so codec ringing at the edges is ignored."""
    value = 0
    for b in range(COUNTER_BITS):
        block = rgb[2:_BLOCK - 2, b * _BLOCK + 2:(b + 1) * _BLOCK - 2]
        if float(block.mean()) > 128:
            value |= 1 << b
    return value


def moving_shapes(n: int = 24, h: int = 120, w: int = 160) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Frames uint8 (n,h,w,3) RGB and ground truth {1: bool (n,h,w) red disc, 2: bool (n,h,w) blue square}.

    Object 1, a red disc of radius 0.15h centred at y=0.35h, moves right from x=20 to x=w-20; object 2, a
    blue square of side h//5 at x=0.6w, moves down from y=10 to y=h-30 (SAM3_VIDEO.md section 5). Frame t
    carries the counter `t` (see the module docstring); the picture is asymmetric under every rotation and
    mirror, so orientation mistakes show.
    """
    if n < 1 or n > 2**COUNTER_BITS:
        raise ValueError(f"n must be in 1..{2**COUNTER_BITS}")
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((n, h, w, 3), np.uint8)
    gt = {1: np.zeros((n, h, w), bool), 2: np.zeros((n, h, w), bool)}
    side = h // 5
    for t in range(n):
        frac = t / (n - 1) if n > 1 else 0.0
        f = frames[t]
        f[:] = GREY
        cx = 20 + frac * (w - 40)
        gt[1][t] = (xx - cx) ** 2 + (yy - h * 0.35) ** 2 <= (h * 0.15) ** 2
        sy = 10 + frac * (h - 40)
        gt[2][t] = (xx >= w * 0.6) & (xx < w * 0.6 + side) & (yy >= sy) & (yy < sy + side)
        f[gt[1][t]] = RED
        f[gt[2][t]] = BLUE
        draw_counter(f, t)
        for mask in gt.values():
            mask[t, :_BLOCK, :COUNTER_BITS * _BLOCK] = False
    return frames, gt


# -- files ------------------------------------------------------------------------------------------


def write_video(
    path: str,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float = 12.0,
    *,
    codec: str = "libx264",
    rotation: int = 0,
    hflip: bool = False,
    vflip: bool = False,
    pts: Sequence[int] | None = None,
    time_base: Fraction = Fraction(1, 1000),
    options: dict[str, str] | None = None,
) -> list[float]:
    """Encode RGB uint8 (H,W,3) `frames` to `path` (the container follows the suffix); return timestamps.

    Constant frame rate by default (frame i at i/fps s). With `pts` (one int per frame, strictly
    increasing, in units of `time_base`), frame i is presented at pts[i]*time_base s: variable frame rate.
    `rotation` (counter-clockwise degrees) and `hflip`/`vflip` are written as the stream's display matrix
    (what phones do), so a correct reader shows `np.rot90(frame, rotation // 90)` (then mirrored). The
    pixels themselves are stored unrotated.

    Returns the presentation time of every frame in seconds relative to the first frame, as written
    (Matroska/WebM store milliseconds, so read-back times there are rounded to 1 ms).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("no frames")
    h, w = frames[0].shape[:2]
    rate = Fraction(fps).limit_denominator(100_000)
    if pts is None:
        tb, ticks = 1 / rate, list(range(len(frames)))
    else:
        if len(pts) != len(frames) or any(b <= a for a, b in zip(pts, pts[1:], strict=False)):
            raise ValueError("pts must be strictly increasing, one per frame")
        tb, ticks = time_base, list(pts)
    with av.open(path, "w") as container:
        stream = cast(av.video.stream.VideoStream, container.add_stream(
            codec, rate=rate, options={**_ENCODER_OPTIONS.get(codec, {}), **(options or {})}))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = tb
        stream.time_base = tb
        if codec not in _ENCODER_OPTIONS:
            stream.bit_rate = 4_000_000
        if rotation or hflip or vflip:
            stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for arr, tick in zip(frames, ticks, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr, np.uint8), format="rgb24")
            frame.pts, frame.time_base = tick, tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return [float((t - ticks[0]) * tb) for t in ticks]


@dataclass(frozen=True)
class SyntheticVideo:
    """A written test video and its ground truth (pixels and masks before encoding, unrotated)."""

    path: str
    frames: np.ndarray  # uint8 (n,h,w,3) RGB as encoded (stored orientation)
    gt: dict[int, np.ndarray]  # object id -> bool (n,h,w)
    timestamps_s: list[float]  # presentation time of each frame, seconds from the first frame
    rotation: int = 0  # display rotation written to the container, counter-clockwise degrees

    @property
    def displayed(self) -> np.ndarray:
        """The frames as a player shows them: uint8 (n,H,W,3) with the display rotation applied."""
        return np.ascontiguousarray(np.rot90(self.frames, self.rotation // 90, axes=(1, 2)))


def make_video(path: str, n: int = 24, h: int = 120, w: int = 160, fps: float = 12.0, *,
               codec: str = "libx264", rotation: int = 0, pts: Sequence[int] | None = None,
               time_base: Fraction = Fraction(1, 1000)) -> SyntheticVideo:
    """`moving_shapes(n, h, w)` written by `write_video`; see both."""
    frames, gt = moving_shapes(n, h, w)
    ts = write_video(path, frames, fps, codec=codec, rotation=rotation, pts=pts, time_base=time_base)
    return SyntheticVideo(path, frames, gt, ts, rotation)


def write_audio_only(path: str, seconds: float = 0.5, codec: str = "aac", rate: int = 16000) -> None:
    """A file with one audio stream (silence) and no video stream, e.g. `x.m4a` or `x.mkv`."""
    with av.open(path, "w") as container:
        stream = cast(av.audio.stream.AudioStream, container.add_stream(codec, rate=rate, layout="mono"))
        samples = stream.codec_context.frame_size or 1024
        for i in range(max(1, int(seconds * rate) // samples)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * samples
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_empty_video_track(path: str, w: int = 64, h: int = 48) -> None:
    """A Matroska file whose video stream has no packets (its audio stream carries the file): zero frames."""
    with av.open(path, "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=12)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        samples = audio.codec_context.frame_size or 1024
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * samples
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def png_bytes(w: int = 32, h: int = 24) -> bytes:
    """A small PNG image (FFmpeg opens it as a one-frame 'video': ingest must refuse it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(moving_shapes(1, max(h, 16), max(w, 64))[0][0]).save(buf, "PNG")
    return buf.getvalue()
