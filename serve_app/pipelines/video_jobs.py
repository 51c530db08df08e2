"""The video job kinds: `video_export` (a session's masks as a dataset ZIP) and `pcs_video` (text prompts tracked
through a whole video without interaction, then the same ZIP). Both run on JobWorker replicas under the job
system's leases (serve_app.jobs); the GPU work runs on session actors through VideoSessions, like the
interactive routes.

video_export: checks the session and scope (pipelines/video_exports.py); with auto_propagate_if_incomplete,
frames of the scope with no stored masks are first propagated forward from the first missing one; then the ZIP
is streamed to `exports/{job_id}.zip` and shown as the job's `export_url`.

pcs_video, resumable by chunks:
1. the video (video_id | upload_id | s3 url) is ingested into a session of the job's own (source.job_id),
   the text prompts are added on the scope's first frame, and the session's state is saved to
   `jobs/{job_id}/checkpoint.bin`; `jobs/{job_id}/state.json` says {session_id, next_frame, ...};
2. frames are tracked forward `jobs.video_chunk_frames` at a time; after a chunk, its masks are stored, the
   state is saved again, and `next_frame` moves past the chunk;
3. the export ZIP is written from the stored masks, then the session and the job's state are deleted.
A later attempt (the worker died) restores the session state from the checkpoint and goes on at
`next_frame`: tracking forward in chunks from a restored state gives exactly the masks of one uninterrupted
run (tests/unit/test_model_video.py checks it on the model), so the output does not depend on where a worker
died. The result says where the attempt resumed (`tracking.resumed_from_frame`) and how many frames it tracked.

Fairness: one worker replica runs at most `jobs.max_concurrent_video_jobs` pcs_video jobs at once; the others
wait with their leases held, so video jobs never take more than (worker replicas x that) session actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
from typing import Any

from serve_app.config import JobsConfig
from serve_app.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    Sam3Error,
    Unavailable,
)
from serve_app.jobs.kinds import JobContext, JobOutput, JobProgress, parse_job_input
from serve_app.pipelines.pools import run_io
from serve_app.pipelines.video import VideoSessions
from serve_app.pipelines.video_exports import VideoExports, frame_range
from serve_app.schemas import (
    PcsVideoJobInput,
    PropagateRequest,
    SessionOptionsIn,
    VideoExportJobInput,
    VideoPromptRequest,
)
from serve_app.storage import keys

log = logging.getLogger("serve_app.jobs")

async def track(sessions: VideoSessions, sid: str, start: int, end: int, request_id: str) -> int:
    """Propagate session `sid` forward over frames start..end (inclusive), storing each frame's masks; returns
    the frames stored. A failure midway (actor lost, storage down) raises Unavailable: the job is retried."""
    request = PropagateRequest(direction="forward", start_frame_index=start, max_frames=end - start)
    async for message in sessions.propagate(sid, request, request_id):
        if message["type"] == "error":
            error = message["error"]
            raise Unavailable(f"tracking frames {start}..{end} failed: {error['message']}", error["code"])
        if message["type"] in ("done", "cancelled"):
            if message["type"] == "cancelled" or message["stored"] < end - start + 1:
                raise Unavailable(f"tracking frames {start}..{end} stopped after {message['stored']} stored frames",
                                  "tracking_incomplete")
            return message["stored"]
    raise Unavailable("the propagation stream ended without a final message", "tracking_incomplete")


def _result(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class VideoExportJob:
    """A session's stored masks as a dataset ZIP (POST /v1/video/sessions/{sid}/exports submits it)."""

    name = "video_export"

    def __init__(self, exports: VideoExports):
        self.exports = exports

    def validate(self, input: dict) -> None:
        parse_job_input(VideoExportJobInput, input)

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        req = parse_job_input(VideoExportJobInput, input)
        plan = await self.exports.plan(req.session_id, req, allow_missing=req.auto_propagate_if_incomplete)
        missing = await self.exports.missing(plan)
        propagated = 0
        if missing:  # only with auto_propagate_if_incomplete (plan refused it otherwise)
            propagated = await track(self.exports.sessions, plan.session_id, missing[0], plan.end, ctx.job_id)
            plan = await self.exports.plan(req.session_id, req)  # session_incomplete if frames are still missing
        export_key = keys.export_key(self.exports.tenant, ctx.job_id)
        manifest = await self.exports.write(plan, export_key, ctx.report)
        return JobOutput(_result({"export": manifest, "frames_propagated": propagated}), artifact_key=export_key)


class PcsVideoJob:
    """Text prompts tracked through a whole video (or a frame range), resumable by chunks; then the export."""

    name = "pcs_video"

    def __init__(self, exports: VideoExports, cfg: JobsConfig, slots: asyncio.Semaphore):
        """`slots`: this worker's pcs_video runs at once (jobs.max_concurrent_video_jobs), shared by all tenants."""
        self.exports = exports
        self.sessions = exports.sessions
        self.store = exports.store
        self.tenant = exports.tenant
        self.chunk_frames = cfg.video_chunk_frames
        self._slots = slots
        self.hold_after_chunks: int | None = None  # debug interface (tests): stop before chunk n+1 of an attempt

    def validate(self, input: dict) -> None:
        parse_job_input(PcsVideoJobInput, input)

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        req = parse_job_input(PcsVideoJobInput, input)
        async with self._slots:
            return await self._run(req, ctx)

    async def _run(self, req: PcsVideoJobInput, ctx: JobContext) -> JobOutput:
        checkpoint = keys.job_checkpoint_key(self.tenant, ctx.job_id)
        state = await self._resume(ctx.job_id, checkpoint)
        if state is None:
            state = await self._start(req, ctx, checkpoint)
        sid, start, end = state["session_id"], state["start"], state["end"]
        resumed_from = next_frame = state["next_frame"]
        chunks = 0
        while next_frame <= end:
            if self.hold_after_chunks is not None and chunks >= self.hold_after_chunks:
                await asyncio.Event().wait()  # held (tests kill this worker here); cancelled with the attempt
            chunk_end = min(end, next_frame + self.chunk_frames - 1)
            await track(self.sessions, sid, next_frame, chunk_end, ctx.job_id)
            await self.sessions.save_state(sid, checkpoint)
            next_frame = chunk_end + 1
            await run_io(self._save, ctx.job_id, {**state, "next_frame": next_frame})
            chunks += 1
            ctx.report(JobProgress(next_frame - start, end - start + 1, "frames_tracked"))
        plan = await self.exports.plan(sid, req.export)
        export_key = keys.export_key(self.tenant, ctx.job_id)
        manifest = await self.exports.write(plan, export_key, ctx.report)
        await self._cleanup(ctx.job_id, sid)
        tracking = {"frames": end - start + 1, "resumed_from_frame": resumed_from, "chunks_this_attempt": chunks,
                    "frames_tracked_this_attempt": next_frame - resumed_from, "chunk_frames": self.chunk_frames}
        return JobOutput(_result({"export": manifest, "tracking": tracking}), artifact_key=export_key)

    async def _start(self, req: PcsVideoJobInput, ctx: JobContext, checkpoint: str) -> dict[str, Any]:
        """A new session for this job: ingest, prompts on the scope's first frame, state saved."""
        workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="sam3-pcs-video-")
        try:
            path, source = await self.sessions.fetch(req.video, workdir)
            source = source.model_copy(update={"job_id": ctx.job_id})
            record = await self.sessions.create(path, source, SessionOptionsIn(fps=req.fps, max_frames=req.max_frames))
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        assert record.video is not None
        sid = record.session_id
        try:
            start, end = frame_range(req.export, record.video)  # the scope is only checkable after the ingest
        except InvalidInput:
            await self.sessions.delete(sid)
            raise
        state = {"session_id": sid, "start": start, "end": end, "next_frame": start, "ready": False}
        await run_io(self._save, ctx.job_id, state)  # a retry finds (and drops) this session if we die now
        for text in req.prompts:
            await self._retry_starting(self.sessions.prompt, sid, VideoPromptRequest(frame_index=start, text=text),
                                       ctx.job_id)
        await self.sessions.save_state(sid, checkpoint)
        state["ready"] = True
        await run_io(self._save, ctx.job_id, state)
        return state

    async def _resume(self, job_id: str, checkpoint: str) -> dict[str, Any] | None:
        """The saved state of an earlier attempt, with its session restored to the last finished chunk; None
        (and the half-made session dropped) when there is nothing usable to resume."""
        state = await run_io(self._load, job_id)
        if state is None:
            return None
        sid = state["session_id"]
        try:
            if state.get("ready"):
                await self._retry_starting(self.sessions.restore_state, sid, checkpoint)
                log.info("pcs_video %s: resuming session %s at frame %d", job_id, sid, state["next_frame"])
                return state
        except (NotFound, Conflict) as exc:  # session gone, or a checkpoint of another model version
            log.warning("pcs_video %s: cannot resume session %s (%s); starting over", job_id, sid, exc.code)
        with contextlib.suppress(NotFound):
            await self.sessions.delete(sid)
        return None

    @staticmethod
    async def _retry_starting(fn: Any, *args: Any) -> Any:
        """`await fn(*args)`, retried while the session's actor is still starting (409 session_starting)."""
        for _ in range(600):
            try:
                return await fn(*args)
            except Conflict as exc:
                if exc.code != "session_starting":
                    raise
                await asyncio.sleep(min(1.0, exc.retry_after_s or 1))
        raise Unavailable("the session's actor did not start", "session_starting")

    async def _cleanup(self, job_id: str, sid: str) -> None:
        """The job's session and resume state are not needed once the export is stored (best effort)."""
        try:
            await self.sessions.delete(sid)
            await run_io(self.store.delete, keys.job_checkpoint_key(self.tenant, job_id))
            await run_io(self.store.delete, keys.job_state_key(self.tenant, job_id))
        except Sam3Error as exc:
            log.warning("pcs_video %s: cleanup failed (%s); the session is reaped later", job_id, exc.code)

    def _load(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get(keys.job_state_key(self.tenant, job_id)).data)
        except NotFound:
            return None

    def _save(self, job_id: str, state: dict[str, Any]) -> None:
        self.store.put(keys.job_state_key(self.tenant, job_id), _result(state), "application/json")
