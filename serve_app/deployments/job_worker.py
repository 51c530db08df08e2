"""JobWorker: CPU replicas that run jobs (POST /v1/jobs) and recover the ones a dead replica dropped.

Each replica hosts one JobRunner (serve_app.jobs.runner) over the same Services as the ingress, so a
pcs_image job executes exactly the synchronous pipeline against the ConceptSegmenter deployment. The
ingress calls `dispatch` right after a submit; the recovery loop of every replica re-runs jobs whose
lease expired (their replica died) and queued jobs nobody picked up. All job state lives in storage.

At start the replica probes that storage enforces conditional writes (ArtifactStore.conditional_writes).
Where it does not, the replica stays up but claims nothing (JobService.claim and recovery refuse with
`storage_not_conditional` and the store re-probes every minute): running jobs there would not be safe.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig, known_tenants
from serve_app.errors import Forbidden
from serve_app.jobs.runner import JobRunner, JobSlots
from serve_app.pipelines import tenant_log
from serve_app.pipelines.services import Services
from serve_app.pipelines.video_jobs import PcsVideoJob
from serve_app.storage.base import ConditionalWrites

log = logging.getLogger(__name__)

TENANT_WATCH_S = 30.0  # how often a replica looks for tenants added to auth.keys_file since it started


@serve.deployment
class JobWorker:
    # Serve awaits an async constructor (the recovery loop needs the replica's event loop); plain Python cannot.
    async def __init__(self, config: AppConfig, concept: DeploymentHandle,  # type: ignore[misc]
                       sessions: DeploymentHandle) -> None:
        self.services = Services.create(config, concept, sessions)
        self.debug_enabled = config.observability.debug_interface
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (never in production)
            replica = "local"
        self.owner_id = f"{replica}-{uuid.uuid4().hex[:8]}"
        self.slots = JobSlots(config.jobs.max_concurrent_jobs)  # shared: max_concurrent_jobs in all, any tenant
        self.runners: dict[str, JobRunner] = {}
        for tenant in known_tenants(config):
            self._runner(tenant)
        try:  # bounded: a slow storage must not hold up the replica's start (the probe finishes in its thread)
            writes = await asyncio.wait_for(asyncio.to_thread(self.services.store.conditional_writes), 10.0)
        except asyncio.TimeoutError:
            writes = ConditionalWrites("unknown", "the probe is still waiting for storage")
        if writes.state == "not_enforced":
            log.error("JobWorker %s claims no jobs: storage does not enforce conditional writes (%s)",
                      self.owner_id, writes.reason)
        elif writes.state == "unknown":
            log.warning("JobWorker %s could not probe storage yet (%s); it will before claiming a job",
                        self.owner_id, writes.reason)
        tenant_log.install()
        for tenant in self.runners:
            self._start(tenant)  # the recovery loops (one per tenant), on this replica's event loop
        self._watcher = asyncio.create_task(self._watch_tenants())
        log.info("JobWorker %s ready (kinds: %s; tenants: %s)", self.owner_id,
                 ", ".join(self.services.jobs.kinds.names()), ", ".join(self.runners))

    def _runner(self, tenant: str) -> JobRunner:
        """The runner of `tenant`'s jobs (made on first use for a tenant the config did not list)."""
        runner = self.runners.get(tenant)
        if runner is None:
            jobs = self.services.for_tenant(tenant).jobs
            runner = self.runners[tenant] = JobRunner(jobs, jobs.kinds, self.owner_id, self.services.config.jobs,
                                                      self.slots)
        return runner

    def _start(self, tenant: str) -> JobRunner:
        """`tenant`'s runner with its recovery loop running (started once); the loop's tasks inherit the tenant,
        so their log lines carry it."""
        runner = self._runner(tenant)
        with tenant_log.tenant_scope(tenant):
            runner.start()
        return runner

    async def _watch_tenants(self) -> None:
        """Start the recovery loop of every tenant that appears in auth.keys_file after this replica started
        (keys added to the Secret), so their jobs are recovered without a restart."""
        while True:
            await asyncio.sleep(TENANT_WATCH_S)
            try:
                tenants = await asyncio.to_thread(known_tenants, self.services.config)
            except Exception as exc:  # never let the watcher die
                log.warning("could not read the tenants (%s)", type(exc).__name__)
                continue
            for tenant in tenants:
                if tenant not in self.runners:
                    log.info("recovering the jobs of tenant %s too (new key)", tenant)
                    self._start(tenant)

    async def start_job(self, job_id: str, tenant: str | None = None) -> str:
        """Start running `tenant`'s job `job_id` in the background; returns this worker's id at once."""
        tenant = tenant or self.services.tenant
        runner = self._start(tenant)
        with tenant_log.tenant_scope(tenant):  # the job's task inherits the tenant: its log lines carry it
            runner.dispatch(job_id)
        return self.owner_id

    async def debug_hold_video_jobs(self, after_chunks: int | None) -> str:
        """Debug interface (tests): pcs_video attempts on THIS replica stop before their chunk `after_chunks` + 1
        until the replica dies (None: run on). Returns this worker's id."""
        if not self.debug_enabled:
            raise Forbidden("the debug interface is off (observability.debug_interface)", "debug_disabled")
        for runner in self.runners.values():
            kind = runner.kinds.get("pcs_video")
            assert isinstance(kind, PcsVideoJob)
            kind.hold_after_chunks = after_chunks
        return self.owner_id
