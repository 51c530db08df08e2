"""The tenant's media library: stored videos with names and probe facts, and storage usage by category.

    lib = VideoLibrary(store, tenant, cfg)
    entry, created = lib.add_file(path, name=None)   # probe (PyAV), store bytes + metadata + index marker
    entry = lib.get(video_id); entries, cursor = lib.list(limit, cursor)
    entry = lib.rename(video_id, name); lib.delete(video_id, force=False)
    usage = storage_usage(store, tenant)         # StorageUsage by category

Keys (serve_app.storage.keys):

    t/{tenant}/videos/{sha256}                 the video's bytes, content-addressed (shared with video sessions)
    t/{tenant}/videos-meta/{sha256}.json       its library metadata (`VideoMeta` below), JSON
    t/{tenant}/videos-index/{inv ms}-{sha256}  empty marker: lists the library newest first

A video is IN THE LIBRARY when its metadata object exists. A session created from a multipart upload, an
upload id or a url registers its video here (`VideoSessions.create` calls `add_file` with the ingest's
metadata). Bytes without metadata (stored by an older version, or a registration cut short) answer
GET /v1/videos/{id} with 404 video_not_found until POST /v1/videos names them by `video_id`; sessions can
still be created from them by `video_id`.

Invariants and failure handling:
- Ids are the sha256 of the bytes, so a second upload of the same file finds the metadata and returns the
  existing entry (`created` False) with its original `created_at` and name (a name given then is NOT applied:
  rename with PATCH).
- `add_file` probes the file (sessions.ingest.probe_video, with the session ingest limits) BEFORE anything is
  stored: invalid videos get the probe's 400/413/415 and leave nothing behind.
- Order of writes: bytes (create-if-absent), index marker, then metadata (create-if-absent). A marker whose
  metadata is missing, or does not name the marker's time (a registration that lost a race), is skipped by
  `list`; a re-registration of a listed id rewrites its marker, so an interrupted one is repaired.
- `delete` removes the marker, the metadata, then the bytes; a delete interrupted after the metadata is gone
  finishes on retry (bytes without metadata still count as "exists" for DELETE).
- Renames are conditional writes on the metadata's ETag (If-Match), retried a few times.

Every method blocks (storage I/O, PyAV): call them through `asyncio.to_thread` / `pools.run_io`. No torch here.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from serve_app.config import AppConfig
from serve_app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from serve_app.schemas import MAX_MEDIA_NAME_CHARS, StorageUsage, UsageCount, VideoEntry
from serve_app.sessions.ingest import IngestLimits, VideoProbe, probe_video
from serve_app.sessions.ingest import VideoMeta as IngestMeta
from serve_app.sessions.records import SessionStore
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

_JSON = "application/json"
_READ_THREADS = 8  # metadata reads of one listing page, and usage listings, at once
_RENAME_ATTEMPTS = 5
_LIST_PAGE = 1000
_MAX_EXAMINED_FACTOR = 10  # a listing reads at most limit * this many markers per call (skipped ones included)
_VIDEO_CURSOR = re.compile(r"[0-9a-f]{12}-[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def default_video_name(video_id: str) -> str:
    return f"video-{video_id[:12]}"


def sanitize_name(raw: str | None) -> str | None:
    """A client file name as a display name: printable characters only (others dropped), surrounding whitespace
    stripped, at most 128 characters; None when nothing is left."""
    if not raw:
        return None
    kept = "".join(c for c in raw if c.isprintable()).strip()[:MAX_MEDIA_NAME_CHARS].strip()
    return kept or None


def file_sha256(path: str) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class VideoMeta:
    """The metadata object of a library video (`videos-meta/{id}.json`). `created_ms`: milliseconds since the
    epoch when it entered the library (its index marker is `videos-index/{inverted created_ms}-{id}`)."""

    video_id: str
    name: str
    size_bytes: int
    width: int
    height: int
    duration_s: float
    fps: float
    num_frames: int | None
    codec: str | None
    format_name: str | None
    created_ms: int
    created_at: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VideoMeta:
        raw = json.loads(data)
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})

    def entry(self) -> VideoEntry:
        return VideoEntry(video_id=self.video_id, name=self.name, size_bytes=self.size_bytes, width=self.width,
                          height=self.height, duration_s=self.duration_s, fps=self.fps, num_frames=self.num_frames,
                          codec=self.codec, created_at=self.created_at)


def ingest_limits(cfg: AppConfig) -> IngestLimits:
    """The session ingest's limits (video.limits): the library accepts exactly what a session can ingest."""
    limits = cfg.video.limits
    return IngestLimits(limits.max_video_bytes, limits.max_duration_s, limits.max_frame_pixels, limits.max_frames)


class VideoLibrary:
    """The video library of one tenant (see the module docstring)."""

    def __init__(self, store: ArtifactStore, tenant: str, cfg: AppConfig):
        self.store = store
        self.tenant = keys.validate_tenant(tenant)
        self.limits = ingest_limits(cfg)

    # -- add ---------------------------------------------------------------------------------------

    def add_file(self, path: str, name: str | None = None,
                 probe: VideoProbe | IngestMeta | None = None) -> tuple[VideoEntry, bool]:
        """Register the video file at `path`; returns (entry, created).

        `name`: display name, passed through `sanitize_name` (None or nothing printable: "video-{id[:12]}").
        `probe`: what the caller already learned about THIS file (a `VideoProbe` from probe_video, or the
        `VideoMeta` manifest of ingest_video) to skip a second probe; None probes it here with the ingest limits
        (raises the probe's InvalidInput / UnsupportedMediaType / PayloadTooLarge before anything is stored).
        Already in the library (same sha256): the stored entry and False, name and created_at unchanged.
        Raises Unavailable when storage is down.
        """
        video_id, size = file_sha256(path)
        existing = self._read_meta(video_id)
        if existing is not None:
            self._put_marker(existing[0].created_ms, video_id)  # repairs a registration interrupted before it
            return existing[0].entry(), False
        facts = _facts(probe if probe is not None else probe_video(path, self.limits))
        self._put_bytes(path, video_id)
        created_ms = int(time.time() * 1000)
        meta = VideoMeta(video_id=video_id, name=sanitize_name(name) or default_video_name(video_id), size_bytes=size,
                         created_ms=created_ms, created_at=_iso(created_ms), **facts)
        marker = keys.video_index_key(self.tenant, created_ms, video_id)
        self.store.put(marker, b"", "application/octet-stream")
        try:
            self.store.put(keys.video_meta_key(self.tenant, video_id), meta.to_bytes(), _JSON, if_none_match=True)
        except PreconditionFailed:  # registered concurrently (or our write landed and its response was lost)
            self.store.delete(marker)
            winner = self._read_meta(video_id)
            if winner is None:  # deleted again meanwhile: ours lost the race to a delete; report it as gone
                raise NotFound(f"video {video_id} was deleted while it was being added", "video_not_found") from None
            if winner[0] == meta:
                self.store.put(marker, b"", "application/octet-stream")
                return meta.entry(), True
            return winner[0].entry(), False
        return meta.entry(), True

    def _put_bytes(self, path: str, video_id: str) -> None:
        key = keys.video_key(self.tenant, video_id)
        try:
            self.store.head(key)
            return  # stored already (a session create, or an earlier upload): same sha256, same bytes
        except NotFound:
            pass
        with open(path, "rb") as f:
            data = f.read()
        try:
            self.store.put(key, data, "application/octet-stream", if_none_match=True)
        except PreconditionFailed:
            pass

    def _put_marker(self, created_ms: int, video_id: str) -> None:
        self.store.put(keys.video_index_key(self.tenant, created_ms, video_id), b"", "application/octet-stream")

    # -- read --------------------------------------------------------------------------------------

    def _read_meta(self, video_id: str) -> tuple[VideoMeta, str] | None:
        """(metadata, ETag), or None when the video is not in the library. InvalidInput for a bad id."""
        try:
            blob = self.store.get(keys.video_meta_key(self.tenant, video_id))
        except NotFound:
            return None
        return VideoMeta.from_bytes(blob.data), blob.etag

    def get(self, video_id: str) -> VideoEntry:
        """The library entry. NotFound video_not_found (also for stored bytes not registered yet)."""
        found = self._read_meta(video_id)
        if found is None:
            raise NotFound(f"no video {video_id} in the library", "video_not_found")
        return found[0].entry()

    def list(self, limit: int = 50, cursor: str | None = None) -> tuple[list[VideoEntry], str | None]:
        """Newest first: up to `limit` entries after `cursor` (a previous page's `next_cursor`), and the next
        cursor (None at the end). Markers without matching metadata are skipped; at most limit*10 markers are
        read per call, so a page may hold fewer entries while the cursor says there may be more."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", "invalid_limit")
        if cursor is not None and not (isinstance(cursor, str) and _VIDEO_CURSOR.fullmatch(cursor)):
            raise InvalidInput("cursor must be a next_cursor returned by GET /v1/videos", "invalid_cursor")
        prefix = keys.videos_index_prefix(self.tenant)
        start_after = prefix + cursor if cursor is not None else None
        found: list[VideoEntry] = []
        examined = 0
        page_size = min(_LIST_PAGE, limit + 1)
        with ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="video-list") as pool:
            while True:
                page = self.store.list(prefix, start_after=start_after, limit=page_size)
                metas = list(pool.map(self._marker_meta, [info.key[len(prefix):] for info in page]))
                for i, (info, meta) in enumerate(zip(page, metas)):
                    start_after = info.key
                    examined += 1
                    if meta is not None:
                        found.append(meta.entry())
                    if len(found) == limit or examined >= limit * _MAX_EXAMINED_FACTOR:
                        more = i + 1 < len(page) or bool(self.store.list(prefix, start_after=info.key, limit=1))
                        return found, (info.key[len(prefix):] if more else None)
                if len(page) < page_size:
                    return found, None

    def _marker_meta(self, segment: str) -> VideoMeta | None:
        """The metadata a marker `{inv ms}-{id}` points to, if it exists and names this marker."""
        if not _VIDEO_CURSOR.fullmatch(segment):
            return None
        video_id = segment[13:]
        found = self._read_meta(video_id)
        if found is None:
            return None
        meta = found[0]
        if keys.video_index_key(self.tenant, meta.created_ms, video_id).rsplit("/", 1)[-1] != segment:
            return None  # a marker left by a registration that lost a race
        return meta

    # -- change ------------------------------------------------------------------------------------

    def rename(self, video_id: str, name: str) -> VideoEntry:
        """Set the display name (If-Match on the metadata's ETag, retried on a lost race). NotFound
        video_not_found; Conflict video_busy when it kept changing."""
        for _ in range(_RENAME_ATTEMPTS):
            found = self._read_meta(video_id)
            if found is None:
                raise NotFound(f"no video {video_id} in the library", "video_not_found")
            meta, etag = found
            if meta.name == name:
                return meta.entry()
            new = VideoMeta(**{**asdict(meta), "name": name})
            try:
                self.store.put(keys.video_meta_key(self.tenant, video_id), new.to_bytes(), _JSON, if_match=etag)
                return new.entry()
            except PreconditionFailed:
                continue
        raise Conflict(f"video {video_id} kept changing while being renamed; retry", "video_busy")

    def sessions_using(self, video_id: str) -> builtins.list[str]:
        """Ids of the LIVE sessions (ingesting, ready, parked) whose source is `video_id` (every session is read)."""
        sessions = SessionStore(self.store, self.tenant)
        using: builtins.list[str] = []
        cursor: str | None = None
        while True:
            records, cursor = sessions.list(limit=1000, cursor=cursor)
            using += [r.session_id for r in records
                      if r.live and r.source is not None and r.source.video_id == video_id]
            if cursor is None:
                return using

    def delete(self, video_id: str, force: bool = False) -> None:
        """Delete the video's bytes, metadata and marker. Conflict video_in_use (the session ids in the
        message) while a live session uses it, unless `force` (the sessions keep working: their frames are
        their own). NotFound video_not_found when neither metadata nor bytes exist."""
        video_key = keys.video_key(self.tenant, video_id)
        found = self._read_meta(video_id)
        if found is None:
            try:
                self.store.head(video_key)
            except NotFound:
                raise NotFound(f"no video {video_id}", "video_not_found") from None
        if not force:
            using = self.sessions_using(video_id)
            if using:
                shown = ", ".join(using[:20]) + (f" and {len(using) - 20} more" if len(using) > 20 else "")
                raise Conflict(f"video {video_id} is used by live sessions {shown}: delete them first, or pass "
                               "force=true", "video_in_use")
        if found is not None:
            self.store.delete(keys.video_index_key(self.tenant, found[0].created_ms, video_id))
            self.store.delete(keys.video_meta_key(self.tenant, video_id))
        self.store.delete(video_key)


def _facts(probe: VideoProbe | IngestMeta) -> dict[str, Any]:
    """The metadata fields a probe (or an ingest manifest) gives."""
    if isinstance(probe, VideoProbe):
        return {"width": probe.width, "height": probe.height, "duration_s": probe.duration_s,
                "fps": probe.source_fps, "num_frames": probe.frame_count or None, "codec": probe.codec or None,
                "format_name": probe.format_name or None}
    return {"width": probe.width, "height": probe.height, "duration_s": probe.duration_s, "fps": probe.source_fps,
            "num_frames": probe.source_frame_count or None, "codec": probe.codec or None,
            "format_name": probe.format_name or None}


# -- usage ----------------------------------------------------------------------------------------------

# category -> the tenant's top-level prefixes it covers (each listed on its own: never across sibling names)
USAGE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "images": ("images/",),
    "videos": ("videos/", "videos-meta/", "videos-index/"),
    "sessions": ("sessions/", "sessions-index/"),
    "jobs": ("jobs/", "jobs-active/", "jobs-idem/"),
    "results": ("results/",),
    "exports": ("exports/",),
    "uploads": ("uploads/",),
    "other": ("quarantine/",),
}


def storage_usage(store: ArtifactStore, tenant: str) -> StorageUsage:
    """Bytes and object counts of `tenant`'s objects by category (`store.usage` lists every object: the cost
    grows with their number, one storage request per 1000 objects; the prefixes are listed concurrently)."""
    head = keys.tenant_prefix(tenant)
    prefixes = [p for ps in USAGE_CATEGORIES.values() for p in ps]
    with ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="storage-usage") as pool:
        measured = dict(zip(prefixes, pool.map(lambda p: store.usage(head + p), prefixes)))  # (objects, bytes)
    counts = {name: UsageCount(bytes=sum(measured[p][1] for p in ps), objects=sum(measured[p][0] for p in ps))
              for name, ps in USAGE_CATEGORIES.items()}
    total = UsageCount(bytes=sum(c.bytes for c in counts.values()), objects=sum(c.objects for c in counts.values()))
    return StorageUsage(tenant=tenant, total=total, **counts)
