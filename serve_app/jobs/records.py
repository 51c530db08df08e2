"""`JobRecord`: the state of one job, stored as JSON at `t/{tenant}/jobs/{job_id}/record.json`.

Lifecycle (every transition is a conditional write on the record's ETag, see service.py):

    queued --claim--> running --complete--> succeeded
      |                 |  \\--fail(retryable, attempts left) / lease expired + reclaimed--> queued/running
      |                 \\--fail / attempts exhausted--> failed
      \\--cancel--> cancelled

`succeeded`, `failed` and `cancelled` are terminal. Timestamps are UTC, written by whichever host made the
transition: they are for people, never compared across hosts (lease expiry is observed, see service.py).

Versions: reading is lenient, writing is strict. `from_bytes` ignores fields this version does not know (a
newer version wrote them, e.g. during a blue/green upgrade) and raises `UnreadableRecord` for anything it
cannot use; the model itself forbids unknown fields, so code of this version cannot write a misspelt one
(`evolve` validates every change). The fields added for crash isolation are left out of the JSON while
they hold their defaults, so records of jobs that never lost a worker stay readable by older versions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import Sam3Error, format_validation_errors

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UnreadableRecord(Sam3Error):
    """A stored job record that is not JSON or not a JobRecord this version can use (a bug or damage, hence
    500). Recovery quarantines it; listings skip it."""

    code = "job_record_unreadable"


class JobError(BaseModel):
    """Why a job failed: a stable `code` (e.g. `attempts_exhausted`, `invalid_image`) and a message."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class JobProgressView(BaseModel):
    """The running attempt's latest progress report (written with its heartbeats)."""

    model_config = ConfigDict(extra="forbid")

    done: int = Field(ge=0)
    total: int = Field(ge=0)
    unit: str = "frames"


class JobRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    tenant: str
    kind: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = Field(None, description="When the latest attempt was claimed.")
    finished_at: datetime | None = None
    attempts: int = Field(0, description="Claims so far, the current one included.")
    max_attempts: int
    lease_owner: str | None = Field(None, description="Worker running the current attempt (diagnostics).")
    lease_id: str | None = Field(None, description="Token of the current claim; heartbeats and results must carry it.")
    lease_expires_at: datetime | None = Field(
        None, description="The lease holder's own clock plus lease_s (diagnostics: expiry is observed, not read).")
    input_key: str
    result_key: str | None = None
    overlay_key: str | None = None
    error: JobError | None = None
    idempotency_key: str | None = Field(None, description="sha256 of the client's Idempotency-Key, if any.")
    body_sha256: str = Field(description="sha256 of the canonical JSON of {kind, input}.")
    lease_alone: bool = Field(False, description="The current claim's worker runs no other job meanwhile, so "
                              "if that worker dies, this job is charged for it.")
    run_alone: bool = Field(False, description="A worker died while running this job: it only runs alone from now on.")
    forgiven_attempts: int = Field(0, description="Attempts lost when a worker that was also running other jobs "
                                   "died; not counted against max_attempts.")
    progress: JobProgressView | None = Field(None, description="Latest progress report of the running attempt.")
    artifact_key: str | None = Field(None, description="An artifact the kind stored itself (export ZIP).")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def charged_attempts(self) -> int:
        """Attempts that count against `max_attempts`."""
        return self.attempts - self.forgiven_attempts

    def evolve(self, **changes: Any) -> JobRecord:
        """A copy with `changes`, validated like a new record (an unknown field or a wrong type is a bug)."""
        return JobRecord.model_validate({**self.model_dump(), **changes})

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude={
            name for name, default in _ADDED_FIELDS.items() if getattr(self, name) == default
        }).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> JobRecord:
        """Parse a stored record, ignoring unknown fields. Raises UnreadableRecord."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:  # not JSON (UnicodeDecodeError is a ValueError)
            raise UnreadableRecord(f"job record is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise UnreadableRecord(f"job record is a JSON {type(raw).__name__}, not an object")
        known = {k: v for k, v in raw.items() if k in cls.model_fields}
        for name, model in (("error", JobError), ("progress", JobProgressView)):
            if isinstance(known.get(name), dict):
                known[name] = {k: v for k, v in known[name].items() if k in model.model_fields}
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            raise UnreadableRecord("job record does not validate: " + format_validation_errors(exc.errors())) from None


# Fields newer than the first record format, and their defaults: left out of the JSON while at the default.
_ADDED_FIELDS: dict[str, object] = {"lease_alone": False, "run_alone": False, "forgiven_attempts": 0,
                                    "progress": None, "artifact_key": None}
