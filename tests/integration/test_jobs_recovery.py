"""Accepted jobs are never lost, through real Serve: a killed JobWorker replica, and an S3 server that stops.

A second app ("sam3x" at /x) runs on a SeaweedFS of this module's own (`module_seaweedfs`), with a
ConceptSegmenter that waits 5 s for batch company. The tests wait for the job record to say `running`
(a polled condition); the 5 s wait is the window in which the job is still running after that, so the test
can kill its replica or stop the storage mid-run. It is a config value, not a sleep of the test: nothing
outside the app can hold a model call open (build_app always binds the default runners), so this window
is the only way to keep a real job in flight. A job that finished before the kill would fail the attempts
assertion loudly, not pass by accident.
"""

from __future__ import annotations

import time

import pytest
import requests

from serve_app.config import AppConfig
from serve_app.jobs.kinds import JobKindRegistry
from serve_app.jobs.records import JobRecord
from serve_app.jobs.service import JobService
from serve_app.storage import open_store
from tests.conftest import serve_args
from tests.fixtures.s3 import s3_storage_config
from tests.helpers import b64, instances, kill_replica, png_bytes, wait_for, wait_job

APP = "sam3x"
JOB = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=11))}, "prompts": [{"text": "car"}],
                                      "threshold": 0.0, "max_instances": 2}}


@pytest.fixture(scope="module")
def app(serve_url, tiny_model_dir, module_seaweedfs):
    """(base URL, AppConfig) of the slow-batching app on this module's storage."""
    from ray import serve

    from serve_app.app import build_app

    args = serve_args(tiny_model_dir, storage=s3_storage_config(module_seaweedfs).model_dump(),
                      concept={"batching": {"max_batch_size": 8, "batch_wait_timeout_s": 5.0,
                                            "eager_when_idle": False}},  # a lone job call waits too
                      video={"warm_pool": 0})  # no idle video actor: no video here
    serve.run(build_app(args), name=APP, route_prefix="/x")
    yield f"{serve_url}/x", AppConfig.model_validate(args)
    serve.delete(APP)


def job_service(cfg: AppConfig) -> JobService:
    """Read access to the job records the app writes (the test's own client of the same bucket): the
    record's lease owner is not part of the public job view."""
    return JobService(open_store(cfg.storage), cfg.jobs, JobKindRegistry(), cfg.storage.default_tenant)


def wait_running(jobs: JobService, job_id: str, timeout_s: float = 30) -> JobRecord:
    """The job's record once a worker claimed it (status running); fails at once if it already ended (the
    batch wait that keeps it running did not apply)."""
    def running() -> JobRecord | None:
        record = jobs.get(job_id)
        assert record.status in ("queued", "running"), f"job {job_id} ended before the test saw it run: {record}"
        return record if record.status == "running" else None

    return wait_for(running, timeout_s, f"job {job_id} to run")


def test_job_survives_its_worker_replica_being_killed(app):
    base, cfg = app
    jobs = job_service(cfg)
    r = requests.post(base + "/v1/jobs", json=JOB, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    running = wait_running(jobs, job_id)
    assert running.attempts == 1
    kill_replica(APP, "JobWorker", running.lease_owner.rsplit("-", 1)[0])

    done = wait_job(base, job_id, timeout_s=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2  # the killed run, then the recovered one
    record = jobs.get(job_id)
    assert record.lease_owner != running.lease_owner  # a new replica finished it
    result = requests.get(done["result_url"], timeout=30).json()
    assert len(result["results"][0]["instances"]) == 2


def test_storage_down_is_503_and_running_jobs_finish_after_it_returns(app, module_seaweedfs):
    base, cfg = app
    jobs = job_service(cfg)
    stored = requests.post(base + "/v1/pcs/image", json={**JOB["input"], "return": "url"}, timeout=60).json()
    r = requests.post(base + "/v1/jobs", json=JOB, timeout=30)
    job_id = r.json()["job_id"]
    wait_running(jobs, job_id)

    module_seaweedfs.stop()  # mid-run: the job cannot write its result now
    stopped_at = time.monotonic()
    try:
        for method, path, body in [
            ("post", "/v1/jobs", JOB),
            ("get", f"/v1/jobs/{job_id}", None),
            ("get", "/v1/jobs", None),
            ("post", "/v1/pcs/image", {"image": {"image_id": stored["image_id"]}, "prompts": [{"text": "car"}]}),
            ("post", "/v1/pcs/image", {**JOB["input"], "return": "url"}),
        ]:
            r = getattr(requests, method)(base + path, json=body, timeout=60)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "storage_unavailable"
            assert int(r.headers["Retry-After"]) >= 1
        # Requests that do not need storage still work.
        inline = requests.post(base + "/v1/pcs/image", json=JOB["input"], timeout=60)
        assert inline.status_code == 200, inline.text
        # The running job's lease must run out while storage is away (its last renewal was at the latest
        # when storage stopped). A real-time requirement: the lease is wall-clock time in another process,
        # and its record cannot be read while storage is down, so wait out the rest of one lease.
        time.sleep(max(0.0, stopped_at + cfg.jobs.lease_s - time.monotonic()))
    finally:
        module_seaweedfs.start()

    done = wait_job(base, job_id, timeout_s=180)
    assert done["status"] == "succeeded", done
    result = requests.get(done["result_url"], timeout=30).json()
    assert instances(result) == instances(inline.json())
    assert requests.get(stored["result_url"], timeout=30).status_code == 200  # stored before the outage: intact
