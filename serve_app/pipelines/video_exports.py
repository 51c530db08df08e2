"""Dataset exports of a video session's stored results: the checks a request gets, and the ZIP a job writes.

    plan = await exports.plan(sid, options)        # 404 / 400 / 409 now, in the request (see `plan`)
    manifest = await exports.write(plan, export_key, report)     # in a job: the ZIP streamed to storage

What an export reads, all from storage (never the session's actor): the session record (video size, fps,
objects removed since), the stored frame results `sessions/{sid}/masks/{i:06d}.json` and, for images and the
overlay video, the frames `sessions/{sid}/frames/{i}.jpg`. The ZIP (layout: serve_app.exports.dataset) is
written by `zipfile` straight into `ArtifactStore.open_writer` (S3 multipart): memory holds about one
frame and one upload part, never the archive. Frame results are read twice (object ids first: the labels,
PNG folders and COCO categories must be known before the first frame is written), each pass by a few
threads ahead of the writer.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serve_app.errors import Conflict, InvalidInput, NotFound
from serve_app.exports.dataset import DatasetWriter
from serve_app.exports.labels import build_labels
from serve_app.jobs.kinds import JobProgress
from serve_app.pipelines.video import VideoSessions
from serve_app.schemas import ExportOptions, FrameResult
from serve_app.sessions.records import SessionRecord, VideoInfo
from serve_app.storage import keys

_READ_AHEAD = 8  # frame results / JPEGs being fetched ahead of the writer


@dataclass(frozen=True)
class ExportPlan:
    """A checked export: the session, its video, the inclusive frame range, objects removed since."""

    session_id: str
    video: VideoInfo
    start: int
    end: int
    options: ExportOptions
    removed_obj_ids: frozenset[int]
    source: dict

    @property
    def num_frames(self) -> int:
        return self.end - self.start + 1


def frame_range(options: ExportOptions, video: VideoInfo) -> tuple[int, int]:
    """The scope as an inclusive (start, end) inside the video; InvalidInput invalid_frame_range otherwise."""
    start = options.scope.frame_start
    end = video.num_frames - 1 if options.scope.frame_end is None else options.scope.frame_end
    if start >= video.num_frames or end >= video.num_frames:
        raise InvalidInput(f"scope frames must be < {video.num_frames} (the session's frame count)",
                           "invalid_frame_range")
    if end < start:
        raise InvalidInput("scope.frame_end must be >= scope.frame_start", "invalid_frame_range")
    return start, end


class VideoExports:
    def __init__(self, sessions: VideoSessions):
        self.sessions = sessions
        self.store = sessions.store
        self.tenant = sessions.tenant

    async def plan(self, sid: str, options: ExportOptions, *, allow_missing: bool = False) -> ExportPlan:
        """Check an export of session `sid` now. NotFound (session), InvalidInput (scope, merge groups naming
        objects that are in none of the scope's frames: unknown_merge_object), Conflict session_incomplete
        (frames of the scope have no stored results, unless `allow_missing`: the job propagates them first)."""
        record = await self.sessions.get(sid)
        if record.state in ("ingesting", "failed") or record.video is None:
            raise Conflict(f"session {sid} has no frames to export yet ({record.state})", "session_not_ready")
        start, end = frame_range(options, record.video)
        plan = ExportPlan(sid, record.video, start, end, options, frozenset(record.removed_obj_ids),
                          _source(record))
        missing = await self.missing(plan)
        if missing and not allow_missing:
            raise Conflict(f"{len(missing)} frames of the scope have no masks yet (first: {missing[0]}): propagate "
                           "first, or ask for auto_propagate_if_incomplete", "session_incomplete")
        if options.merge.groups and not missing:
            await asyncio.to_thread(build_labels, options, self._object_ids(plan))  # unknown_merge_object now
        return plan

    async def missing(self, plan: ExportPlan) -> list[int]:
        """Frames of the plan's range with no stored results, ascending."""
        stored = await asyncio.to_thread(self.sessions.stored_frames, plan.session_id, plan.start, plan.end)
        return [i for i in range(plan.start, plan.end + 1) if i not in stored]

    async def write(self, plan: ExportPlan, export_key: str, report: Callable[[JobProgress], None]) -> dict:
        """Write the export ZIP to `export_key`; returns its manifest (+ `bytes`: the ZIP's size)."""
        return await asyncio.to_thread(self._write, plan, export_key, report)

    # ------------------------------------------------------------------ blocking internals
    def _write(self, plan: ExportPlan, export_key: str, report: Callable[[JobProgress], None]) -> dict:
        options = plan.options
        labels = build_labels(options, self._object_ids(plan))
        need_jpeg = options.include_images or "overlay_mp4" in options.formats
        workdir = tempfile.mkdtemp(prefix="sam3-export-")
        try:
            with self.store.open_writer(export_key, "application/zip") as out:
                with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                    writer = DatasetWriter(zf, options, labels, width=plan.video.width, height=plan.video.height,
                                           fps=plan.video.fps, workdir=workdir, source=plan.source)
                    try:
                        for done, (frame, jpeg) in enumerate(self._frames(plan, need_jpeg), 1):
                            writer.add_frame(frame.frame_index, jpeg, frame.objects)
                            report(JobProgress(done, plan.num_frames, "frames_exported"))
                        manifest = writer.finish()
                    except BaseException:
                        writer.abort()  # its spool files and encoder; open_writer aborts the upload
                        raise
                size = out.bytes_written
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return {**manifest, "bytes": size}

    def _object_ids(self, plan: ExportPlan) -> set[int]:
        ids: set[int] = set()
        for frame, _ in self._frames(plan, False):
            ids.update(o.id for o in frame.objects)
        return ids

    def _frames(self, plan: ExportPlan, with_jpeg: bool) -> Iterator[tuple[FrameResult, bytes | None]]:
        """(stored result without removed objects, JPEG or None) per frame of the range, in order; a few
        reads ahead on threads. NotFound session_incomplete if a result vanished meanwhile (a reset)."""
        def read(i: int) -> tuple[FrameResult, bytes | None]:
            try:
                frame = FrameResult.model_validate_json(
                    self.store.get(keys.session_masks_key(self.tenant, plan.session_id, i)).data)
                jpeg = self.store.get(keys.session_frame_key(self.tenant, plan.session_id, i)).data \
                    if with_jpeg else None
            except NotFound:
                raise Conflict(f"frame {i} of session {plan.session_id} has no stored masks (reset or deleted "
                               "during the export?)", "session_incomplete") from None
            frame.objects = [o for o in frame.objects if o.id not in plan.removed_obj_ids]
            return frame, jpeg

        with ThreadPoolExecutor(_READ_AHEAD, thread_name_prefix="export-read") as pool:
            pending = [pool.submit(read, i) for i in range(plan.start, min(plan.end, plan.start + _READ_AHEAD) + 1)]
            next_index = plan.start + len(pending)
            while pending:
                result = pending.pop(0).result()
                if next_index <= plan.end:
                    pending.append(pool.submit(read, next_index))
                    next_index += 1
                yield result


def _source(record: SessionRecord) -> dict:
    """What the manifest says about where the frames came from."""
    return {"session_id": record.session_id, "video_id": record.source.video_id if record.source else None,
            "fps": record.video.fps if record.video else None,
            "source_fps": record.video.source_fps if record.video else None}
