"""`JobService`: jobs whose whole state lives in object storage, made safe by conditional writes.

Objects per job (keys in serve_app.storage.keys): `input.json`, `record.json` (a JobRecord), then
`result.json` / `overlay.png`; plus `jobs-active/{job_id}` while the job is queued or running (the only
thing recovery scans) and `jobs-idem/{sha256(Idempotency-Key)}` -> {"job_id", "body_sha256"}.

Guarantees:
- Every record transition is read-check-write with If-Match on the ETag read, so of two workers racing
  for a job exactly one claim wins, and a worker whose lease was taken over can no longer write.
- A claim takes a lease (`lease_id`, `lease_expires_at`) and counts an attempt; `heartbeat` renews it.
  A job whose lease expired is claimed again by recovery, until `max_attempts` claims were made; then
  it is failed with code `attempts_exhausted`.
- `complete` writes result and overlay BEFORE flipping the record to succeeded: a reader that sees
  `succeeded` always finds the whole result.
- Submission writes the active marker before the record, so every record a client was told about is
  reachable by recovery (a marker without a record, left by a crashed submit, is removed later).
- Idempotency-Key: the first submit writes the marker with If-None-Match; a replay with the same body
  gets the same job (re-creating it if the first submit crashed halfway); another body is a 409.

Methods block (storage I/O): from asyncio call them through `asyncio.to_thread`. A worker must not run
two transitions of one job concurrently (the JobRunner serialises heartbeat and completion).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from datetime import datetime, timedelta

from serve_app.config import JobsConfig
from serve_app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed, Unavailable
from serve_app.jobs.kinds import JobKindRegistry, JobOutput
from serve_app.jobs.records import ACTIVE_STATUSES, JobError, JobRecord, JobStatus, utcnow
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

log = logging.getLogger("serve_app.jobs")

_JSON = "application/json"
_LIST_SCAN_FACTOR = 10  # a filtered list reads at most limit * this many records per page


def canonical_json(value: object) -> bytes:
    """Stable bytes for hashing: sorted keys, no whitespace, UTF-8."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"job input is not JSON: {exc}", "invalid_job_input") from None


class JobService:
    def __init__(self, store: ArtifactStore, cfg: JobsConfig, kinds: JobKindRegistry, tenant: str = "default"):
        self.store = store
        self.cfg = cfg
        self.kinds = kinds
        self.tenant = keys.validate_tenant(tenant)

    # -- record I/O --------------------------------------------------------------------------------

    def _read(self, job_id: str) -> tuple[JobRecord, str]:
        try:
            blob = self.store.get(keys.job_record_key(self.tenant, job_id))
        except NotFound:
            raise NotFound(f"no job {job_id}", "job_not_found") from None
        return JobRecord.from_bytes(blob.data), blob.etag

    def _write(self, record: JobRecord, etag: str) -> None:
        self.store.put(keys.job_record_key(self.tenant, record.job_id), record.to_bytes(), _JSON, if_match=etag)

    def _held(self, job_id: str, lease_id: str) -> tuple[JobRecord, str]:
        """The record and its ETag if the caller's claim `lease_id` still holds the job, else PreconditionFailed."""
        record, etag = self._read(job_id)
        if record.status != "running" or record.lease_id != lease_id:
            raise PreconditionFailed(f"job {job_id} is no longer held by this worker", "lease_lost")
        return record, etag

    def _deactivate(self, job_id: str) -> None:
        """Drop the active marker of a job that reached a terminal state (recovery retries if this fails)."""
        try:
            self.store.delete(keys.active_job_key(self.tenant, job_id))
        except Unavailable:
            log.warning("could not drop the active marker of job %s; recovery will", job_id)

    # -- client side -------------------------------------------------------------------------------

    def submit(self, kind: str, input: dict, idempotency_key: str | None = None) -> JobRecord:
        """Validate and store a new queued job (or return the job an Idempotency-Key already made)."""
        if not isinstance(input, dict):
            raise InvalidInput("job input must be a JSON object", "invalid_job_input")
        self.kinds.get(kind).validate(input)
        body_sha256 = hashlib.sha256(canonical_json({"kind": kind, "input": input})).hexdigest()
        idem_hash = None
        if idempotency_key is None:
            job_id = keys.new_job_id()
        else:
            marker_key = keys.idempotency_key(self.tenant, idempotency_key)
            idem_hash = marker_key.rsplit("/", 1)[1]
            job_id, is_new = self._reserve_idempotency_key(marker_key, body_sha256)
            if not is_new:
                try:
                    return self._read(job_id)[0]
                except NotFound:
                    pass  # the first submit crashed before writing the record: finish its work
        return self._create(job_id, kind, input, body_sha256, idem_hash)

    def _reserve_idempotency_key(self, marker_key: str, body_sha256: str) -> tuple[str, bool]:
        """(job id, True) if this call reserved the key, else (the id it was reserved for, False)."""
        job_id = keys.new_job_id()
        marker = canonical_json({"job_id": job_id, "body_sha256": body_sha256})
        try:
            self.store.put(marker_key, marker, _JSON, if_none_match=True)
            return job_id, True
        except PreconditionFailed:
            existing = json.loads(self.store.get(marker_key).data)
        if existing["body_sha256"] != body_sha256:
            raise Conflict("this Idempotency-Key was used with a different request body", "idempotency_key_reused")
        return existing["job_id"], False

    def _create(self, job_id: str, kind: str, input: dict, body_sha256: str, idem_hash: str | None) -> JobRecord:
        now = utcnow()
        record = JobRecord(
            job_id=job_id, tenant=self.tenant, kind=kind, status="queued", created_at=now, updated_at=now,
            max_attempts=self.cfg.max_attempts, input_key=keys.job_input_key(self.tenant, job_id),
            idempotency_key=idem_hash, body_sha256=body_sha256,
        )
        self.store.put(record.input_key, canonical_json(input), _JSON)
        self.store.put(keys.active_job_key(self.tenant, job_id), b"", "application/octet-stream")
        try:
            self.store.put(keys.job_record_key(self.tenant, job_id), record.to_bytes(), _JSON, if_none_match=True)
        except PreconditionFailed:  # a concurrent replay of the same Idempotency-Key created it first
            return self._read(job_id)[0]
        return record

    def get(self, job_id: str) -> JobRecord:
        """The job's record. Raises NotFound (code job_not_found)."""
        return self._read(job_id)[0]

    def load_input(self, record: JobRecord) -> dict:
        return json.loads(self.store.get(record.input_key).data)

    def list(
        self, status: JobStatus | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Jobs newest first, optionally only those in `status`; returns (page, cursor of the next page).

        The cursor is the last job id examined. With a status filter a page may hold fewer than `limit`
        jobs (at most limit*10 records are read per call) while a cursor says there may be more.
        """
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", "invalid_limit")
        prefix = keys.jobs_prefix(self.tenant)
        start_after = keys.job_record_key(self.tenant, cursor) if cursor is not None else None
        found: list[JobRecord] = []
        examined = 0
        page_size = min(1000, 4 * limit + 4)  # a job has up to 4 objects
        while True:
            page = self.store.list(prefix, start_after=start_after, limit=page_size)
            for info in page:
                start_after = info.key
                job_id = keys.job_id_of_record_key(self.tenant, info.key)
                if job_id is None:
                    continue
                try:
                    record = self._read(job_id)[0]
                except NotFound:  # deleted meanwhile
                    continue
                examined += 1
                if status is None or record.status == status:
                    found.append(record)
                if len(found) == limit or examined == limit * _LIST_SCAN_FACTOR:
                    return found, job_id
            if len(page) < page_size:
                return found, None

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job (idempotent for a cancelled one). Raises Conflict for any other state."""
        for _ in range(3):
            record, etag = self._read(job_id)
            if record.status == "cancelled":
                return record
            if record.status != "queued":
                raise Conflict(f"job {job_id} is {record.status}; only queued jobs can be cancelled",
                               "job_not_cancellable")
            now = utcnow()
            cancelled = record.model_copy(update={"status": "cancelled", "updated_at": now, "finished_at": now})
            try:
                self._write(cancelled, etag)
            except PreconditionFailed:
                continue  # claimed meanwhile: look again
            self._deactivate(job_id)
            return cancelled
        raise Conflict(f"job {job_id} kept changing while being cancelled; retry", "job_busy")

    # -- worker side -------------------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, now: datetime | None = None) -> JobRecord | None:
        """Take the job for one attempt if it is queued or its lease expired; None if someone else has it,
        it is terminal, or it just ran out of attempts (then it is marked failed here)."""
        now = now or utcnow()
        record, etag = self._read(job_id)
        if record.status not in ACTIVE_STATUSES:
            return None
        if record.status == "running" and record.lease_expires_at is not None and record.lease_expires_at > now:
            return None
        if record.attempts >= record.max_attempts:
            message = (f"gave up after {record.attempts} attempts: the last worker ({record.lease_owner}) "
                       "stopped renewing its lease")
            exhausted = record.model_copy(update={
                "status": "failed", "error": JobError(code="attempts_exhausted", message=message),
                "updated_at": now, "finished_at": now, "lease_id": None, "lease_expires_at": None,
            })
            try:
                self._write(exhausted, etag)
                self._deactivate(job_id)
            except PreconditionFailed:
                pass
            return None
        claimed = record.model_copy(update={
            "status": "running", "attempts": record.attempts + 1, "lease_owner": owner, "lease_id": keys.new_id(),
            "lease_expires_at": now + timedelta(seconds=self.cfg.lease_s), "started_at": now, "updated_at": now,
        })
        try:
            self._write(claimed, etag)
        except PreconditionFailed:
            return None
        return claimed

    def heartbeat(self, job_id: str, lease_id: str) -> JobRecord:
        """Renew the lease for another `lease_s`. Raises PreconditionFailed (lease_lost) if it was taken over."""
        record, etag = self._held(job_id, lease_id)
        now = utcnow()
        renewed = record.model_copy(update={"lease_expires_at": now + timedelta(seconds=self.cfg.lease_s),
                                            "updated_at": now})
        self._write(renewed, etag)
        return renewed

    def complete(self, job_id: str, lease_id: str, output: JobOutput) -> JobRecord:
        """Store the outputs, then flip the record to succeeded. Raises PreconditionFailed if the lease was lost."""
        record, _ = self._held(job_id, lease_id)
        result_key = keys.job_result_key(self.tenant, job_id)
        self.store.put(result_key, output.result_json, _JSON)
        overlay_key = None
        if output.overlay_png is not None:
            overlay_key = keys.job_overlay_key(self.tenant, job_id)
            self.store.put(overlay_key, output.overlay_png, "image/png")
        record, etag = self._held(job_id, lease_id)  # fresh ETag: the outputs may have taken a while
        now = utcnow()
        done = record.model_copy(update={
            "status": "succeeded", "result_key": result_key, "overlay_key": overlay_key, "error": None,
            "updated_at": now, "finished_at": now, "lease_id": None, "lease_expires_at": None,
        })
        self._write(done, etag)
        self._deactivate(job_id)
        return done

    def fail(self, job_id: str, lease_id: str, code: str, message: str, retryable: bool) -> JobRecord:
        """End the attempt with an error: back to queued if `retryable` and attempts remain, else failed."""
        record, etag = self._held(job_id, lease_id)
        now = utcnow()
        update = {"error": JobError(code=code, message=message), "updated_at": now,
                  "lease_id": None, "lease_expires_at": None}
        if retryable and record.attempts < record.max_attempts:
            update["status"] = "queued"  # recovery runs it again after queued_pickup_timeout_s
        else:
            if retryable:
                update["error"] = JobError(code=code, message=f"{message} (gave up after {record.attempts} attempts)")
            update.update(status="failed", finished_at=now)
        ended = record.model_copy(update=update)
        self._write(ended, etag)
        if ended.terminal:
            self._deactivate(job_id)
        return ended

    def recover(self, now: datetime | None = None) -> builtins.list[str]:  # `list` is a method here
        """Ids of active jobs that need a worker, oldest first: queued for longer than
        `queued_pickup_timeout_s`, or running with an expired lease. Also drops stale active markers."""
        now = now or utcnow()
        pickup = timedelta(seconds=self.cfg.queued_pickup_timeout_s)
        prefix = keys.active_jobs_prefix(self.tenant)
        due: list[str] = []
        start_after = None
        while True:
            page = self.store.list(prefix, start_after=start_after, limit=1000)
            for info in page:
                job_id = info.key[len(prefix):]
                try:
                    record = self._read(job_id)[0]
                except NotFound:  # a submit that crashed before writing the record (never acknowledged)
                    if now - info.last_modified > pickup:
                        self.store.delete(info.key)
                    continue
                if record.terminal:
                    self.store.delete(info.key)
                elif record.status == "queued" and now - record.updated_at >= pickup:
                    due.append(job_id)
                elif record.status == "running" and (record.lease_expires_at is None or record.lease_expires_at <= now):
                    due.append(job_id)
            if len(page) < 1000:
                return due[::-1]  # job ids sort newest first
            start_after = page[-1].key
