"""Job records across versions: reads ignore fields a newer version added, writes stay strict, and the
fields added for crash isolation stay out of the JSON while unused (older readers forbid unknown fields)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from serve_app.jobs.records import JobError, JobRecord, UnreadableRecord

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
# The fields of the first record format: what an older worker (extra="forbid") can read.
FIRST_FORMAT = {"job_id", "tenant", "kind", "status", "created_at", "updated_at", "started_at", "finished_at",
                "attempts", "max_attempts", "lease_owner", "lease_id", "lease_expires_at", "input_key", "result_key",
                "overlay_key", "error", "idempotency_key", "body_sha256"}


def record(**changes) -> JobRecord:
    fields = dict(job_id="j1", tenant="default", kind="echo", status="queued", created_at=T0, updated_at=T0,
                  max_attempts=3, input_key="t/default/jobs/j1/input.json", body_sha256="ab" * 32)
    return JobRecord(**{**fields, **changes})


def test_round_trip():
    rec = record(status="failed", attempts=2, error=JobError(code="boom", message="it broke"), finished_at=T0)
    assert JobRecord.from_bytes(rec.to_bytes()) == rec


def test_unknown_fields_of_a_newer_version_are_ignored_on_read():
    raw = json.loads(record(status="failed", error=JobError(code="x", message="y")).to_bytes())
    raw["priority"] = 7  # a field some later version adds
    raw["error"]["details"] = {"frame": 3}  # …also inside the error
    parsed = JobRecord.from_bytes(json.dumps(raw).encode())
    assert parsed == record(status="failed", error=JobError(code="x", message="y"))
    assert "priority" not in json.loads(parsed.to_bytes())  # and this version never writes them back


def test_writes_stay_strict():
    with pytest.raises(ValidationError):
        record(priority=7)  # constructing with an unknown field
    with pytest.raises(ValidationError):
        record().evolve(statuss="running")  # a misspelt transition is a bug, not a silently dropped field
    with pytest.raises(ValidationError):
        record().evolve(status="paused")  # values are validated too
    assert record().evolve(status="running", attempts=1).status == "running"


def test_isolation_fields_stay_out_of_the_json_until_used():
    plain = json.loads(record().to_bytes())
    assert set(plain) == FIRST_FORMAT  # readable by the previous version (extra="forbid")
    crashed = record(status="running", attempts=2, run_alone=True, lease_alone=True, forgiven_attempts=1)
    stored = json.loads(crashed.to_bytes())
    assert (stored["run_alone"], stored["lease_alone"], stored["forgiven_attempts"]) == (True, True, 1)
    assert JobRecord.from_bytes(crashed.to_bytes()) == crashed
    assert crashed.charged_attempts == 1


@pytest.mark.parametrize("data, says", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "JSON list"),
    (json.dumps({"job_id": "j1"}).encode(), "does not validate"),
    (json.dumps({**json.loads(record().to_bytes()), "status": "paused"}).encode(), "status"),
])
def test_unreadable_records_raise_a_typed_error(data, says):
    with pytest.raises(UnreadableRecord) as info:
        JobRecord.from_bytes(data)
    assert says in info.value.message
    assert (info.value.status_code, info.value.code) == (500, "job_record_unreadable")
