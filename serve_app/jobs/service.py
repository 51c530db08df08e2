"""`JobService`: jobs whose whole state lives in object storage, made safe by conditional writes.

Objects per job (keys in serve_app.storage.keys): `input.json`, `record.json` (a JobRecord), then
`result.json` / `overlay.png`; plus `jobs-active/{job_id}` while the job is queued or running (the only
thing recovery scans) and `jobs-idem/{sha256(Idempotency-Key)}` -> {"job_id", "body_sha256"}.

Guarantees:
- Every record transition is read-check-write with If-Match on the ETag read, so of two workers racing
  for a job exactly one claim wins, and a worker whose lease was taken over can no longer write.
- A claim takes a lease (`lease_id`) and counts an attempt; `heartbeat` renews it. A job whose lease
  expired is claimed again by recovery, until `max_attempts` charged attempts were made; then it is failed
  with code `attempts_exhausted`.
- `complete` writes result and overlay BEFORE flipping the record to succeeded: a reader that sees
  `succeeded` always finds the whole result.
- Submission writes the active marker before the record, so every record a client was told about is
  reachable by recovery (a marker without a record, left by a crashed submit, is removed later).
- Idempotency-Key: the first submit writes the marker with If-None-Match; a replay with the same body
  gets the same job (re-creating it if the first submit crashed halfway); another body is a 409.

Conditional writes are checked, not assumed: `submit`, `claim` and `recover` first call
`store.require_conditional_writes()` (the store's start-up probe, storage/base.py), so on a server that
ignores If-None-Match / If-Match jobs are refused (503 `storage_not_conditional`) and workers claim nothing.

Lease expiry never compares clocks of different hosts. The record's timestamps are written by whichever
host made a transition; a worker instead watches the record itself: a running job is expired when THIS
service has seen the same record version (its ETag: every heartbeat rewrites the record, so it changes)
for `lease_s` on its own monotonic clock. A queued job is due for recovery, and an active marker without
a record is dropped, the same way after `queued_pickup_timeout_s`. The first sighting starts the watch
(a worker that just started waits one lease before taking a job over); the service's own writes (claim,
heartbeat, fail) start it too. The `now=` arguments (tests) shift this service's clock by now - utcnow().

Crash isolation (a job that kills its worker must not take innocent jobs down with it): a claim says
whether its worker runs that job alone (`lease_alone`). A job whose lease expired (its worker died or hung)
is only claimed alone from then on (`run_alone`); its lost attempt is forgiven (`forgiven_attempts`, not
counted against `max_attempts`) when that worker was running other jobs too, and charged when it ran alone.
So a crash-looping job runs alone and fails by itself with `attempts_exhausted`, while the jobs that shared
its first worker are re-run alone and finish; a job can be forgiven at most once.

Unreadable records: recovery moves a record that does not parse aside (copied to
`t/{tenant}/quarantine/jobs/{job_id}/record.json`, then deleted with its active marker, logged with the
key and the error) and carries on with the other jobs; `list` skips it. Unknown fields (a newer version's)
are ignored, see records.py.

Methods block (storage I/O): from asyncio call them through `asyncio.to_thread`. A worker must not run
two transitions of one job concurrently (the JobRunner serialises heartbeat and completion).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from serve_app.config import JobsConfig
from serve_app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed, QuotaRefused, Unavailable
from serve_app.jobs.kinds import JobKindRegistry, JobOutput, JobProgress
from serve_app.jobs.records import JobError, JobProgressView, JobRecord, JobStatus, UnreadableRecord, utcnow
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore, Blob

log = logging.getLogger("serve_app.jobs")

_JSON = "application/json"
JOBS_RETRY_AFTER_S = 5  # a hint: when one of a tenant's jobs ends is not known in advance
_LIST_SCAN_FACTOR = 10  # a filtered list reads at most limit * this many records per page


class DueJob(NamedTuple):
    """A job recovery should run now; `alone`: only in a claim that runs it alone on its worker."""

    job_id: str
    alone: bool


@dataclass(frozen=True)
class _Sighting:
    version: str  # the record's ETag (or a marker of "no record") when first seen
    since: float  # this service's clock when first seen


def _progress_view(progress: JobProgress | None) -> JobProgressView | None:
    return None if progress is None else JobProgressView(done=progress.done, total=progress.total, unit=progress.unit)


def canonical_json(value: object) -> bytes:
    """Stable bytes for hashing: sorted keys, no whitespace, UTF-8."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"job input is not JSON: {exc}", "invalid_job_input") from None


class JobService:
    def __init__(self, store: ArtifactStore, cfg: JobsConfig, kinds: JobKindRegistry, tenant: str = "default",
                 clock: Callable[[], float] = time.monotonic):
        """`clock`: this host's monotonic seconds (injectable for tests): the only clock lease expiry uses."""
        self.store = store
        self.cfg = cfg
        self.kinds = kinds
        self.tenant = keys.validate_tenant(tenant)
        self._clock = clock
        self._seen: dict[str, _Sighting] = {}  # job id -> the version of its record this service watches
        self._seen_lock = threading.Lock()

    # -- record I/O --------------------------------------------------------------------------------

    def _read(self, job_id: str) -> tuple[JobRecord, str]:
        """The record and its ETag. Raises NotFound (job_not_found), UnreadableRecord."""
        blob = self._get_record(job_id)
        return JobRecord.from_bytes(blob.data), blob.etag

    def _get_record(self, job_id: str) -> Blob:
        try:
            return self.store.get(keys.job_record_key(self.tenant, job_id))
        except NotFound:
            raise NotFound(f"no job {job_id}", "job_not_found") from None

    def _write(self, record: JobRecord, etag: str) -> str:
        """Replace the record if it still has `etag`; the new ETag. Raises PreconditionFailed."""
        return self.store.put(keys.job_record_key(self.tenant, record.job_id), record.to_bytes(), _JSON,
                              if_match=etag)

    # -- observed time (lease expiry without comparing clocks of different hosts) -----------------

    def _local_now(self, now: datetime | None) -> float:
        """This service's clock; `now` (tests) shifts it by now - utcnow()."""
        local = self._clock()
        return local if now is None else local + (now - utcnow()).total_seconds()

    def _unchanged_for(self, job_id: str, version: str, local_now: float) -> float:
        """For how long (this service's clock) `job_id` has been seen at `version`: 0 at a first sighting or
        after a change, which start a new watch."""
        with self._seen_lock:
            seen = self._seen.get(job_id)
            if seen is None or seen.version != version:
                self._seen[job_id] = _Sighting(version, local_now)
                return 0.0
            return max(0.0, local_now - seen.since)

    def _wrote(self, record: JobRecord, etag: str, local_now: float) -> None:
        """Start watching the version this service just wrote (forget a terminal job)."""
        with self._seen_lock:
            if record.terminal:
                self._seen.pop(record.job_id, None)
            else:
                self._seen[record.job_id] = _Sighting(etag, local_now)

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

    def submit(self, kind: str, input: dict, idempotency_key: str | None = None,
               now: datetime | None = None, max_active: int | None = None) -> JobRecord:
        """Validate and store a new queued job (or return the job an Idempotency-Key already made).
        `max_active`: the tenant's max_concurrent_jobs; a NEW job is refused (QuotaRefused) while that many
        of its jobs are queued or running (counted by their active markers: every replica sees the same).
        Raises Unavailable (storage_not_conditional) when storage does not enforce conditional writes."""
        if not isinstance(input, dict):
            raise InvalidInput("job input must be a JSON object", "invalid_job_input")
        self.kinds.get(kind).validate(input)
        self.store.require_conditional_writes()
        body_sha256 = hashlib.sha256(canonical_json({"kind": kind, "input": input})).hexdigest()
        idem_hash = marker_key = None
        if idempotency_key is None:
            job_id = keys.new_job_id()
        else:
            marker_key = keys.idempotency_key(self.tenant, idempotency_key)
            idem_hash = marker_key.rsplit("/", 1)[1]
            job_id, is_new = self._reserve_idempotency_key(marker_key, body_sha256, now or utcnow())
            if not is_new:
                try:
                    return self._read(job_id)[0]
                except NotFound:
                    pass  # the first submit crashed before writing the record: finish its work
        if max_active is not None:
            try:
                self._check_active(max_active)
            except QuotaRefused:
                if marker_key is not None:
                    self.store.delete(marker_key)  # the key may be used again once a job has ended
                raise
        return self._create(job_id, kind, input, body_sha256, idem_hash, now or utcnow())

    def active_count(self, limit: int) -> int:
        """How many of this tenant's jobs are queued or running (their active markers), counted up to `limit`."""
        return len(self.store.list(keys.active_jobs_prefix(self.tenant), limit=limit))

    def _check_active(self, max_active: int) -> None:
        """QuotaRefused when `max_active` of this tenant's jobs are queued or running."""
        active = self.active_count(max_active)
        if active >= max_active:
            raise QuotaRefused(f"tenant {self.tenant} has {active} job(s) queued or running, its limit "
                               "max_concurrent_jobs; submit again when one has ended",
                               retry_after_s=JOBS_RETRY_AFTER_S, limit="max_concurrent_jobs")

    def _reserve_idempotency_key(self, marker_key: str, body_sha256: str, now: datetime) -> tuple[str, bool]:
        """(job id, True) if this call reserved the key, else (the id it was reserved for, False). A marker
        older than jobs.idempotency_ttl_s (by its storage timestamp) has expired: it is replaced, conditionally
        on its ETag, so of two racing submits exactly one makes the new job."""
        job_id = keys.new_job_id()
        marker = canonical_json({"job_id": job_id, "body_sha256": body_sha256})
        try:
            self.store.put(marker_key, marker, _JSON, if_none_match=True)
            return job_id, True
        except PreconditionFailed:
            blob = self.store.get(marker_key)
        if (now - blob.info.last_modified).total_seconds() > self.cfg.idempotency_ttl_s:
            try:
                self.store.put(marker_key, marker, _JSON, if_match=blob.etag)
                return job_id, True
            except PreconditionFailed:  # another submit renewed it first: its job is the one
                blob = self.store.get(marker_key)
        existing = json.loads(blob.data)
        if existing["body_sha256"] != body_sha256:
            raise Conflict("this Idempotency-Key was used with a different request body", "idempotency_key_reused")
        return existing["job_id"], False

    def _create(self, job_id: str, kind: str, input: dict, body_sha256: str, idem_hash: str | None,
                now: datetime) -> JobRecord:
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
                record: JobRecord | None
                try:
                    record = self._read(job_id)[0]
                except NotFound:  # deleted meanwhile
                    continue
                except UnreadableRecord as exc:  # recovery quarantines it (if active); a listing never fails on it
                    log.warning("job list skips %s: %s", info.key, exc.message)
                    record = None
                examined += 1
                if record is not None and (status is None or record.status == status):
                    found.append(record)
                if len(found) == limit or examined == limit * _LIST_SCAN_FACTOR:
                    return found, job_id
            if len(page) < page_size:
                return found, None

    def cancel(self, job_id: str, now: datetime | None = None) -> JobRecord:
        """Cancel a queued job (idempotent for a cancelled one). Raises Conflict for any other state."""
        for _ in range(3):
            record, etag = self._read(job_id)
            if record.status == "cancelled":
                return record
            if record.status != "queued":
                raise Conflict(f"job {job_id} is {record.status}; only queued jobs can be cancelled",
                               "job_not_cancellable")
            at = now or utcnow()
            cancelled = record.evolve(status="cancelled", updated_at=at, finished_at=at)
            try:
                self._write(cancelled, etag)
            except PreconditionFailed:
                continue  # claimed meanwhile: look again
            self._deactivate(job_id)
            return cancelled
        raise Conflict(f"job {job_id} kept changing while being cancelled; retry", "job_busy")

    # -- worker side -------------------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, now: datetime | None = None, alone: bool = True) -> JobRecord | None:
        """Take the job for one attempt if it is queued, or running with a lease this service watched expire;
        None if someone else has it, it is terminal, it must run alone and `alone` is False, or it just ran
        out of attempts (then it is marked failed here).

        `alone`: the caller runs no other job while it holds this one (so a crash of its worker is this
        job's fault). A job that lost a lease is only ever claimed alone after that."""
        self.store.require_conditional_writes()
        at, local = now or utcnow(), self._local_now(now)
        record, etag = self._read(job_id)
        if record.terminal:
            return None
        lost = record.status == "running"  # then its lease must have expired: its worker died or hung
        if lost and self._unchanged_for(job_id, etag, local) < self.cfg.lease_s:
            return None
        forgiven = record.forgiven_attempts + (1 if lost and not record.lease_alone else 0)
        if record.attempts - forgiven >= record.max_attempts:
            self._exhaust(record, etag, forgiven, at)
            return None
        if (lost or record.run_alone) and not alone:
            return None
        claimed = record.evolve(
            status="running", attempts=record.attempts + 1, lease_owner=owner, lease_id=keys.new_id(),
            lease_expires_at=at + timedelta(seconds=self.cfg.lease_s), started_at=at, updated_at=at,
            lease_alone=alone, run_alone=record.run_alone or lost, forgiven_attempts=forgiven,
        )
        try:
            new_etag = self._write(claimed, etag)
        except PreconditionFailed:
            return None
        self._wrote(claimed, new_etag, local)
        return claimed

    def _exhaust(self, record: JobRecord, etag: str, forgiven: int, at: datetime) -> None:
        """Fail a job whose worker kept dying (`attempts_exhausted`), if nobody changed it meanwhile."""
        alone = " while running it alone" if record.lease_alone else ""
        message = (f"gave up after {record.attempts - forgiven} attempts: the last worker ({record.lease_owner}) "
                   f"stopped renewing its lease{alone}")
        exhausted = record.evolve(
            status="failed", error=JobError(code="attempts_exhausted", message=message), forgiven_attempts=forgiven,
            updated_at=at, finished_at=at, lease_id=None, lease_expires_at=None,
        )
        try:
            self._write(exhausted, etag)
        except PreconditionFailed:
            return
        self._wrote(exhausted, "", 0.0)
        self._deactivate(record.job_id)
        log.warning("job %s failed: %s", record.job_id, message)

    def heartbeat(self, job_id: str, lease_id: str, now: datetime | None = None,
                  progress: JobProgress | None = None) -> JobRecord:
        """Renew the lease (a new record version, which watchers see change), with the attempt's latest
        `progress` report if any. Raises PreconditionFailed (lease_lost) if it was taken over."""
        record, etag = self._held(job_id, lease_id)
        at, local = now or utcnow(), self._local_now(now)
        changes: dict[str, Any] = {"lease_expires_at": at + timedelta(seconds=self.cfg.lease_s), "updated_at": at}
        if progress is not None:
            changes["progress"] = _progress_view(progress)
        renewed = record.evolve(**changes)
        self._wrote(renewed, self._write(renewed, etag), local)
        return renewed

    def complete(self, job_id: str, lease_id: str, output: JobOutput, now: datetime | None = None,
                 progress: JobProgress | None = None) -> JobRecord:
        """Store the outputs, then flip the record to succeeded (with the attempt's last `progress` report).
        Raises PreconditionFailed if the lease was lost."""
        record, _ = self._held(job_id, lease_id)
        result_key = keys.job_result_key(self.tenant, job_id)
        self.store.put(result_key, output.result_json, _JSON)
        overlay_key = None
        if output.overlay_png is not None:
            overlay_key = keys.job_overlay_key(self.tenant, job_id)
            self.store.put(overlay_key, output.overlay_png, "image/png")
        record, etag = self._held(job_id, lease_id)  # fresh ETag: the outputs may have taken a while
        at = now or utcnow()
        done = record.evolve(status="succeeded", result_key=result_key, overlay_key=overlay_key, error=None,
                             artifact_key=output.artifact_key, progress=_progress_view(progress) or record.progress,
                             updated_at=at, finished_at=at, lease_id=None, lease_expires_at=None)
        self._wrote(done, self._write(done, etag), 0.0)
        self._deactivate(job_id)
        return done

    def fail(self, job_id: str, lease_id: str, code: str, message: str, retryable: bool,
             now: datetime | None = None) -> JobRecord:
        """End the attempt with an error: back to queued if `retryable` and attempts remain, else failed."""
        record, etag = self._held(job_id, lease_id)
        at, local = now or utcnow(), self._local_now(now)
        error = JobError(code=code, message=message)
        if retryable and record.charged_attempts < record.max_attempts:
            ended = record.evolve(status="queued", error=error, updated_at=at, lease_id=None, lease_expires_at=None)
        else:  # recovery runs a queued one again after queued_pickup_timeout_s
            if retryable:
                error = JobError(code=code, message=f"{message} (gave up after {record.charged_attempts} attempts)")
            ended = record.evolve(status="failed", error=error, updated_at=at, finished_at=at, lease_id=None,
                                  lease_expires_at=None)
        self._wrote(ended, self._write(ended, etag), local)
        if ended.terminal:
            self._deactivate(job_id)
        return ended

    def recover(self, now: datetime | None = None) -> builtins.list[str]:  # `list` is a method here
        """Ids of the jobs `recover_due` finds, oldest first."""
        return [due.job_id for due in self.recover_due(now)]

    def recover_due(self, now: datetime | None = None) -> builtins.list[DueJob]:
        """Active jobs that need a worker, oldest first: queued and unchanged for `queued_pickup_timeout_s`,
        or running and unchanged for `lease_s` (its lease expired: it must then run alone), both measured by
        this service's clock since it first saw that version. Also drops stale active markers and quarantines
        unreadable records. Raises Unavailable (storage down, or storage_not_conditional)."""
        self.store.require_conditional_writes()
        local = self._local_now(now)
        pickup, prefix = self.cfg.queued_pickup_timeout_s, keys.active_jobs_prefix(self.tenant)
        due: list[DueJob] = []
        seen: set[str] = set()
        start_after = None
        while True:
            page = self.store.list(prefix, start_after=start_after, limit=1000)
            for info in page:
                job_id = info.key[len(prefix):]
                seen.add(job_id)
                try:
                    blob = self._get_record(job_id)
                except NotFound:  # a submit that crashed before writing the record (never acknowledged)
                    if self._unchanged_for(job_id, "no record " + info.etag, local) >= pickup:
                        self.store.delete(info.key)
                    continue
                try:
                    record = JobRecord.from_bytes(blob.data)
                except UnreadableRecord as exc:
                    self._quarantine(blob, exc, info.key)
                    continue
                held_for = self._unchanged_for(job_id, blob.etag, local)
                if record.terminal:
                    self.store.delete(info.key)
                elif record.status == "queued" and held_for >= pickup:
                    due.append(DueJob(job_id, record.run_alone))
                elif record.status == "running" and held_for >= self.cfg.lease_s:
                    due.append(DueJob(job_id, True))
            if len(page) < 1000:
                with self._seen_lock:  # forget jobs that are no longer active
                    self._seen = {job_id: s for job_id, s in self._seen.items() if job_id in seen}
                return due[::-1]  # job ids sort newest first
            start_after = page[-1].key

    def _quarantine(self, blob: Blob, error: UnreadableRecord, marker_key: str) -> None:
        """Move an unreadable record aside (copy to the tenant's quarantine/, then delete the original unless
        it changed meanwhile) and drop its active marker: recovery cannot run that job."""
        key = blob.info.key
        dest = keys.quarantine_key(self.tenant, key)
        self.store.put(dest, blob.data, blob.content_type or _JSON)
        try:
            if self.store.head(key).etag != blob.etag:
                return  # rewritten meanwhile: look again next pass
        except NotFound:
            return
        self.store.delete(key)
        self.store.delete(marker_key)
        log.error("job record %s is unreadable (%s): moved it to %s; its job will not run", key, error.message, dest)
