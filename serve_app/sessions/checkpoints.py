"""`CheckpointStore`: trusted snapshots of one video session's inference state, for fast rebuilds.

Keys, per checkpoint covering journal entries 0..seq (the state right after applying entry `seq`):

    t/{tenant}/sessions/{sid}/checkpoints/{seq:010d}.pt     the opaque bytes (made elsewhere by torch.save)
    t/{tenant}/sessions/{sid}/checkpoints/{seq:010d}.json   the header: {"format", "seq", "created_at",
                                                            "sha256", "size", …the caller's fields}

SECURITY: the bytes are pickles (`torch.save` of a transformers inference session; loading one runs code).
They are only ever written by the session owner and read back from this service's own tenant prefix,
at keys built here from a validated session id; never load a checkpoint from a client-supplied location
or URL, and never accept one uploaded by a client.

Invariants:
- The data is written BEFORE its header: the header is the commit marker, so a checkpoint without a header
  (a save that crashed) is invisible to `latest` and removed by `prune` once older than the kept ones.
- `latest(accept)` returns the newest checkpoint whose header passes `accept` (e.g. same transformers
  version and model id, which pickles need) and whose bytes match the header's size and sha256; a missing,
  corrupted or rejected one is skipped with a log line and the next older one is tried.
- `prune` deletes the header before the data, so a half-pruned checkpoint is also invisible.
- Saving the same seq twice overwrites (both describe the same state); if two writers interleave, the
  header and data may disagree, and the sha256 check then skips that checkpoint.

Methods block (storage I/O). No Ray/FastAPI/torch here. A checkpoint is one PUT of `data` held in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone

from serve_app.errors import InvalidInput, NotFound
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

log = logging.getLogger("serve_app.sessions")

FORMAT_VERSION = 1
RESERVED_HEADER_FIELDS = frozenset({"format", "seq", "created_at", "sha256", "size"})

_JSON = "application/json"
_PAGE = 1000


def checkpoints_prefix(tenant: str, session_id: str) -> str:
    return keys.session_prefix(tenant, session_id) + "checkpoints/"


def checkpoint_data_key(tenant: str, session_id: str, seq: int) -> str:
    return f"{checkpoints_prefix(tenant, session_id)}{_check_seq(seq):010d}.pt"


def checkpoint_header_key(tenant: str, session_id: str, seq: int) -> str:
    return f"{checkpoints_prefix(tenant, session_id)}{_check_seq(seq):010d}.json"


def _check_seq(seq: object) -> int:
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidInput("checkpoint seq must be a non-negative integer", "invalid_checkpoint_seq")
    return seq


class CheckpointStore:
    """The checkpoints of one session (see the module docstring for keys, trust and invariants)."""

    def __init__(self, store: ArtifactStore, tenant: str, session_id: str):
        self.store = store
        self.tenant = keys.validate_tenant(tenant)
        self.session_id = keys.validate_id(session_id, "session_id")
        self.prefix = checkpoints_prefix(self.tenant, self.session_id)

    def _data_key(self, seq: int) -> str:
        return checkpoint_data_key(self.tenant, self.session_id, seq)

    def _header_key(self, seq: int) -> str:
        return checkpoint_header_key(self.tenant, self.session_id, seq)

    def _stored(self) -> tuple[set[int], set[int]]:
        """(seqs with a header, seqs with data) as stored now."""
        headers: set[int] = set()
        datas: set[int] = set()
        start_after = None
        while True:
            page = self.store.list(self.prefix, start_after=start_after, limit=_PAGE)
            for info in page:
                stem, dot, ext = info.key[len(self.prefix):].partition(".")
                if dot and stem.isdigit() and ext in ("json", "pt"):
                    (headers if ext == "json" else datas).add(int(stem))
            if len(page) < _PAGE:
                return headers, datas
            start_after = page[-1].key

    def save(self, seq: int, data: bytes, header: dict | None = None) -> dict:
        """Store a checkpoint covering journal entries 0..`seq`; return the header written.

        `header` holds the caller's JSON fields that decide whether a later process may load it (e.g.
        {"transformers": "5.0.0", "model_id": "facebook/sam3", "dtype": "bfloat16", "generation": 3}); its
        names must not be one of RESERVED_HEADER_FIELDS.
        """
        _check_seq(seq)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("checkpoint data must be bytes")
        data = bytes(data)
        header = dict(header or {})
        clash = RESERVED_HEADER_FIELDS & header.keys()
        if clash:
            raise InvalidInput(f"checkpoint header fields {sorted(clash)} are reserved", "invalid_checkpoint_header")
        full = {
            **header, "format": FORMAT_VERSION, "seq": seq,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        }
        try:
            header_bytes = json.dumps(full, allow_nan=False, sort_keys=True).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"checkpoint header is not plain JSON: {exc}", "invalid_checkpoint_header") from None
        self.store.put(self._data_key(seq), data, "application/octet-stream")
        self.store.put(self._header_key(seq), header_bytes, _JSON)  # the commit marker, written last
        return full

    def seqs(self) -> list[int]:
        """Seqs of the committed checkpoints (those with a header), newest first; not yet verified."""
        return sorted(self._stored()[0], reverse=True)

    def header(self, seq: int) -> dict:
        """The header of checkpoint `seq`. Raises NotFound (checkpoint_not_found)."""
        try:
            return json.loads(self.store.get(self._header_key(seq)).data)
        except NotFound:
            raise NotFound(f"no checkpoint {seq} for session {self.session_id}", "checkpoint_not_found") from None

    def latest(self, accept: Callable[[dict], bool] | None = None) -> tuple[int, bytes] | None:
        """(seq, data) of the newest checkpoint that `accept(header)` allows and whose bytes match the header's
        sha256 and size; None if there is none. Rejected, unreadable or corrupted checkpoints are skipped
        (and logged), never returned."""
        for seq in self.seqs():
            try:
                header = self.header(seq)
            except NotFound:  # pruned meanwhile
                continue
            except ValueError:
                log.warning("checkpoint %d of session %s: header is not JSON; skipped", seq, self.session_id)
                continue
            if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION or header.get("seq") != seq:
                log.warning("checkpoint %d of session %s: unknown header format; skipped", seq, self.session_id)
                continue
            try:
                accepted = accept is None or bool(accept(header))
            except Exception:  # e.g. a header of an older layout without the field `accept` reads
                log.warning("checkpoint %d of session %s: accept() raised; skipped", seq, self.session_id,
                            exc_info=True)
                continue
            if not accepted:
                log.info("checkpoint %d of session %s: header not accepted; skipped", seq, self.session_id)
                continue
            try:
                data = self.store.get(self._data_key(seq)).data
            except NotFound:
                log.warning("checkpoint %d of session %s: data missing; skipped", seq, self.session_id)
                continue
            if len(data) != header.get("size") or hashlib.sha256(data).hexdigest() != header.get("sha256"):
                log.warning("checkpoint %d of session %s: data does not match its sha256/size (corrupted or "
                            "overwritten); skipped", seq, self.session_id)
                continue
            return seq, data
        return None

    def prune(self, keep: int = 2) -> list[int]:
        """Delete all but the `keep` newest committed checkpoints (header first, then data), plus uncommitted
        data older than the oldest kept one (a newer one may be a save in progress). Returns the deleted seqs."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        headers, datas = self._stored()
        committed = sorted(headers, reverse=True)
        kept = committed[:keep]
        floor = min(kept) if kept else None
        doomed = list(committed[keep:])
        doomed += [s for s in datas - headers if floor is None or s < floor]
        for seq in sorted(set(doomed)):
            self.store.delete(self._header_key(seq))
            self.store.delete(self._data_key(seq))
        return sorted(set(doomed))
