"""Video sessions on a CPU replica: ingest, prompts, streamed propagation, playback (no torch here).

    sessions = VideoSessions(manager_handle, store, images, cfg)
    record = await sessions.create(path, source, options)            # PyAV ingest -> JPEG frames in storage
    response = await sessions.prompt(sid, VideoPromptRequest, rid)    # -> the frame's objects (RLE)
    async for message in sessions.propagate(sid, PropagateRequest, rid): ...   # one dict per frame

The SessionManager deployment owns the records and says which named actor owns a session
(`acquire`); this module calls that actor directly. When the actor has died, the manager is told
(`lost`) and the call is retried once on the rebuilt actor (the response then says `rebuilt: true`).
Masks cross from the actor as low-res logits; upsampling and RLE run here, and every computed frame is
stored (`t/{tenant}/sessions/{sid}/masks/{i:06d}.json`) so playback and exports never need the actor. During
a propagation the stores run behind the stream (a frame is sent as soon as it is encoded); the final
message says how many were stored.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from serve_app.codecs.masks import encode_mask
from serve_app.config import AppConfig
from serve_app.errors import InvalidInput, NotFound, PayloadTooLarge, Sam3Error, Unavailable
from serve_app.model.video_types import VideoFrameResult
from serve_app.pipelines.image_library import check_url_allowed, parse_s3_url
from serve_app.pipelines.media_library import VideoLibrary, ingest_limits
from serve_app.pipelines.pools import run_cpu, run_io
from serve_app.pipelines.remote import translate_handle_error
from serve_app.schemas import (
    FrameResult,
    MasksResponse,
    PropagateRequest,
    RleMask,
    SessionOptionsIn,
    SessionView,
    VideoObject,
    VideoPromptRequest,
    VideoPromptResponse,
    VideoRef,
)
from serve_app.sessions.ingest import ingest_video
from serve_app.sessions.records import SessionOptions, SessionRecord, SessionSource, VideoInfo
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

log = logging.getLogger("serve_app.ingress")

_PROGRESS_EVERY = 25  # frames between ingest progress updates of the record
_WRITES_IN_FLIGHT = 8  # propagated frames being stored at once per ingress replica


def session_view(record: SessionRecord) -> SessionView:
    v = record.video
    return SessionView(
        session_id=record.session_id, state=record.state,
        num_frames=v.num_frames if v else None, fps=v.fps if v else None, source_fps=v.source_fps if v else None,
        width=v.width if v else None, height=v.height if v else None, duration_s=v.duration_s if v else None,
        video_id=record.source.video_id if record.source else None,
        progress={"done": record.progress.done, "total": record.progress.total} if record.state == "ingesting" else None,
        created_at=record.created_at.isoformat(timespec="seconds"),
        last_used_at=record.last_used_at.isoformat(timespec="seconds"))


def encode_frame(result: VideoFrameResult, height: int, width: int) -> FrameResult:
    """Actor output -> the frame's objects: logits upsampled to (H,W) one object at a time, > 0, COCO RLE.
    An object whose upsampled mask is empty is left out (the model keeps an object iff its mask is non-empty;
    the two upsamplings can disagree on a mask of a pixel or two)."""
    objects = []
    for k, obj_id in enumerate(result.object_ids):
        mask = encode_mask(result.mask_logits[k], height, width, 0.0)
        if mask.area == 0:
            continue
        objects.append(VideoObject(id=int(obj_id), score=round(float(result.scores[k]), 6),
                                   box=[round(float(v), 2) for v in result.boxes_xyxy[k]], area=mask.area,
                                   mask=RleMask(**mask.rle())))
    return FrameResult(frame_index=result.frame_index, objects=objects)


def expected_frames(num_frames: int, start: int, direction: str, max_frames: int | None) -> int:
    """How many frames a propagation yields (each frame of the range once)."""
    reach = num_frames if max_frames is None else max_frames
    forward = min(num_frames - 1, start + reach) - start + 1
    backward = start - max(0, start - reach) + 1
    return {"forward": forward, "backward": backward, "both": forward + backward - 1}[direction]


def prompt_op(req: VideoPromptRequest) -> tuple[str, dict[str, Any]]:
    """A prompt request as a journal operation (JSON-safe args)."""
    if req.text is not None:
        return "add_text", {"frame_index": req.frame_index, "text": req.text}
    objects = [o.model_dump(exclude_none=True) for o in req.objects or []]
    return "add_objects", {"frame_index": req.frame_index, "objects": objects}


class VideoSessions:
    """Everything the video routes do, against the SessionManager handle and the store."""

    def __init__(self, manager: Any, store: ArtifactStore, tenant: str, cfg: AppConfig):
        self.manager = manager
        self.store = store
        self.tenant = tenant
        self.cfg = cfg
        self.ingest_limits = ingest_limits(cfg)
        self.library = VideoLibrary(store, tenant, cfg)
        self.timeout_s = cfg.ingress.model_timeout_s
        self._actors: dict[str, Any] = {}
        self._writes: set[asyncio.Task] = set()
        self._write_slots = asyncio.Semaphore(_WRITES_IN_FLIGHT)

    # ------------------------------------------------------------------ create / read
    def check_options(self, opts: SessionOptionsIn) -> None:
        if opts.max_frames is not None and opts.max_frames > self.ingest_limits.max_frames:
            raise InvalidInput(f"max_frames limit is {self.ingest_limits.max_frames}", "max_frames_too_large")

    async def create(self, path: str, source: SessionSource, opts: SessionOptionsIn) -> SessionRecord:
        """Ingest the video file at `path` (PyAV, on this CPU replica) into a new session."""
        self.check_options(opts)
        record: SessionRecord = await self._manager("create", source,
                                                    SessionOptions(max_frames=opts.max_frames, fps=opts.fps))
        sid = record.session_id
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            if done % _PROGRESS_EVERY == 0 and done < total:
                asyncio.run_coroutine_threadsafe(self._manager("ingest_progress", sid, done, total), loop)

        try:
            # Not on the bounded pools: an ingest decodes and stores for minutes, and would hold a CPU-pool
            # thread (all image decoding of a 1-CPU replica) or a storage thread that long.
            meta = await asyncio.to_thread(ingest_video, self.store, self.tenant, sid, path, self.ingest_limits,
                                           fps=opts.fps, max_frames=opts.max_frames, on_progress=progress)
            if source.video_id is None:  # the upload joins the media library (GET /v1/videos)
                entry, _ = await run_io(self.library.add_file, path, None, meta)
                source = source.model_copy(update={"video_id": entry.video_id})
        except Sam3Error as exc:
            await self._manager("ingest_failed", sid, exc.code, exc.message)
            raise
        video = {"num_frames": meta.num_frames, "fps": meta.fps, "source_fps": meta.source_fps, "width": meta.width,
                 "height": meta.height, "duration_s": meta.duration_s}
        return await self._manager("ingest_done", sid, video, source)

    def stored_video_path(self, video_id: str, directory: str) -> str:
        """Copy the stored video `video_id` into `directory`; returns the file path. NotFound video_not_found."""
        key = keys.video_key(self.tenant, video_id)
        try:
            data = self.store.get(key).data
        except NotFound:
            raise NotFound(f"no video {video_id}", "video_not_found") from None
        path = os.path.join(directory, "video")
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def fetch(self, ref: VideoRef, workdir: str) -> tuple[str, SessionSource]:
        """The referenced video copied to `workdir` (file path, where it came from): an upload, an s3:// object
        of an allowed bucket (storage.allowed_url_buckets), or a stored video (video_id)."""
        max_bytes = self.ingest_limits.max_video_bytes
        if ref.video_id is not None:
            keys.video_key(self.tenant, ref.video_id)  # validates the id
            return (await run_io(self.stored_video_path, ref.video_id, workdir),
                    SessionSource(video_id=ref.video_id))
        if ref.upload_id is not None:
            key = keys.upload_key(self.tenant, ref.upload_id)
            try:
                info = await run_io(self.store.head, key)
            except NotFound:
                raise NotFound(f"no upload {ref.upload_id}: PUT the file to the upload URL first",
                               "upload_not_found") from None
            if info.size > max_bytes:
                raise PayloadTooLarge(f"upload is {info.size} bytes, video limit {max_bytes}", "video_too_large")
            data = (await run_io(self.store.get, key)).data
            source = SessionSource(upload_id=ref.upload_id)
        else:
            assert ref.url is not None
            bucket, key = parse_s3_url(ref.url)
            check_url_allowed(self.cfg.storage, self.store, self.tenant, bucket, key)
            try:
                data = (await run_io(self.store.get_from_bucket, bucket, key, max_bytes)).data
            except NotFound:
                raise NotFound(f"no object at {ref.url}", "video_not_found") from None
            source = SessionSource(url=ref.url)
        path = os.path.join(workdir, "video")
        await asyncio.to_thread(_write_file, path, data)
        return path, source

    async def list(self, limit: int, cursor: str | None) -> tuple[list[SessionRecord], str | None]:
        return await self._manager("list", limit, cursor)

    async def get(self, sid: str) -> SessionRecord:
        return await self._manager("get", keys.validate_id(sid, "session_id"))

    async def frame_jpeg(self, sid: str, index: int) -> bytes:
        record = await self.get(sid)
        self._check_index(record.video, index)
        try:
            return (await run_io(self.store.get, keys.session_frame_key(self.tenant, sid, index))).data
        except NotFound:
            raise NotFound(f"frame {index} is not stored yet", "frame_not_found") from None

    async def masks(self, sid: str, start: int, end: int | None) -> MasksResponse:
        """Stored results of frames start..end (inclusive; end None = the last frame); objects removed since
        are left out."""
        record = await self.get(sid)
        video = self._check_index(record.video, start)
        last = video.num_frames - 1 if end is None else end
        self._check_index(video, last)
        if last < start:
            raise InvalidInput("frame_end must be >= frame_start", "invalid_frame_range")
        if last - start + 1 > 1000:
            raise InvalidInput("at most 1000 frames per request", "frame_range_too_large")
        removed = set(record.removed_obj_ids)

        def read(i: int) -> FrameResult | None:
            try:
                frame = FrameResult.model_validate_json(
                    self.store.get(keys.session_masks_key(self.tenant, sid, i)).data)
            except NotFound:
                return None
            frame.objects = [o for o in frame.objects if o.id not in removed]
            return frame

        results = await run_io(lambda: [read(i) for i in range(start, last + 1)])
        return MasksResponse(frames=[r for r in results if r is not None],
                             missing=[start + k for k, r in enumerate(results) if r is None])

    async def delete(self, sid: str) -> None:
        self._actors.pop(sid, None)
        await self._manager("delete", keys.validate_id(sid, "session_id"))

    # ------------------------------------------------------------------ operations on the actor
    async def prompt(self, sid: str, req: VideoPromptRequest, request_id: str) -> VideoPromptResponse:
        self._check_prompt(req)
        owner = await self._actor(sid)
        video = self._check_index(owner[1].video, req.frame_index)
        check_masks(req, video)  # before the actor decodes any mask
        op, args = prompt_op(req)
        result, rebuilt = await self._call(sid, "apply", op, args, request_id, owner=owner)
        frame = await run_cpu(encode_frame, result, video.height, video.width)
        await run_io(self._persist, sid, frame)
        return VideoPromptResponse(request_id=request_id, frame_index=frame.frame_index, objects=frame.objects,
                                   prompt_to_obj_ids=result.prompt_to_obj_ids,
                                   prompted_obj_ids=result.prompted_obj_ids, rebuilt=rebuilt)

    async def remove_object(self, sid: str, obj_id: int, request_id: str) -> bool:
        _, rebuilt = await self._call(sid, "apply", "remove_object", {"obj_id": obj_id}, request_id)
        await self._manager("objects_changed", sid, removed=obj_id)
        return rebuilt

    async def reset(self, sid: str, request_id: str) -> bool:
        _, rebuilt = await self._call(sid, "apply", "reset", {}, request_id)
        await self._manager("objects_changed", sid, reset=True)
        await run_io(self._delete_masks, sid)
        return rebuilt

    async def propagate(self, sid: str, req: PropagateRequest, request_id: str) -> AsyncGenerator[dict[str, Any], None]:
        """Messages of one propagation: {"type": "frame", ...} per frame as computed, then {"type": "done"}
        or {"type": "cancelled"}; {"type": "error", "error": {...}} if it fails midway. Closing the iterator
        (client gone) stops the GPU work at the next frame."""
        handle, lease = await self._actor(sid)
        video = self._check_index(lease.video, req.start_frame_index)
        h, w = video.height, video.width
        total = expected_frames(video.num_frames, req.start_frame_index, req.direction, req.max_frames)
        stream = handle.propagate.options(num_returns="streaming").remote(
            sid, req.start_frame_index, req.direction, req.max_frames, request_id)
        done = 0
        finished = False
        writes: list[asyncio.Task] = []  # each frame is stored behind the stream (not before it is sent)
        try:
            async for ref in stream:
                item = await ref
                if not isinstance(item, VideoFrameResult):  # PropagationEnd
                    finished = True
                    stored = await self._stored(writes)
                    yield {"type": item.status, "frames": item.frames, "progress": {"done": done, "total": total},
                           "stored": stored, "rebuilt": lease.rebuilt}
                    return
                frame = await run_cpu(encode_frame, item, h, w)
                writes.append(self._store_behind(sid, frame))
                done += 1
                yield {"type": "frame", **frame.model_dump(), "progress": {"done": done, "total": total}}
        except Exception as exc:
            finished = True
            err = await self._actor_failure(sid, lease, exc)
            yield {"type": "error", "error": {"code": err.code, "message": err.message, "request_id": request_id}}
        finally:
            if not finished:  # the client went away (or a newer request took over): stop the GPU work
                import ray

                ray.cancel(stream)
                handle.cancel.remote(sid)

    async def save_state(self, sid: str, key: str) -> int:
        """The session's inference state stored at `key` (SessionActor.save_state); returns its size."""
        size, _ = await self._call(sid, "save_state", key)
        return size

    async def restore_state(self, sid: str, key: str) -> None:
        """Continue the session from the state `save_state` stored at `key` (SessionActor.restore_state)."""
        await self._call(sid, "restore_state", key)

    def stored_frames(self, sid: str, start: int, end: int) -> set[int]:
        """Frame indices in start..end (inclusive) whose results are stored (a listing, no reads). Blocking."""
        prefix = keys.session_masks_prefix(self.tenant, sid)
        found: set[int] = set()
        for info in self.store.iter_list(prefix):
            name = info.key[len(prefix):]
            if name.endswith(".json") and name[:-5].isdigit() and start <= int(name[:-5]) <= end:
                found.add(int(name[:-5]))
        return found

    async def cancel(self, sid: str) -> None:
        handle, _ = await self._actor(sid)
        await handle.cancel.remote(sid)

    # ------------------------------------------------------------------ internals
    async def _manager(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self.manager, method).remote(*args, tenant=self.tenant, **kwargs),
                                          self.timeout_s)
        except Exception as exc:
            err = translate_handle_error(exc)
            if err is None or err is exc:
                raise
            raise err from exc

    async def _actor(self, sid: str) -> tuple[Any, Any]:
        """(actor handle, SessionLease) of the session's owner."""
        import ray

        lease = await self._manager("acquire", sid)
        cached = self._actors.get(sid)
        if cached is not None and cached[0] == lease.actor_name:
            return cached[1], lease
        handle = await run_io(ray.get_actor, lease.actor_name, namespace=lease.namespace)
        self._actors[sid] = (lease.actor_name, handle)
        return handle, lease

    async def _call(self, sid: str, method: str, *args: Any,
                    owner: tuple[Any, Any] | None = None) -> tuple[Any, bool]:
        """`actor.<method>(sid, *args)` on `owner` (from `_actor`; looked up when None); if the owner died,
        tell the manager and retry once on the rebuilt one. Returns (result, rebuilt)."""
        for attempt in range(2):
            handle, lease = owner if owner is not None and attempt == 0 else await self._actor(sid)
            try:
                return await getattr(handle, method).remote(sid, *args), lease.rebuilt or attempt > 0
            except Exception as exc:
                err = await self._actor_failure(sid, lease, exc)
                if attempt == 1 or err.code != "session_lost":
                    raise err from exc
        raise AssertionError("unreachable")

    async def _actor_failure(self, sid: str, lease: Any, exc: BaseException) -> Sam3Error:
        """The Sam3Error for a failed actor call; a dead actor is reported to the manager (session_lost)."""
        from ray import exceptions as ray_exc

        cause = getattr(exc, "cause", None)
        if isinstance(cause, Sam3Error):
            return cause
        if isinstance(exc, Sam3Error):
            return exc
        if isinstance(exc, (ray_exc.RayActorError, ray_exc.ActorUnavailableError)):
            self._actors.pop(sid, None)
            await self._manager("lost", sid, lease.generation)
            return Unavailable(f"the actor of session {sid} died; it is being rebuilt", "session_lost")
        err = translate_handle_error(exc)
        if err is None:
            raise exc
        return err

    def _store_behind(self, sid: str, frame: FrameResult) -> asyncio.Task:
        """Store `frame` in a worker thread; at most _WRITES_IN_FLIGHT run at once per replica. The task is
        kept referenced until it ends, so a stream whose client went away still stores what it sent."""
        async def write() -> None:
            async with self._write_slots:
                await run_io(self._persist, sid, frame)

        task = asyncio.create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    @staticmethod
    async def _stored(writes: builtins.list[asyncio.Task]) -> int:
        """Wait for a stream's frame writes; how many succeeded (failures are logged, the frames were sent)."""
        results = await asyncio.gather(*writes, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("%d of %d propagated frames were not stored: %r", len(failed), len(results), failed[0])
        return len(results) - len(failed)

    def _persist(self, sid: str, frame: FrameResult) -> None:
        self.store.put(keys.session_masks_key(self.tenant, sid, frame.frame_index),
                       frame.model_dump_json().encode(), "application/json")

    def _delete_masks(self, sid: str) -> None:
        prefix = keys.session_masks_prefix(self.tenant, sid)
        while True:
            page = self.store.list(prefix, limit=1000)
            for info in page:
                self.store.delete(info.key)
            if len(page) < 1000:
                return

    @staticmethod
    def _check_index(video: VideoInfo | None, index: int) -> VideoInfo:
        """`video` if `index` is one of its frames; InvalidInput otherwise (session_not_ready without frames)."""
        if video is None:
            raise InvalidInput("the session has no frames yet", "session_not_ready")
        if not 0 <= index < video.num_frames:
            raise InvalidInput(f"frame index {index} is outside 0..{video.num_frames - 1}", "frame_out_of_range")
        return video

    def _check_prompt(self, req: VideoPromptRequest) -> None:
        limits = self.cfg.video.limits
        if req.text is not None:
            if not req.text.strip():
                raise InvalidInput("text is empty", "empty_text")
            if len(req.text) > self.cfg.limits.max_text_chars:
                raise InvalidInput(f"text is over {self.cfg.limits.max_text_chars} characters", "text_too_long")
        objects = req.objects or []
        if len(objects) > limits.max_objects_per_call:
            raise InvalidInput(f"{len(objects)} objects, limit {limits.max_objects_per_call}", "too_many_objects")
        for i, o in enumerate(objects):
            if not o.points and o.box is None and o.mask is None:
                raise InvalidInput(f"objects[{i}] needs points, a box or a mask", "empty_object")
            if o.points is not None and len(o.points) > limits.max_points_per_object:
                raise InvalidInput(f"objects[{i}] has over {limits.max_points_per_object} points", "too_many_points")
            if o.point_labels is not None and len(o.point_labels) != len(o.points or ()):
                raise InvalidInput(f"objects[{i}]: one point_label per point", "point_labels_mismatch")


def check_masks(req: VideoPromptRequest, video: VideoInfo) -> None:
    """Every object mask is a well-formed COCO RLE of exactly the frame's size, checked on the compressed
    string: the session actor decodes it (pycocotools allocates size[0] x size[1] bytes, ~10 GB for
    [100000, 100000], and leaves pixels uninitialised when the runs cover fewer than that)."""
    for i, o in enumerate(req.objects or []):
        if o.mask is None:
            continue
        h, w = o.mask.size
        if (h, w) != (video.height, video.width):
            raise InvalidInput(f"objects[{i}].mask.size is [{h}, {w}], the video's frames are "
                               f"[{video.height}, {video.width}]", "invalid_mask")
        if rle_pixel_count(o.mask.counts) != h * w:
            raise InvalidInput(f"objects[{i}].mask.counts is not a COCO RLE of {h} x {w} pixels", "invalid_mask")


def rle_pixel_count(counts: str) -> int | None:
    """The pixels a COCO compressed RLE string covers (the sum of its runs), or None when it is not one.
    Vectorised (the string may be megabytes); the format is pycocotools' rleFrString: each run is 5-bit
    groups in chars 48..111, 0x20 = more groups follow, 0x10 in the last group = negative, and from the
    fourth value on each is a delta to the value two before it."""
    if not counts:
        return 0
    if not counts.isascii():
        return None
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        return None
    more = (c & 0x20) != 0
    if more[-1]:
        return None  # the last value is cut off
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:  # more than 35 bits: no run of a real mask
        return None
    shift = 5 * (np.arange(len(c)) - np.repeat(starts, lengths))
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    values = np.where((c[ends] & 0x10) != 0, values - (np.int64(1) << (5 * lengths)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # deltas from the fourth value on: a running sum per parity
    runs[2::2] = np.cumsum(values[2::2])
    if runs.min() < 0 or runs.max() >= 2**32:  # pycocotools stores runs as uint32
        return None
    return int(runs.sum())


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def ndjson(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()
