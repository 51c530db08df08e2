"""SessionActor: the one owner of a video session's state, run as a named Ray actor with a GPU share.

The SessionManager (serve_app.deployments.session_manager) creates these actors (a warm pool of them, the
model already loaded), `attach`es one to a session, and hands its name to callers, which then call it
directly: every request for session X reaches the actor that holds X's state, looked up by name.

Contract of the methods (all blocking; the actor is threaded, `max_concurrency` > 1, so `cancel` and
`describe` answer while a propagation runs):
- Every mutating call (`apply`) is appended to the session journal in storage BEFORE it is applied; a
  propagation is journaled when it ends (with the number of frames it ran), so a rebuild replays exactly
  what happened. After a completed propagation the state may be checkpointed (torch.save, the tenant's own
  prefix, version-checked on load).
- `attach` rebuilds the session: the newest loadable checkpoint plus the journal tail, or a full replay.
- One operation at a time holds the session (a lock). A new `apply`, `propagate` or `cancel` bumps the
  epoch first, so a running propagation stops at its next frame and its stream ends with `cancelled`.

Frames come from storage (the JPEGs ingest wrote), read lazily: the GPU never decodes video. Results are
compact low-res outputs (VideoFrameResult); upsampling and RLE happen on CPU replicas.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.config import ModelConfig, StorageConfig, VideoConfig
from serve_app.errors import Conflict, InvalidInput, NotFound
from serve_app.model.video_types import FrameSource, SessionIncompatible, VideoFrameResult, VideoObjectPrompt
from serve_app.sessions.checkpoints import CheckpointStore
from serve_app.sessions.ingest import load_video_meta
from serve_app.sessions.journal import JournalEntry, JournalOp, SessionJournal
from serve_app.storage import keys, open_store

log = logging.getLogger("serve_app.sessions")


@dataclass(frozen=True)
class PropagationEnd:
    """The last item of a propagation stream. status: done | cancelled; frames: frames yielded."""

    status: str
    frames: int


@dataclass
class AttachInfo:
    """What `attach` did: `from_checkpoint` = the journal seq the loaded checkpoint covered (None: fresh
    session), `replayed` = journal entries applied on top, `object_ids` tracked now."""

    session_id: str
    generation: int
    from_checkpoint: int | None
    replayed: int
    object_ids: list[int] = field(default_factory=list)


def _video_seconds_counter() -> Any:
    """The per-tenant video model-time counter (None where Ray's metrics are unavailable)."""
    try:
        from ray.util.metrics import Counter

        return Counter("sam3_tenant_video_seconds_total", tag_keys=("tenant",),
                       description="Video model seconds (prompts and propagation) by tenant")
    except Exception:
        return None


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 RGB (H,W,3)."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInput("a stored frame is not a JPEG", "corrupt_frame")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def objects_from_args(args: list[dict[str, Any]]) -> list[VideoObjectPrompt]:
    """Journal/wire form of add_objects (ORIGINAL pixels; masks as COCO RLE) -> model prompts."""
    from serve_app.codecs.masks import decode_rle

    out = []
    for o in args:
        points = np.asarray(o["points"], np.float32).reshape(-1, 2) if o.get("points") else None
        labels = None
        if points is not None:
            labels = np.asarray(o.get("point_labels") or [1] * len(points), np.int64)
        box = np.asarray(o["box"], np.float32) if o.get("box") is not None else None
        mask = decode_rle(o["mask"]) if o.get("mask") is not None else None
        out.append(VideoObjectPrompt(o.get("obj_id"), points, labels, box, mask, bool(o.get("clear_old_points"))))
    return out


class SessionActor:
    """See the module docstring. Constructed by Ray (`ray.remote(SessionActor).options(...)`)."""

    def __init__(self, model: ModelConfig, video: VideoConfig, storage: StorageConfig, gpu_fraction: float = 0.0):
        import torch

        from serve_app.model.loading import ModelLoadError, model_load_errors

        if gpu_fraction > 0 and torch.cuda.is_available():
            # Ray's GPU share is only a scheduling token: cap this process's allocator to the same share.
            torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_fraction))
        cfg = model.model_copy(update={"model_id": video.model_id or model.model_id})
        # A checkpoint that cannot be loaded for a known reason (ModelLoadError: one line with cause and fix) does
        # not fail the constructor (Ray would print the creation task's traceback and a dying worker's stack):
        # the actor stays up without a model and `ready` raises the error, for the SessionManager to log once.
        self.load_error: Exception | None = None
        try:
            with model_load_errors(cfg):
                from serve_app.model.video import VideoRunner

                self.runner = VideoRunner.from_config(
                    cfg, score_threshold_detection=video.score_threshold_detection,
                    new_det_thresh=video.new_det_thresh, max_num_objects=video.max_num_objects,
                    hotstart_delay=video.hotstart_delay, batch_objects=video.batch_tracker_objects)
        except ModelLoadError as err:
            self.load_error = err.with_traceback(None)
            self.runner = None  # type: ignore[assignment]  # never reached: callers go through `ready` first
        self.video_cfg = video
        self.store = open_store(storage)
        self.session: Any = None  # serve_app.model.video.VideoSession when attached
        self.source: FrameSource | None = None  # its frames
        self.tenant: str | None = None
        self.session_id: str | None = None
        self.generation = 0
        self.journal: SessionJournal | None = None
        self.journal_seq = -1
        self._lock = threading.Lock()  # one operation on the session at a time
        self._epoch = 0  # bumped by every new operation: a running propagation stops at its next frame
        self._epoch_lock = threading.Lock()
        self.counters = {"propagations": 0, "cancelled": 0, "frames_streamed": 0, "ops_applied": 0,
                         "checkpoints": 0, "rebuilds": 0}
        self._model_seconds = _video_seconds_counter()

    # ------------------------------------------------------------------ lifecycle
    def ready(self) -> dict[str, Any]:
        """Answers once the model is loaded (pool warm-up, pending-resource checks); raises the constructor's
        ModelLoadError when the model could not be loaded."""
        if self.load_error is not None:
            raise self.load_error
        return {"model": self.runner.info.model_id, "device": self.runner.info.device,
                "session_id": self.session_id}

    def attach(self, tenant: str, session_id: str, generation: int) -> AttachInfo:
        """Become the owner of `session_id`: rebuild its state from the newest loadable checkpoint plus the
        journal tail (or a full replay). Idempotent for the same session and generation."""
        with self._lock:
            if self.session_id == session_id and self.generation == generation and self.session is not None:
                return self._info(None, 0)
            meta = load_video_meta(self.store, tenant, session_id)
            source = FrameSource(meta.num_frames, meta.height, meta.width, self._frame_reader(tenant, session_id))
            self.source = source
            journal = SessionJournal(self.store, tenant, session_id)
            checkpoints = CheckpointStore(self.store, tenant, session_id)
            expected = self.runner.checkpoint_header()
            found = checkpoints.latest(accept=lambda h: h.get("session") == expected)
            session, from_seq = None, None
            if found is not None:
                try:
                    session = self.runner.load_session(found[1], source)
                    from_seq = found[0]
                except SessionIncompatible as exc:
                    log.warning("session %s: checkpoint %s not loadable (%s); replaying", session_id, found[0], exc)
            plan = journal.rebuild_plan(from_seq)
            if plan.checkpoint_seq is None:
                session = self.runner.new_session(source)
            self.session, self.tenant, self.session_id, self.generation = session, tenant, session_id, generation
            self.journal, self.journal_seq = journal, plan.last_seq
            for entry in plan.entries:
                self._replay(entry)
            if plan.entries or from_seq is not None:
                self.counters["rebuilds"] += 1
            log.info("session %s attached (generation %d): checkpoint %s + %d journal entries", session_id,
                     generation, plan.checkpoint_seq, len(plan.entries))
            return self._info(plan.checkpoint_seq, len(plan.entries))

    def detach(self, checkpoint: bool = True) -> int | None:
        """Park: checkpoint (optional) and drop the session's state; the actor can then serve another session.
        Returns the checkpoint's seq (None if none was written)."""
        self._bump()
        with self._lock:
            seq = self._checkpoint() if checkpoint and self.session is not None else None
            self.session = self.tenant = self.session_id = self.journal = None
            return seq

    def describe(self) -> dict[str, Any]:
        session = self.session
        return {"session_id": self.session_id, "generation": self.generation, "journal_seq": self.journal_seq,
                "object_ids": session.object_ids if session is not None else [],
                "prompts": session.prompts if session is not None else [],
                "state_bytes": session.state_nbytes() if session is not None else 0,
                "counters": {**self.counters, **(session.counters.snapshot() if session is not None else {})}}

    def check_health(self) -> None:
        self.runner.check_health()

    # ------------------------------------------------------------------ operations
    def apply(self, session_id: str, op: JournalOp, args: dict[str, Any], request_id: str | None = None
              ) -> VideoFrameResult | None:
        """One mutating operation (add_text | add_objects | remove_object | reset), journaled first.
        Returns the prompted frame's result (None for remove_object / reset)."""
        self._bump()
        with self._lock:
            journal = self._owned(session_id)
            self._validate(op, args)
            entry = journal.append(op, args, request_id, expected_seq=self.journal_seq + 1)  # write-ahead
            self.journal_seq = entry.seq
            self.counters["ops_applied"] += 1
            # an op the model refuses stays journaled: a replay refuses it the same way and skips it
            started = time.perf_counter()
            try:
                return self._apply(op, args)
            finally:
                self._charge(time.perf_counter() - started)

    def propagate(self, session_id: str, start_frame_index: int, direction: str, max_frames: int | None,
                  request_id: str | None = None) -> Iterator[VideoFrameResult | PropagationEnd]:
        """Stream one VideoFrameResult per frame as it is computed, then a PropagationEnd. Stops at the next
        frame when another operation starts or `cancel` is called (status `cancelled`)."""
        epoch = self._bump()
        with self._lock:
            journal = self._owned(session_id)
            self.counters["propagations"] += 1
            n = 0
            stopped = False
            processed_before = self.session.counters.frames_processed

            def should_stop() -> bool:
                nonlocal stopped
                stopped = stopped or self._epoch != epoch
                return stopped

            started, waited = time.perf_counter(), 0.0  # waited: suspended at a yield (the consumer's time)
            try:
                for result in self.session.propagate(start_frame_index, direction, max_frames, should_stop=should_stop):
                    n += 1
                    self.counters["frames_streamed"] += 1
                    paused = time.perf_counter()
                    yield result
                    waited += time.perf_counter() - paused
            except GeneratorExit:  # ray.cancel of the stream (the caller went away): stopped at a yield
                stopped = True
                raise
            finally:
                # journal what really ran (frame steps, not frames yielded: hotstart may hold results back), so
                # a rebuild replays exactly the same steps
                self._charge(time.perf_counter() - started - waited)
                processed = self.session.counters.frames_processed - processed_before
                args = {"start_frame_index": start_frame_index, "direction": direction, "max_frames": max_frames,
                        "completed": not stopped, "frames_processed": processed}
                if n or processed:
                    entry = journal.append("propagate", args, request_id, expected_seq=self.journal_seq + 1)
                    self.journal_seq = entry.seq
                if stopped:
                    self.counters["cancelled"] += 1
                elif self.video_cfg.checkpoint_after_propagate and n:
                    self._checkpoint()
            yield PropagationEnd("cancelled" if stopped else "done", n)

    def save_state(self, session_id: str, key: str) -> int:
        """Store the session's inference state at `key` (a key of this service, e.g. a pcs_video job's
        checkpoint); returns its size. Not journaled: the caller restores it with `restore_state`."""
        self._bump()
        with self._lock:
            self._owned(session_id)
            data = self.session.save()
            self.store.put(key, data, "application/octet-stream")
            self.counters["checkpoints"] += 1
            return len(data)

    def restore_state(self, session_id: str, key: str) -> None:
        """Replace the session's inference state with the one `save_state` stored at `key` (bit-identical
        continuation). SECURITY: a pickle: only keys this service wrote (never client-supplied). Raises
        SessionIncompatible when it was saved by another model/transformers version. Not journaled: a rebuild
        from the journal does not see it, so a caller that restores must restore again after a rebuild
        (pcs_video does so at every attempt)."""
        self._bump()
        with self._lock:
            self._owned(session_id)
            assert self.source is not None
            self.session = self.runner.load_session(self.store.get(key).data, self.source)
            self.counters["rebuilds"] += 1

    def cancel(self, session_id: str) -> None:
        """Stop a running propagation at its next frame."""
        if session_id == self.session_id:
            self._bump()

    # ------------------------------------------------------------------ internals
    def _bump(self) -> int:
        with self._epoch_lock:
            self._epoch += 1
            return self._epoch

    def _charge(self, seconds: float) -> None:
        """Model time of the attached session's tenant: sam3_tenant_video_seconds_total{tenant}."""
        if self._model_seconds is not None and self.tenant is not None:
            self._model_seconds.inc(max(0.0, seconds), tags={"tenant": self.tenant})

    def _owned(self, session_id: str) -> SessionJournal:
        if self.session is None or session_id != self.session_id or self.journal is None:
            raise Conflict(f"this actor does not hold session {session_id}", "session_moved")
        return self.journal

    def _info(self, from_seq: int | None, replayed: int) -> AttachInfo:
        assert self.session_id is not None
        return AttachInfo(self.session_id, self.generation, from_seq, replayed, list(self.session.object_ids))

    def _frame_reader(self, tenant: str, session_id: str):
        store = self.store

        def get_frame(i: int) -> np.ndarray:
            return decode_jpeg(store.get(keys.session_frame_key(tenant, session_id, i)).data)
        return get_frame

    def _validate(self, op: str, args: dict[str, Any]) -> None:
        """Session limits (video.limits) that the model layer does not know."""
        limits = self.video_cfg.limits
        if op == "add_text" and len(self.session.prompts) >= limits.max_text_prompts \
                and args["text"].strip() not in self.session.prompts:
            raise InvalidInput(f"a session has at most {limits.max_text_prompts} text prompts", "too_many_prompts")
        if op == "add_objects":
            new = {o.get("obj_id") for o in args["objects"]} - set(self.session.object_ids)
            if len(self.session.object_ids) + len(new) > limits.max_objects:
                raise InvalidInput(f"a session tracks at most {limits.max_objects} objects", "too_many_objects")

    def _apply(self, op: str, args: dict[str, Any]) -> VideoFrameResult | None:
        s = self.session
        if op == "add_text":
            return s.add_text(args["frame_index"], args["text"])
        if op == "add_objects":
            return s.add_objects(args["frame_index"], objects_from_args(args["objects"]))
        if op == "remove_object":
            s.remove_object(args["obj_id"])
            return None
        if op == "reset":
            s.reset()
            return None
        raise InvalidInput(f"unknown operation {op!r}", "invalid_operation")

    def _replay(self, entry: JournalEntry) -> None:
        """Apply one journal entry during a rebuild. An entry the model refused at the time is refused again
        (same state, same input) and skipped."""
        try:
            if entry.op == "propagate":
                a = entry.args
                counters = self.session.counters
                target = counters.frames_processed + a["frames_processed"]
                partial = not a["completed"]
                for _ in self.session.propagate(a["start_frame_index"], a["direction"], a["max_frames"],
                                                should_stop=lambda: partial and counters.frames_processed >= target):
                    pass
            else:
                self._apply(entry.op, entry.args)
        except (InvalidInput, NotFound) as exc:
            log.info("replay of %s #%d refused again (%s): skipped", entry.op, entry.seq, exc.code)

    def _checkpoint(self) -> int | None:
        if self.session is None or self.tenant is None or self.session_id is None or self.journal_seq < 0:
            return None
        store = CheckpointStore(self.store, self.tenant, self.session_id)
        store.save(self.journal_seq, self.session.save(), {"session": self.runner.checkpoint_header()})
        store.prune(keep=2)
        self.counters["checkpoints"] += 1
        return self.journal_seq
