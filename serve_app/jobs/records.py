"""`JobRecord`: the state of one job, stored as JSON at `t/{tenant}/jobs/{job_id}/record.json`.

Lifecycle (every transition is a conditional write on the record's ETag, see service.py):

    queued --claim--> running --complete--> succeeded
      |                 |  \\--fail(retryable, attempts left) / lease expired + reclaimed--> queued/running
      |                 \\--fail / attempts exhausted--> failed
      \\--cancel--> cancelled

`succeeded`, `failed` and `cancelled` are terminal. Timestamps are UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobError(BaseModel):
    """Why a job failed: a stable `code` (e.g. `attempts_exhausted`, `invalid_image`) and a message."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


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
    lease_expires_at: datetime | None = None
    input_key: str
    result_key: str | None = None
    overlay_key: str | None = None
    error: JobError | None = None
    idempotency_key: str | None = Field(None, description="sha256 of the client's Idempotency-Key, if any.")
    body_sha256: str = Field(description="sha256 of the canonical JSON of {kind, input}.")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> JobRecord:
        return cls.model_validate_json(data)
