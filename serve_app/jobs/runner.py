"""`JobRunner`: runs jobs on one worker (e.g. a Serve replica) and recovers the ones other workers dropped.

One attempt (`run_job`): claim -> run the kind while a heartbeat task renews the lease every
`heartbeat_interval_s` -> complete (outputs first, then the record) or fail. Failure handling:
- the kind raises Unavailable / Timeout / Overloaded, or an unexpected exception -> retryable failure
  (queued again while attempts remain); any other Sam3Error -> the job fails with its code and message;
- the lease is lost (heartbeat refused, or storage unreachable past the lease) -> the run is cancelled and
  nothing is written: whoever holds the job now finishes it;
- storage unreachable while claiming or finishing -> nothing is written; the lease expires and recovery
  runs the job again later. A record is only ever changed by a conditional write, so never corrupted;
- the worker dies (or `run_job` is cancelled) -> heartbeats stop, the lease expires, recovery re-runs it.

`recovery_loop` asks `JobService.recover_due` every `recovery_interval_s` (with jitter) and runs what is
due, never more than `max_concurrent_jobs` at once on this worker.

Crash isolation (service.py says how attempts are charged): a job whose lease expired runs ALONE: its run
takes every slot of this worker, so no other job shares the process it might kill. Runs share slots
otherwise (a job dispatched by the ingress, a queued job picked up by recovery). `JobSlots` lets a run that
waits to go alone hold back new runs, so it cannot starve, and recovery starts a job that must run alone on
an idle worker at once; a busy worker takes one only if it was still due at its previous pass (no idle
worker took it), then lets its current runs finish first. With `max_concurrent_jobs == 1` every claim runs
alone. While this worker runs (or waits to run) a job alone, recovery starts nothing else here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from serve_app.config import JobsConfig
from serve_app.errors import NotFound, Overloaded, PreconditionFailed, Sam3Error, Timeout, Unavailable
from serve_app.jobs.kinds import JobContext, JobKindRegistry, JobOutput, JobProgress
from serve_app.jobs.records import JobRecord, UnreadableRecord
from serve_app.jobs.service import JobService

log = logging.getLogger("serve_app.jobs")

_RETRYABLE = (Unavailable, Timeout, Overloaded)


@dataclass
class _Lease:
    """This worker's view of one claim: its token, until when it surely holds (monotonic clock), and a
    lock so that a heartbeat and the final write of the same job never race each other."""

    job_id: str
    lease_id: str
    deadline: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    progress: JobProgress | None = None  # the kind's latest report, written with the next heartbeat


class JobSlots:
    """Up to `size` runs at once, or one run alone. A run waiting to go alone holds back new shared runs."""

    def __init__(self, size: int):
        self.size = size
        self.shared = 0  # runs holding a shared slot
        self.alone = False  # a run holds every slot
        self.alone_waiting = 0  # runs waiting to go alone
        self._changed = asyncio.Condition()

    @property
    def alone_pending(self) -> bool:
        """A run is alone here, or waits to be."""
        return self.alone or self.alone_waiting > 0

    @contextlib.asynccontextmanager
    async def hold(self, alone: bool) -> AsyncIterator[None]:
        async with self._changed:
            if alone:
                self.alone_waiting += 1
                try:
                    await self._changed.wait_for(lambda: self.shared == 0 and not self.alone)
                finally:
                    self.alone_waiting -= 1
                    self._changed.notify_all()  # if cancelled, shared runs may go again
                self.alone = True
            else:
                await self._changed.wait_for(
                    lambda: not self.alone and self.alone_waiting == 0 and self.shared < self.size)
                self.shared += 1
        try:
            yield
        finally:
            if alone:
                self.alone = False
            else:
                self.shared -= 1
            async with self._changed:
                self._changed.notify_all()


class JobRunner:
    def __init__(self, service: JobService, kinds: JobKindRegistry, owner_id: str, cfg: JobsConfig,
                 slots: JobSlots | None = None):
        """`service`: one tenant's jobs. `slots`: shared by the runners of every tenant on this worker, so the
        worker runs at most `max_concurrent_jobs` jobs in all (default: its own)."""
        self.service = service
        self.kinds = kinds
        self.owner_id = owner_id
        self.cfg = cfg
        self._slots = slots or JobSlots(cfg.max_concurrent_jobs)
        self._active: set[str] = set()  # job ids this worker is running or about to run
        self._alone_due_before: set[str] = set()  # jobs due to run alone at the previous recovery pass
        self._tasks: set[asyncio.Task] = set()
        self._recovery: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the recovery loop on the running event loop (call from async code or an async __init__)."""
        if self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self.recovery_loop())

    async def stop(self) -> None:
        """Cancel the recovery loop and every run. Their leases expire and other workers take over."""
        tasks = [*self._tasks, *([self._recovery] if self._recovery else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._recovery = None

    def dispatch(self, job_id: str, alone: bool = False) -> None:
        """Run `job_id` in the background (fire and forget: the outcome is in the job record); `alone`: as
        the only job of this worker (for a job whose lease expired)."""
        task = asyncio.get_running_loop().create_task(self.run_job(job_id, alone))
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job run crashed", exc_info=task.exception())

    # -- one attempt -------------------------------------------------------------------------------

    async def run_job(self, job_id: str, alone: bool = False) -> JobRecord | None:
        """Claim and run one attempt of `job_id` (`alone`: with no other job on this worker meanwhile). The
        record it ended with, or None if this worker did not get the job or lost it (someone else has it,
        it is finished, it must run alone and `alone` is False, or storage is down: recovery retries)."""
        if job_id in self._active:
            return None
        self._active.add(job_id)
        alone = alone or self.cfg.max_concurrent_jobs == 1
        try:
            async with self._slots.hold(alone):
                return await self._attempt(job_id, alone)
        finally:
            self._active.discard(job_id)

    async def _attempt(self, job_id: str, alone: bool) -> JobRecord | None:
        try:
            record = await asyncio.to_thread(self.service.claim, job_id, self.owner_id, None, alone)
        except (Unavailable, NotFound, UnreadableRecord) as exc:
            log.warning("could not claim job %s: %s", job_id, exc)
            return None
        if record is None:
            return None
        assert record.lease_id is not None  # claim() returns the record with its new lease
        lease = _Lease(job_id, record.lease_id, time.monotonic() + self.cfg.lease_s)
        log.info("running job %s (%s)%s, attempt %d (%d of %d charged)", job_id, record.kind,
                 " alone" if alone else "", record.attempts, record.charged_attempts, record.max_attempts)
        work = asyncio.create_task(self._run_kind(record, lease))
        beat = asyncio.create_task(self._heartbeat(lease))
        try:
            await asyncio.wait({work, beat}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.warning("job %s: lease lost, abandoning this attempt", job_id)
                return None
            return await self._finish(lease, work, beat)
        finally:
            work.cancel()
            beat.cancel()
            await asyncio.gather(work, beat, return_exceptions=True)

    async def _run_kind(self, record: JobRecord, lease: _Lease) -> JobOutput:
        kind = self.kinds.get(record.kind)
        job_input = await asyncio.to_thread(self.service.load_input, record)

        def report(progress: JobProgress) -> None:
            lease.progress = progress

        return await kind.execute(job_input, JobContext(record.job_id, record.attempts, report))

    async def _heartbeat(self, lease: _Lease) -> None:
        """Renew the lease until cancelled; return when it is lost (or cannot be proven held any more)."""
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval_s)
            sent = time.monotonic()
            try:
                async with lease.lock:
                    await asyncio.to_thread(self.service.heartbeat, lease.job_id, lease.lease_id, None, lease.progress)
                lease.deadline = sent + self.cfg.lease_s
            except (PreconditionFailed, NotFound, UnreadableRecord):
                return
            except Unavailable as exc:
                log.warning("job %s: heartbeat failed: %s", lease.job_id, exc)
                if time.monotonic() >= lease.deadline:
                    return

    async def _finish(self, lease: _Lease, work: asyncio.Task, beat: asyncio.Task) -> JobRecord | None:
        """Write the outcome of a finished run, retrying storage outages while the lease holds."""
        exc = work.exception()
        if exc is None:
            write = functools.partial(self.service.complete, lease.job_id, lease.lease_id, work.result(), None,
                                      lease.progress)
        elif isinstance(exc, Sam3Error):
            write = functools.partial(self.service.fail, lease.job_id, lease.lease_id, exc.code, exc.message,
                                      isinstance(exc, _RETRYABLE))
        else:
            log.error("job %s: unexpected error", lease.job_id, exc_info=exc)
            write = functools.partial(self.service.fail, lease.job_id, lease.lease_id, "internal_error",
                                      "the job failed unexpectedly", True)
        while True:
            try:
                async with lease.lock:
                    record = await asyncio.to_thread(write)
                log.info("job %s: %s", lease.job_id, record.status)
                return record
            except (PreconditionFailed, NotFound, UnreadableRecord):
                log.warning("job %s: lease lost before the outcome was written", lease.job_id)
                return None
            except Unavailable as exc:
                if beat.done() or time.monotonic() >= lease.deadline:
                    log.warning("job %s: storage down, outcome not written; recovery will rerun it", lease.job_id)
                    return None
                log.warning("job %s: could not write the outcome yet: %s", lease.job_id, exc)
                await asyncio.sleep(self.cfg.heartbeat_interval_s)

    # -- recovery ----------------------------------------------------------------------------------

    async def recovery_loop(self) -> None:
        """Forever: run jobs whose lease expired or that sat queued too long, within free capacity."""
        while True:
            try:
                await self.recover_once()
            except Exception:  # a bug must not stop recovery for good
                log.exception("job recovery pass failed")
            await asyncio.sleep(self.cfg.recovery_interval_s * random.uniform(0.8, 1.2))

    async def recover_once(self) -> list[str]:
        """One recovery pass; returns the job ids it dispatched."""
        try:
            due = await asyncio.to_thread(self.service.recover_due)
        except Unavailable as exc:  # storage down, or not enforcing conditional writes (logged by the store)
            log.warning("job recovery skipped: %s", exc.message)
            return []
        due = [job for job in due if job.job_id not in self._active]
        alone_due = [job.job_id for job in due if job.alone]
        alone_before, self._alone_due_before = self._alone_due_before, set(alone_due)
        if self._slots.alone_pending:
            return []  # a job runs alone here, or is about to
        waited = [job_id for job_id in alone_due if job_id in alone_before]
        if alone_due and (not self._active or waited):
            job_id = alone_due[0] if not self._active else waited[0]
            self.dispatch(job_id, alone=True)
            return [job_id]
        free = self.cfg.max_concurrent_jobs - len(self._active)
        picked = [job.job_id for job in due if not job.alone][: max(free, 0)]
        for job_id in picked:
            self.dispatch(job_id)
        return picked
