"""`SessionRecord` and `SessionStore`: the state of one video session, stored as JSON in object storage.

Keys (tenant-scoped, ids validated by `serve_app.storage.keys`):

    t/{tenant}/sessions/{sid}/record.json      the SessionRecord (this module)
    t/{tenant}/sessions/{sid}/journal/{seq}    prompt journal entries (serve_app.sessions.journal)
    t/{tenant}/sessions/{sid}/checkpoints/…    session checkpoints (serve_app.sessions.checkpoints)
    t/{tenant}/sessions/{sid}/frames/{i}.jpg   extracted frames, t/{tenant}/sessions/{sid}/video the source
    t/{tenant}/sessions-index/{sid}            marker: the session exists (what `list` scans; empty body)

The index marker exists so that listing sessions never walks through thousands of frame keys. `create`
writes it BEFORE the record (every record a client was told about is listable); `delete_all` deletes it
LAST (a delete that crashed halfway leaves a marker whose record is gone or `deleted`: run `delete_all`
again for it). `list` skips markers without a record.

Lifecycle (owned by the SessionManager; every write is a conditional write on the record's ETag):

    ingesting --frames extracted--> ready <--rebuild/resume-- parked
        |                            |  \\--idle--> parked
        \\--decode error--> failed    \\--DELETE--> deleted (tombstone while `delete_all` runs)

Invariants:
- One writer wins per ETag: `mutate` is read -> fn -> put(if_match=etag), retried (bounded) on a lost race,
  so concurrent mutations all apply and none is lost; `fn` must therefore be safe to call more than once.
- `revision` counts writes; `write_id` is fresh per write so a conditional put whose response was lost
  (the S3 client retried it and got 412 although it landed) is recognised as ours instead of re-applied.
- The journal and the checkpoints themselves (not fields here) say what a rebuild replays.
  `actor.generation` goes up by one per (re)build, so a zombie actor of an older generation can be told
  apart from the owner.

Methods block (storage I/O): from asyncio call them through `asyncio.to_thread`. No Ray/FastAPI/torch here.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

log = logging.getLogger("serve_app.sessions")

SessionState = Literal["ingesting", "ready", "failed", "parked", "deleted"]
LIVE_STATES: frozenset[str] = frozenset({"ingesting", "ready", "parked"})

_JSON = "application/json"
_DELETE_THREADS = 8


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_session_id() -> str:
    """A fresh session id that sorts NEWEST first (same scheme as job ids), so `list` is newest first."""
    return keys.new_job_id()


def session_record_key(tenant: str, session_id: str) -> str:
    return keys.session_prefix(tenant, session_id) + "record.json"


def sessions_index_prefix(tenant: str) -> str:
    """Prefix of the per-session index markers (`list` scans it; one empty object per session)."""
    return f"{keys.tenant_prefix(tenant)}sessions-index/"


def session_index_key(tenant: str, session_id: str) -> str:
    return sessions_index_prefix(tenant) + keys.validate_id(session_id, "session_id")


# -- the record ------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoInfo(_Model):
    """The decoded video as the session sees it (after fps/max_frames sub-sampling)."""

    num_frames: int = Field(ge=0, description="Frames the session holds (frame indices 0..num_frames-1).")
    fps: float = Field(gt=0, description="Frame rate of the session's frames (after sub-sampling).")
    source_fps: float | None = Field(None, description="Frame rate of the source video, if known.")
    width: int = Field(ge=1, description="Frame width in pixels (after EXIF/rotation, before model resize).")
    height: int = Field(ge=1, description="Frame height in pixels.")
    duration_s: float | None = Field(None, ge=0, description="Duration of the source video in seconds.")


class SessionSource(_Model):
    """Where the video came from (at most one field is usually set)."""

    video_id: str | None = None
    upload_id: str | None = None
    url: str | None = None
    job_id: str | None = Field(None, description="The pcs_video job that runs this session (not interactive).")


class ActorRef(_Model):
    """The named Ray actor that owns the session. `name` is None while no actor is running (parked)."""

    name: str | None = None
    namespace: str | None = None
    generation: int = Field(0, ge=0, description="Bumped each time an actor is (re)built for this session.")


class IngestProgress(_Model):
    done: int = Field(0, ge=0, description="Frames extracted and stored so far.")
    total: int | None = Field(None, ge=0, description="Frames expected, when known.")


class SessionError(_Model):
    """Why a session failed: a stable `code` (e.g. `invalid_video`, `rebuild_failed`) and a message."""

    code: str
    message: str


class SessionOptions(_Model):
    """What the client asked for at creation."""

    max_frames: int | None = Field(None, ge=1, description="Keep at most this many frames.")
    fps: float | None = Field(None, gt=0, description="Sub-sample the video to this frame rate.")


class SessionRecord(_Model):
    session_id: str
    tenant: str
    state: SessionState
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime
    video: VideoInfo | None = None
    source: SessionSource | None = None
    actor: ActorRef = Field(default_factory=ActorRef)
    progress: IngestProgress = Field(default_factory=IngestProgress)
    error: SessionError | None = None
    options: SessionOptions = Field(default_factory=SessionOptions)
    removed_obj_ids: list[int] = Field(
        default_factory=list, description="Objects removed since the last reset: stored frame results still "
        "holding them are filtered when read (cleared by a reset, which also deletes the stored results).")
    revision: int = Field(0, ge=0, description="Number of writes of this record (diagnostics).")
    write_id: str = Field("", description="Token of the write that produced this version (lost-response check).")

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionRecord:
        return cls.model_validate_json(data)


Mutation = Callable[[SessionRecord], SessionRecord | None]


# -- the store -------------------------------------------------------------------------------------


class SessionStore:
    """Session records of one tenant in an ArtifactStore (see the module docstring for keys and invariants)."""

    def __init__(self, store: ArtifactStore, tenant: str = "default", *, max_attempts: int = 16):
        self.store = store
        self.tenant = keys.validate_tenant(tenant)
        self.max_attempts = max_attempts

    # -- record I/O --------------------------------------------------------------------------------

    def _key(self, session_id: str) -> str:
        return session_record_key(self.tenant, session_id)

    def read(self, session_id: str) -> tuple[SessionRecord, str]:
        """The record and its ETag. Raises NotFound (code session_not_found), InvalidInput for a bad id."""
        key = self._key(session_id)
        try:
            blob = self.store.get(key)
        except NotFound:
            raise NotFound(f"no session {session_id}", "session_not_found") from None
        return SessionRecord.from_bytes(blob.data), blob.etag

    def _stamp(self, record: SessionRecord, revision: int, now: datetime) -> SessionRecord:
        return record.model_copy(update={"revision": revision, "write_id": secrets.token_hex(8), "updated_at": now})

    # -- API ---------------------------------------------------------------------------------------

    def create(
        self,
        session_id: str | None = None,
        *,
        state: SessionState = "ingesting",
        source: SessionSource | None = None,
        options: SessionOptions | None = None,
        video: VideoInfo | None = None,
        actor: ActorRef | None = None,
    ) -> SessionRecord:
        """Store a new session record (If-None-Match). `session_id` defaults to `new_session_id()`.

        Raises Conflict (code session_exists) if the id is taken, InvalidInput for an invalid id.
        """
        session_id = new_session_id() if session_id is None else keys.validate_id(session_id, "session_id")
        now = utcnow()
        record = SessionRecord(
            session_id=session_id, tenant=self.tenant, state=state, created_at=now, updated_at=now,
            last_used_at=now, source=source, options=options or SessionOptions(), video=video,
            actor=actor or ActorRef(), revision=1, write_id=secrets.token_hex(8),
        )
        self.store.put(session_index_key(self.tenant, session_id), b"", "application/octet-stream")
        try:
            self.store.put(self._key(session_id), record.to_bytes(), _JSON, if_none_match=True)
        except PreconditionFailed:
            existing, _ = self.read(session_id)
            if existing.write_id == record.write_id:  # our write landed; the response was lost
                return existing
            raise Conflict(f"session {session_id} already exists", "session_exists") from None
        return record

    def get(self, session_id: str) -> SessionRecord:
        """The session's record. Raises NotFound (code session_not_found)."""
        return self.read(session_id)[0]

    def mutate(self, session_id: str, fn: Mutation) -> SessionRecord:
        """Apply `fn` to the current record and store the result with If-Match; retry on a lost race.

        `fn` gets a deep copy of the current record and returns the new one (it may modify the copy in
        place and return it), or None to leave the record unchanged (so does returning it unmodified).
        It may raise (e.g. Conflict for a transition not allowed in the current state) to abort, and it may
        run several times. `session_id`, `tenant` and `created_at` cannot be changed; `updated_at`,
        `revision` and `write_id` are set here.
        Raises NotFound (session_not_found), or Conflict (session_busy) after `max_attempts` lost races.
        """
        for _ in range(self.max_attempts):
            current, etag = self.read(session_id)
            changed = fn(current.model_copy(deep=True))
            if changed is None:
                return current
            changed = changed.model_copy(update={
                "session_id": current.session_id, "tenant": current.tenant, "created_at": current.created_at,
            })
            if changed == current:  # nothing to write
                return current
            new = self._stamp(changed, current.revision + 1, utcnow())
            try:
                self.store.put(self._key(session_id), new.to_bytes(), _JSON, if_match=etag)
                return new
            except PreconditionFailed:
                latest, _ = self.read(session_id)  # NotFound if it was deleted meanwhile
                if latest.write_id == new.write_id:  # our write landed; the response was lost
                    return latest
                continue  # someone else wrote first: re-read and apply fn again
        raise Conflict(f"session {session_id} kept changing while being updated; retry", "session_busy")

    def list(
        self, state: SessionState | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[SessionRecord], str | None]:
        """Sessions in id order (newest first for ids from `new_session_id`), optionally only those in `state`.

        Returns (page, cursor of the next page or None). The cursor is the last session id examined; with a
        `state` filter a page may hold fewer than `limit` records while the cursor says there may be more
        (at most limit*10 records are read per call). Markers whose record is missing are skipped.
        """
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", "invalid_limit")
        prefix = sessions_index_prefix(self.tenant)
        start_after = session_index_key(self.tenant, cursor) if cursor is not None else None
        found: list[SessionRecord] = []
        examined = 0
        page_size = min(1000, limit + 1)
        while True:
            page = self.store.list(prefix, start_after=start_after, limit=page_size)
            for info in page:
                start_after = info.key
                session_id = info.key[len(prefix):]
                try:
                    record = self.get(session_id)
                except (NotFound, InvalidInput):  # being created or deleted, or not ours
                    continue
                examined += 1
                if state is None or record.state == state:
                    found.append(record)
                if len(found) == limit or examined == limit * 10:
                    return found, session_id
            if len(page) < page_size:
                return found, None

    def delete_all(self, session_id: str) -> int:
        """Delete every object of the session (record first, then journal, checkpoints, frames, video, and
        finally the index marker); return how many objects were deleted. Idempotent: a missing session
        deletes nothing and does not raise.

        Stop the owner first (mark the record `deleted`, kill the actor): objects written concurrently with
        the deletion may survive it. Deletes run on a few threads (the store has no batch delete).
        """
        prefix = keys.session_prefix(self.tenant, session_id)
        record_key = self._key(session_id)
        deleted = 0
        try:
            self.store.head(record_key)
            self.store.delete(record_key)  # clients see the session gone at once
            deleted += 1
        except NotFound:
            pass
        with ThreadPoolExecutor(_DELETE_THREADS, thread_name_prefix="session-delete") as pool:
            for _ in range(2):  # a second pass picks up objects written during the first
                start_after = None
                while True:
                    page = self.store.list(prefix, start_after=start_after, limit=1000)
                    if not page:
                        break
                    list(pool.map(self.store.delete, [info.key for info in page]))
                    deleted += len(page)
                    start_after = page[-1].key
        self.store.delete(session_index_key(self.tenant, session_id))
        return deleted
