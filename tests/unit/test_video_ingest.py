"""Video ingest (serve_app.sessions.ingest) on real files written by PyAV (tests/videos.py).

Every check is on contents: which source frame each processed frame shows (the frame counter drawn into
the pixels), exact timestamps, orientation, stored JPEG pixels, the manifest, and the error codes.
"""

from __future__ import annotations

import json
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from serve_app.config import StorageConfig
from serve_app.errors import InvalidInput, PayloadTooLarge, Sam3Error, UnsupportedMediaType
from serve_app.sessions import ingest
from serve_app.sessions.ingest import (
    IngestLimits,
    VideoMeta,
    decode_frames,
    expected_frame_count,
    ingest_video,
    load_video_meta,
    orientation_from_display_matrix,
    probe_video,
    processing_fps,
    session_frames_index_key,
)
from serve_app.storage import keys
from serve_app.storage.local import LocalStore
from tests.videos import (
    make_video,
    moving_shapes,
    png_bytes,
    read_counter,
    requires_encoder,
    write_audio_only,
    write_empty_video_track,
    write_video,
)

pytestmark = pytest.mark.unit

LIMITS = IngestLimits(max_video_bytes=10_000_000, max_duration_s=60, max_frame_pixels=1_000_000, max_frames=500)
TENANT, SID = "default", "s-1"


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(StorageConfig(uri=f"file://{tmp_path}/store"))


@pytest.fixture(scope="module")
def cfr_mp4(tmp_path_factory):
    """24 frames, 160x120, 12 fps, H.264 with B-frames in MP4."""
    return make_video(str(tmp_path_factory.mktemp("cfr") / "v.mp4"))


def stored_frame(store: LocalStore, i: int) -> np.ndarray:
    blob = store.get(keys.session_frame_key(TENANT, SID, i))
    assert blob.content_type == "image/jpeg"
    bgr = cv2.imdecode(np.frombuffer(blob.data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "stored frame is not a decodable JPEG"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def reference_selection(source_times: list[float], fps: float, cap: int) -> list[int]:
    """Independent reference: target i/fps -> index of the latest source time <= target (+1 ms)."""
    out = []
    i = 0
    while i < cap and i / fps <= source_times[-1] + 1e-3:
        out.append(max(j for j, t in enumerate(source_times) if t <= i / fps + 1e-3))
        i += 1
    return out


def raw_decode(path: str) -> list[np.ndarray]:
    """Every frame as stored (no display matrix applied), straight from PyAV."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# -- containers and codecs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "suffix", "codec_name", "ts_tol"), [
    pytest.param("libx264", "mp4", "h264", 1e-9, marks=requires_encoder("libx264")),
    pytest.param("mpeg4", "mp4", "mpeg4", 1e-9, marks=requires_encoder("mpeg4")),
    pytest.param("libvpx-vp9", "webm", "vp9", 1e-3, marks=requires_encoder("libvpx-vp9")),
    pytest.param("libx264", "mkv", "h264", 1e-3, marks=requires_encoder("libx264")),  # Matroska: 1 ms pts
])
def test_ingest_each_container(tmp_path, store, codec, suffix, codec_name, ts_tol):
    video = make_video(str(tmp_path / f"v.{suffix}"), codec=codec)
    progress: list[tuple[int, int]] = []
    meta = ingest_video(store, TENANT, SID, video.path, LIMITS, on_progress=lambda d, t: progress.append((d, t)))

    assert (meta.num_frames, meta.width, meta.height, meta.rotation) == (24, 160, 120, 0)
    assert meta.codec == codec_name and meta.fps == pytest.approx(12.0) and meta.source_fps == pytest.approx(12.0)
    assert meta.duration_s == pytest.approx(2.0, abs=2e-3) and meta.variable_frame_rate is False
    assert meta.source_indices == tuple(range(24))
    assert meta.timestamps_s == pytest.approx([i / 12 for i in range(24)], abs=ts_tol)
    for i in range(24):
        rgb = stored_frame(store, i)
        assert rgb.shape == (120, 160, 3)
        assert read_counter(rgb) == i
        assert np.abs(rgb.astype(int) - video.frames[i]).mean() < 4.0  # codec + JPEG q90 error
    assert not store.list(keys.session_frame_key(TENANT, SID, 24))  # nothing beyond the last frame

    # progress: starts at (0, expected), done only grows, ends at (n, n)
    assert progress[0] == (0, 24) and progress[-1] == (24, 24)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)

    # manifest: written, JSON, round-trips
    blob = store.get(session_frames_index_key(TENANT, SID))
    assert blob.content_type == "application/json"
    manifest = json.loads(blob.data)
    assert manifest["version"] == 1 and manifest["num_frames"] == 24 and manifest["codec"] == codec_name
    assert manifest["timestamps_s"] == list(meta.timestamps_s) and manifest["source_indices"] == list(range(24))
    assert {"fps", "source_fps", "width", "height", "duration_s", "rotation"} <= manifest.keys()
    assert VideoMeta.from_dict(manifest) == meta == load_video_meta(store, TENANT, SID)


def test_manifest_key_and_from_dict_checks():
    assert session_frames_index_key("acme", "s_1") == "t/acme/sessions/s_1/frames/index.json"
    with pytest.raises(InvalidInput):
        session_frames_index_key("acme", "../x")
    meta = VideoMeta(2, 1.0, 1.0, 4, 3, 2.0, 0, False, "h264", "mp4", None, 2, (0.0, 1.0), (0, 1))
    assert VideoMeta.from_dict({**meta.as_dict(), "future_field": 1}) == meta
    with pytest.raises(ValueError, match="lacks"):
        VideoMeta.from_dict({k: v for k, v in meta.as_dict().items() if k != "fps"})
    with pytest.raises(ValueError, match="disagree"):
        VideoMeta.from_dict({**meta.as_dict(), "num_frames": 3})


# -- frame selection by timestamp -----------------------------------------------------------------------


def test_requested_fps_picks_frames_by_timestamp(cfr_mp4, store):
    meta = ingest_video(store, TENANT, SID, cfr_mp4.path, LIMITS, fps=5)
    expected = [int(Fraction(i, 5) * 12) for i in range(10)]  # floor(i/5 s * 12 fps): 0, 2, 4, 7, 9, ...
    assert meta.fps == 5 and meta.num_frames == 10
    assert list(meta.source_indices) == expected
    assert meta.timestamps_s == pytest.approx([s / 12 for s in expected], abs=1e-9)
    assert [read_counter(stored_frame(store, i)) for i in range(10)] == expected


def test_requested_fps_above_source_is_capped(cfr_mp4):
    frames = list(decode_frames(cfr_mp4.path, processing_fps(12.0, 2.0, 500, 100.0), LIMITS))
    assert [f.source_index for f in frames] == list(range(24))


def test_max_frames_lowers_fps(cfr_mp4, store):
    limits = IngestLimits(10_000_000, 60, 1_000_000, max_frames=6)
    meta = ingest_video(store, TENANT, SID, cfr_mp4.path, limits)
    assert meta.fps == pytest.approx(3.0)  # 6 frames over 2 s
    assert list(meta.source_indices) == [0, 4, 8, 12, 16, 20]
    assert [read_counter(stored_frame(store, i)) for i in range(6)] == [0, 4, 8, 12, 16, 20]
    # the per-call max_frames can only lower the limit
    meta = ingest_video(store, TENANT, "s-2", cfr_mp4.path, limits, max_frames=4)
    assert meta.fps == pytest.approx(2.0) and list(meta.source_indices) == [0, 6, 12, 18]
    meta = ingest_video(store, TENANT, "s-3", cfr_mp4.path, limits, max_frames=100, fps=12)
    assert meta.num_frames == 6
    with pytest.raises(InvalidInput) as e:
        ingest_video(store, TENANT, "s-4", cfr_mp4.path, limits, max_frames=0)
    assert e.value.code == "invalid_max_frames"


def test_decode_frames_never_exceeds_max_frames(cfr_mp4):
    frames = list(decode_frames(cfr_mp4.path, 12.0, LIMITS, max_frames=5))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4] and [f.source_index for f in frames] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
@pytest.mark.parametrize("fps", [None, 10.0, 4.0, 25.0])
def test_variable_frame_rate(tmp_path, suffix, fps):
    pts_ms = [0, 40, 90, 200, 210, 220, 400, 700, 710, 1000, 1033, 1066, 1500, 1540]
    video = make_video(str(tmp_path / f"vfr.{suffix}"), n=len(pts_ms), h=48, w=64, pts=pts_ms)
    assert video.timestamps_s == [t / 1000 for t in pts_ms]
    probe = probe_video(video.path, LIMITS)
    assert probe.variable_frame_rate is True and probe.frame_count == len(pts_ms)
    assert probe.last_timestamp_s == pytest.approx(1.54, abs=1e-9)
    proc_fps = processing_fps(probe.source_fps, probe.duration_s, LIMITS.max_frames, fps)
    frames = list(decode_frames(video.path, proc_fps, LIMITS))
    expected = reference_selection(video.timestamps_s, proc_fps, LIMITS.max_frames)
    assert len(frames) == len(expected) == expected_frame_count(probe.last_timestamp_s, proc_fps, LIMITS.max_frames)
    assert [f.source_index for f in frames] == expected
    assert [read_counter(f.rgb) for f in frames] == expected  # the pixels really are those source frames
    assert [f.timestamp_s for f in frames] == pytest.approx([pts_ms[s] / 1000 for s in expected], abs=1e-9)


def test_decode_frames_streams_and_shares_repeated_frames(cfr_mp4):
    gen = decode_frames(cfr_mp4.path, 24.0, LIMITS)  # 2x the source rate is what a caller may ask
    first, second, third = next(gen), next(gen), next(gen)
    gen.close()  # stops decoding and closes the file
    assert (first.source_index, second.source_index, third.source_index) == (0, 0, 1)
    assert second.rgb is first.rgb and not first.rgb.flags.writeable
    assert first.rgb.dtype == np.uint8 and first.rgb.shape == (120, 160, 3)


def test_processing_fps_and_expected_count():
    assert processing_fps(30.0, 10.0, 1000) == 30.0
    assert processing_fps(30.0, 10.0, 100) == 10.0
    assert processing_fps(30.0, 10.0, 1000, requested_fps=6.0) == 6.0
    assert processing_fps(30.0, 10.0, 100, requested_fps=60.0) == 10.0
    assert processing_fps(30.0, 0.0, 100) == 30.0  # a single-frame video has no duration term
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidInput) as e:
            processing_fps(30.0, 10.0, 100, requested_fps=bad)
        assert e.value.code == "invalid_fps"
    assert expected_frame_count(23 / 12, 12.0, 1000) == 24
    assert expected_frame_count(23 / 12, 5.0, 1000) == 10
    assert expected_frame_count(23 / 12, 12.0, 7) == 7
    assert expected_frame_count(0.0, 12.0, 10) == 1


# -- orientation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_applied(tmp_path, store, rotation):
    video = make_video(str(tmp_path / "rot.mp4"), n=6, h=48, w=64, rotation=rotation)
    probe = probe_video(video.path, LIMITS)
    swapped = rotation in (90, 270)
    assert (probe.rotation, probe.mirrored) == (rotation, False)
    assert (probe.width, probe.height) == ((48, 64) if swapped else (64, 48))

    meta = ingest_video(store, TENANT, SID, video.path, LIMITS)
    assert (meta.width, meta.height, meta.rotation) == (probe.width, probe.height, rotation)
    raw = raw_decode(video.path)
    k = rotation // 90
    for f, raw_frame in zip(decode_frames(video.path, 12.0, LIMITS), raw, strict=True):
        assert f.rgb.shape == ((64, 48, 3) if swapped else (48, 64, 3))
        assert np.array_equal(f.rgb, np.rot90(raw_frame, k))  # exact: same decoder, only the rotation differs
        assert np.abs(f.rgb.astype(int) - np.rot90(video.frames[f.source_index], k)).mean() < 3.0
        assert read_counter(np.rot90(f.rgb, -k)) == f.source_index
    jpeg = stored_frame(store, 2)
    assert jpeg.shape == np.rot90(video.frames[2], k).shape
    assert np.abs(jpeg.astype(int) - np.rot90(video.frames[2], k)).mean() < 4.0


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize(("hflip", "vflip"), [(False, False), (True, False), (False, True), (True, True)])
def test_display_matrix_with_mirror(tmp_path, rotation, hflip, vflip):
    """All 16 rotation/mirror display matrices PyAV writes decode to what the writer meant (rotate ccw,
    then mirror), the same as FFmpeg's own autorotate."""
    path = str(tmp_path / "m.mkv")
    frames, _ = moving_shapes(2, 48, 64)
    write_video(path, frames, codec="mpeg4", rotation=rotation, hflip=hflip, vflip=vflip)
    raw = raw_decode(path)[0]
    expected = np.rot90(raw, rotation // 90)
    if hflip:
        expected = expected[:, ::-1]
    if vflip:
        expected = expected[::-1]
    got = next(decode_frames(path, 12.0, LIMITS)).rgb
    assert np.array_equal(got, expected)
    probe = probe_video(path, LIMITS)
    assert (probe.width, probe.height) == (expected.shape[1], expected.shape[0])


def test_orientation_from_display_matrix_edge_cases():
    assert orientation_from_display_matrix(None) == (0, False)
    assert orientation_from_display_matrix([0] * 9) == (0, False)
    one = 1 << 16
    assert orientation_from_display_matrix([0, -one, 0, one, 0, 0, 0, 0, 1 << 30]) == (90, False)
    # a 80-degree matrix snaps to the nearest quarter turn
    c, s = int(one * np.cos(np.radians(80))), int(one * np.sin(np.radians(80)))
    assert orientation_from_display_matrix([c, -s, 0, s, c, 0, 0, 0, 1 << 30]) == (90, False)


# -- errors ---------------------------------------------------------------------------------------------


def _expect(exc_type: type[Sam3Error], code: str, status: int, path: str, store: LocalStore,
            limits: IngestLimits = LIMITS) -> None:
    with pytest.raises(exc_type) as e:
        probe_video(path, limits)
    assert (e.value.code, e.value.status_code) == (code, status)
    with pytest.raises(exc_type) as e:
        ingest_video(store, TENANT, SID, path, limits)
    assert (e.value.code, e.value.status_code) == (code, status)
    assert store.list(keys.session_prefix(TENANT, SID)) == []  # nothing stored for a refused video


def _file(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(("name", "data"), [
    ("random.mp4", np.random.RandomState(0).randint(0, 256, 20_000, dtype=np.uint8).tobytes()),
    ("image.png", png_bytes()),
    ("empty.mp4", b""),
    ("text.mp4", b"hello, not a video\n" * 50),
])
def test_not_a_video(tmp_path, store, name, data):
    _expect(InvalidInput, "invalid_video", 400, _file(tmp_path, name, data), store)


def test_truncated_mp4(tmp_path, store, cfr_mp4):
    data = open(cfr_mp4.path, "rb").read()
    _expect(InvalidInput, "invalid_video", 400, _file(tmp_path, "head.mp4", data[: len(data) // 2]), store)


def test_playlist_cannot_pull_in_other_files(tmp_path, store, cfr_mp4):
    """An HLS playlist naming a local file must not be followed (FFmpeg would otherwise read it)."""
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{cfr_mp4.path}\n#EXT-X-ENDLIST\n".encode()
    _expect(InvalidInput, "invalid_video", 400, _file(tmp_path, "list.m3u8", playlist), store)


def test_audio_only(tmp_path, store):
    path = str(tmp_path / "a.m4a")
    write_audio_only(path)
    _expect(UnsupportedMediaType, "unsupported_codec", 415, path, store)


@requires_encoder("libx264")
def test_unknown_codec(tmp_path, store):
    path = str(tmp_path / "v.mkv")
    make_video(path, n=4, h=48, w=64)
    data = open(path, "rb").read()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    _expect(UnsupportedMediaType, "unsupported_codec", 415,
            _file(tmp_path, "unknown.mkv", data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC")), store)


def test_video_track_without_frames(tmp_path, store):
    path = str(tmp_path / "empty-track.mkv")
    write_empty_video_track(path)
    _expect(InvalidInput, "no_frames", 400, path, store)


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])  # MP4 states the stream duration; Matroska does not
def test_too_long(tmp_path, store, suffix):
    path = make_video(str(tmp_path / f"v.{suffix}"), h=48, w=64).path
    _expect(PayloadTooLarge, "video_too_long", 413, path, store,
            IngestLimits(10_000_000, max_duration_s=1.5, max_frame_pixels=1_000_000, max_frames=500))
    probe_video(path, IngestLimits(10_000_000, 2.0, 1_000_000, 500))  # exactly at the limit is fine


def test_too_big_is_checked_before_opening(tmp_path, store, cfr_mp4):
    small = IngestLimits(max_video_bytes=1000, max_duration_s=60, max_frame_pixels=1_000_000, max_frames=500)
    _expect(PayloadTooLarge, "video_too_large", 413, cfr_mp4.path, store, small)
    _expect(PayloadTooLarge, "video_too_large", 413, _file(tmp_path, "junk", b"\0" * 1001), store, small)


def test_too_many_pixels(store, cfr_mp4):
    limits = IngestLimits(10_000_000, 60, max_frame_pixels=160 * 120 - 1, max_frames=500)
    _expect(PayloadTooLarge, "frame_too_large", 413, cfr_mp4.path, store, limits)
    with pytest.raises(PayloadTooLarge) as e:
        next(decode_frames(cfr_mp4.path, 12.0, limits))
    assert e.value.code == "frame_too_large"


def test_bad_ids_fail_before_any_work(store, cfr_mp4):
    with pytest.raises(InvalidInput) as e:
        ingest_video(store, TENANT, "../other", cfr_mp4.path, LIMITS)
    assert e.value.code == "invalid_session_id"


def test_limits_validate():
    with pytest.raises(ValueError):
        IngestLimits(0, 60, 100, 10)
    with pytest.raises(ValueError):
        IngestLimits(10, 60, 100, 10, jpeg_quality=0)
    assert IngestLimits(10, 60, 100, 10).jpeg_quality == 90


def test_module_stays_off_ray_fastapi_torch():
    source = open(ingest.__file__).read()
    for banned in ("import ray", "from ray", "fastapi", "import torch", "from torch"):
        assert banned not in source
