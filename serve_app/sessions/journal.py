"""`SessionJournal`: the ordered, append-only prompt journal of one video session.

Keys: `t/{tenant}/sessions/{sid}/journal/{seq:010d}` (`keys.session_journal_key`), one JSON `JournalEntry`
per object, `seq` = 0, 1, 2, … so a prefix listing returns the entries in order.

Invariants:
- WRITE-AHEAD: the owner appends an entry BEFORE it applies the op to the live session. If the actor dies
  after the append, a rebuild replays the op; if the op itself fails, the entry stays (the journal is
  append-only), so validate an op fully before journaling it, and a replayer must treat an entry whose op
  raises InvalidInput as a no-op (the original request got that same error). A `propagate` that was cut
  short (client gone, actor lost) is replayed in full: its args bound the work (`max_frames`).
- ONE WRITER PER SEQ: every entry is written with If-None-Match, so two writers can never both write the
  same seq. Without `expected_seq` the loser moves on to the next free seq; with `expected_seq` (the owner
  saying "this must be entry N") a clash is a Conflict (`journal_conflict`): someone else, e.g. a zombie
  actor of an older generation, wrote to this session.
- GAP-FREE: an entry N is only written once N-1 exists, so seqs are 0..last with no holes.
- Each entry carries a random `entry_id`: when an S3 put is retried after a lost response and reports
  PreconditionFailed although it landed, the entry found at that seq is recognised as our own.
- Entries are at most `max_entry_bytes` (default 256 KiB) of JSON; `args` must be plain JSON (no NaN).
- Only entries after the last `reset` matter for a rebuild (`since_reset`); with a checkpoint covering
  seq C, only entries after C (`tail`), unless one of them is a `reset` (`rebuild_plan` decides).

Methods block (storage I/O); a SessionJournal instance is thread-safe. No Ray/FastAPI/torch here.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

log = logging.getLogger("serve_app.sessions")

JournalOp = Literal["add_text", "add_objects", "add_clicks", "add_mask", "remove_object", "reset", "propagate"]
JOURNAL_OPS: frozenset[str] = frozenset(get_args(JournalOp))
MAX_ENTRY_BYTES = 256 * 1024

_JSON = "application/json"
_PAGE = 1000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def journal_prefix(tenant: str, session_id: str) -> str:
    return keys.session_prefix(tenant, session_id) + "journal/"


class JournalEntry(BaseModel):
    """One prompt op. `args` are the op's JSON arguments, e.g. add_clicks: {"frame_index", "obj_id",
    "points" (xy pixels), "labels", "box" (xyxy pixels)?, "clear_old"?}; add_text: {"text", "frame_index"?};
    add_mask: {"frame_index", "obj_id", "mask" (COCO RLE)}; remove_object: {"obj_id"};
    propagate: {"start_frame_index", "direction", "max_frames"}; reset: {}."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0)
    op: JournalOp
    args: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    request_id: str | None = None
    entry_id: str = Field(description="Random token of this append (recognises our own write after a retry).")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> JournalEntry:
        return cls.model_validate_json(data)


def since_reset(entries: Iterable[JournalEntry]) -> list[JournalEntry]:
    """The entries after the last `reset` (all of them if there is none), in seq order; the reset itself
    is dropped: replaying onto a fresh session starts from the state a reset leaves."""
    ordered = sorted(entries, key=lambda e: e.seq)
    for i in range(len(ordered) - 1, -1, -1):
        if ordered[i].op == "reset":
            return ordered[i + 1:]
    return ordered


@dataclass(frozen=True)
class RebuildPlan:
    """How to rebuild a session: load the checkpoint at `checkpoint_seq` (None: start from a fresh session
    on the video) and replay `entries` in order. `last_seq` is the last journal seq (-1: empty journal)."""

    checkpoint_seq: int | None
    entries: list[JournalEntry]
    last_seq: int


class SessionJournal:
    """The journal of one session (see the module docstring for keys and invariants)."""

    def __init__(self, store: ArtifactStore, tenant: str, session_id: str, *, max_entry_bytes: int = MAX_ENTRY_BYTES,
                 max_attempts: int = 100):
        self.store = store
        self.tenant = keys.validate_tenant(tenant)
        self.session_id = keys.validate_id(session_id, "session_id")
        self.prefix = journal_prefix(self.tenant, self.session_id)
        self.max_entry_bytes = max_entry_bytes
        self.max_attempts = max_attempts
        self._known_last = -1  # highest seq known to exist (a lower bound of last_seq; only grows)
        self._lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------------

    def _key(self, seq: int) -> str:
        return keys.session_journal_key(self.tenant, self.session_id, seq)

    def _seq_of(self, key: str) -> int | None:
        tail = key[len(self.prefix):]
        return int(tail) if key.startswith(self.prefix) and tail.isdigit() else None

    def _saw(self, seq: int) -> None:
        with self._lock:
            self._known_last = max(self._known_last, seq)

    def _read(self, seq: int) -> JournalEntry:
        return JournalEntry.from_bytes(self.store.get(self._key(seq)).data)

    def _list_after(self, after_seq: int) -> list[int]:
        """Seqs of the stored entries after `after_seq`, ascending (paginated listing)."""
        start_after = self._key(after_seq) if after_seq >= 0 else None
        seqs: list[int] = []
        while True:
            page = self.store.list(self.prefix, start_after=start_after, limit=_PAGE)
            seqs.extend(s for s in (self._seq_of(info.key) for info in page) if s is not None)
            if len(page) < _PAGE:
                return seqs
            start_after = page[-1].key

    # -- API ---------------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The seq of the newest entry, -1 if the journal is empty (lists only past what this instance saw)."""
        with self._lock:
            known = self._known_last
        seqs = self._list_after(known)
        if seqs:
            self._saw(seqs[-1])
            return seqs[-1]
        return known

    def append(self, op: JournalOp, args: dict | None = None, request_id: str | None = None,
               expected_seq: int | None = None) -> JournalEntry:
        """Write the next entry (BEFORE applying the op) and return it.

        Without `expected_seq` the entry takes the next free seq, even against concurrent writers. With it,
        the entry must get exactly that seq: Conflict (`journal_conflict`) if another entry holds it or if
        it would leave a gap. Raises InvalidInput for an unknown op (`invalid_journal_op`), args that are not
        plain JSON (`invalid_journal_entry`) or an entry over the size limit (`journal_entry_too_large`).
        """
        if op not in JOURNAL_OPS:
            raise InvalidInput(f"unknown journal op {op!r}", "invalid_journal_op")
        args = {} if args is None else args
        try:  # plain JSON only: what is journaled must replay exactly
            args = json.loads(json.dumps(args, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"journal args are not plain JSON: {exc}", "invalid_journal_entry") from None
        if not isinstance(args, dict):
            raise InvalidInput("journal args must be a JSON object", "invalid_journal_entry")
        if expected_seq is not None and (not isinstance(expected_seq, int) or expected_seq < 0):
            raise InvalidInput("expected_seq must be a non-negative integer", "invalid_journal_entry")
        entry_id = secrets.token_hex(8)
        seq = expected_seq if expected_seq is not None else self.last_seq() + 1
        for _ in range(self.max_attempts):
            entry = JournalEntry(seq=seq, op=op, args=args, created_at=utcnow(), request_id=request_id,
                                 entry_id=entry_id)
            data = entry.to_bytes()
            if len(data) > self.max_entry_bytes:
                raise InvalidInput(f"journal entry is {len(data)} bytes, limit {self.max_entry_bytes}",
                                   "journal_entry_too_large")
            if expected_seq is not None and seq > 0 and seq - 1 > self._known_last:
                self._require(seq - 1)
            try:
                self.store.put(self._key(seq), data, _JSON, if_none_match=True)
                self._saw(seq)
                return entry
            except PreconditionFailed:
                try:
                    existing = self._read(seq)
                except NotFound:  # should not happen (no one deletes single entries): try the same seq again
                    continue
                self._saw(seq)
                if existing.entry_id == entry_id:  # our write landed; the response was lost
                    return existing
                if expected_seq is not None:
                    raise Conflict(f"journal entry {seq} of session {self.session_id} was written by someone else",
                                   "journal_conflict") from None
                seq = max(seq, self.last_seq()) + 1
        raise Conflict(f"journal of session {self.session_id} is too contended; retry", "journal_busy")

    def _require(self, seq: int) -> None:
        """Conflict (`journal_conflict`) unless entry `seq` exists (an append at seq+1 would leave a gap)."""
        try:
            self.store.head(self._key(seq))
        except NotFound:
            raise Conflict(f"journal of session {self.session_id} has no entry {seq}: appending {seq + 1} "
                           "would leave a gap", "journal_conflict") from None
        self._saw(seq)

    def entries(self, after_seq: int = -1) -> list[JournalEntry]:
        """The entries with seq > `after_seq`, in seq order (all of them by default)."""
        out = []
        for seq in self._list_after(after_seq):
            try:
                entry = self._read(seq)
            except NotFound:  # deleted meanwhile (the whole session is being deleted)
                continue
            if entry.seq != seq:
                log.warning("journal entry at seq %d of session %s says seq %d; skipped", seq, self.session_id,
                            entry.seq)
                continue
            out.append(entry)
        if out:
            self._saw(out[-1].seq)
        return out

    def tail(self, after_seq: int) -> list[JournalEntry]:
        """What to replay on top of a checkpoint covering `after_seq`: the entries after it, in order."""
        return self.entries(after_seq)

    since_reset = staticmethod(since_reset)

    def rebuild_plan(self, checkpoint_seq: int | None) -> RebuildPlan:
        """What a rebuild must do given the newest usable checkpoint (None: none). A `reset` after the
        checkpoint makes the checkpoint useless: then start fresh and replay what follows the reset."""
        if checkpoint_seq is not None:
            tail = self.tail(checkpoint_seq)
            last = tail[-1].seq if tail else checkpoint_seq
            if not any(e.op == "reset" for e in tail):
                return RebuildPlan(checkpoint_seq, tail, last)
            return RebuildPlan(None, since_reset(tail), last)
        everything = self.entries()
        return RebuildPlan(None, since_reset(everything), everything[-1].seq if everything else -1)
