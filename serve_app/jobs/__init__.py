"""Asynchronous jobs that are never lost: records, leases and recovery in object storage (no Ray, no FastAPI).

    kinds = JobKindRegistry(); kinds.register(my_kind)
    service = JobService(store, app_config.jobs, kinds, tenant="default")
    record = service.submit("pcs_image", body, idempotency_key=header)      # ingress (via asyncio.to_thread)
    runner = JobRunner(service, kinds, owner_id, app_config.jobs)           # worker replica
    runner.start(); runner.dispatch(record.job_id)
"""

from serve_app.jobs.kinds import JobContext, JobKind, JobKindRegistry, JobOutput
from serve_app.jobs.records import JobError, JobRecord, JobStatus, UnreadableRecord
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.service import DueJob, JobService

__all__ = [
    "DueJob", "JobContext", "JobError", "JobKind", "JobKindRegistry", "JobOutput", "JobRecord", "JobRunner",
    "JobService", "JobStatus", "UnreadableRecord",
]
