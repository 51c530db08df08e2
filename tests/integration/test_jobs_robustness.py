"""Jobs that stay correct on any S3-compatible server (security review J1-J4), on both storage backends (a
directory and a real S3 server, SeaweedFS).

- J1 conditional writes are probed, not assumed: the real backends pass the probe; a store that ignores the
  conditions (a wrapper over the real one: the test must control what the server enforces) refuses jobs
  with 503 `storage_not_conditional`, its workers claim nothing, /readyz says why.
- J2 a crash-looping job fails alone: real worker processes die by os._exit while running it; the jobs that
  shared its first worker are re-run alone and succeed, the poison job ends `attempts_exhausted`.
- J3 one unparseable record is quarantined, recovery and listings carry on; a newer version's fields are ignored.
- J4 lease expiry is observed on the worker's own monotonic clock (injected here), never read from another
  host's wall-clock timestamps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, JobsConfig
from serve_app.errors import NotFound, Unavailable
from serve_app.jobs import JobContext, JobKindRegistry, JobOutput, JobRecord, JobRunner, JobService
from serve_app.jobs.records import UnreadableRecord, utcnow
from serve_app.jobs.service import DueJob
from serve_app.storage import ArtifactStore, base, keys, open_store
from tests.helpers import b64, png_bytes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOBS = JobsConfig(lease_s=1.0, heartbeat_interval_s=0.25, max_attempts=3, recovery_interval_s=0.2,
                  queued_pickup_timeout_s=0.5, max_concurrent_jobs=3)
LATER = timedelta(seconds=JOBS.lease_s + 1)


class Running:
    """Which jobs run on one worker right now, and the most that ever ran at once (shared by its kinds)."""

    def __init__(self) -> None:
        self.now: set[str] = set()
        self.most = 0

    def enter(self, job_id: str) -> None:
        self.now.add(job_id)
        self.most = max(self.most, len(self.now))


class Echo:
    """Succeeds (after input["sleep_s"]); the result says which attempt it was."""

    name = "echo"

    def __init__(self, running: Running | None = None) -> None:
        self.running = running or Running()

    def validate(self, input: dict) -> None:
        pass

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        self.running.enter(ctx.job_id)
        try:
            await asyncio.sleep(input.get("sleep_s", 0))
            return JobOutput(json.dumps({"echo": input.get("text"), "attempt": ctx.attempt}).encode())
        finally:
            self.running.now.discard(ctx.job_id)


class Hang(Echo):
    """Never finishes (until its worker dies)."""

    name = "hang"

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def registry(*kinds) -> JobKindRegistry:
    reg = JobKindRegistry()
    for kind in kinds or (Echo(),):
        reg.register(kind)
    return reg


class IgnoresConditions(ArtifactStore):
    """A real store behind a server that accepts If-None-Match / If-Match and ignores them (`ignore` names
    which); `honour()` makes it a conforming server again."""

    def __init__(self, inner: ArtifactStore, ignore: tuple[str, ...] = ("if_none_match", "if_match")):
        self.inner = inner
        self.ignore = ignore

    def honour(self) -> None:
        self.ignore = ()

    def put(self, key, data, content_type="application/octet-stream", **conditions):
        kept = {name: value for name, value in conditions.items() if name not in self.ignore}
        return self.inner.put(key, data, content_type, **kept)

    def get(self, key):
        return self.inner.get(key)

    def head(self, key):
        return self.inner.head(key)

    def delete(self, key):
        self.inner.delete(key)

    def list(self, prefix, **kwargs):
        return self.inner.list(prefix, **kwargs)

    def presign_get(self, key, expires_s):
        return self.inner.presign_get(key, expires_s)

    def presign_put(self, key, content_type, expires_s, content_length=None):
        return self.inner.presign_put(key, content_type, expires_s, content_length)


class ManualClock:
    """A monotonic clock the test advances (the worker's own clock in the J4 tests)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def store(storage_config) -> ArtifactStore:
    return open_store(storage_config)


def exists(store: ArtifactStore, key: str) -> bool:
    try:
        store.head(key)
        return True
    except NotFound:
        return False


async def wait_for(predicate, upper_bound_s: float = 60.0, what: str = "condition"):
    """Poll `predicate` (sync, may do storage I/O) until it returns a truthy value; fail after the bound."""
    deadline = time.monotonic() + upper_bound_s
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- J1: conditional writes are probed at start --------------------------------------------------------


def test_real_backends_pass_the_probe_and_leave_nothing_behind(store):
    assert store.probe_conditional_writes() is None
    assert store.conditional_writes(probe=False) == base.ConditionalWrites("unknown", "not probed yet")
    assert store.conditional_writes() == base.ConditionalWrites("enforced")
    store.require_conditional_writes()
    assert store.list(keys.RESERVED_PREFIX) == []  # the probe key was deleted
    service = JobService(store, JOBS, registry())
    assert service.submit("echo", {"text": "a"}).status == "queued"


@pytest.mark.parametrize("ignore, says", [
    (("if_none_match", "if_match"), "If-None-Match: * on an existing key was not enforced"),
    (("if_none_match",), "If-None-Match: * on an existing key was not enforced"),
    (("if_match",), "If-Match with a wrong ETag was not enforced"),
])
def test_a_store_that_ignores_conditions_refuses_jobs(store, ignore, says):
    queued = JobService(store, JOBS, registry()).submit("echo", {"text": "before"})  # made on a conforming server
    lax = IgnoresConditions(store, ignore)
    assert says in lax.probe_conditional_writes()
    verdict = lax.conditional_writes()
    assert verdict.state == "not_enforced" and says in verdict.reason
    service = JobService(lax, JOBS, registry())
    with pytest.raises(Unavailable) as info:
        service.submit("echo", {"text": "refused"}, idempotency_key="k1")
    err = info.value
    assert (err.status_code, err.code, err.retry_after_s) == (503, "storage_not_conditional", base.CONDITIONAL_RECHECK_S)
    assert says in err.message
    assert [r.job_id for r in service.list()[0]] == [queued.job_id]  # nothing was written for the refused job
    assert not exists(store, keys.idempotency_key("default", "k1"))
    with pytest.raises(Unavailable):
        service.claim(queued.job_id, "w1")
    with pytest.raises(Unavailable):
        service.recover_due(now=utcnow() + LATER)

    async def worker() -> None:
        runner = JobRunner(service, service.kinds, "w1", JOBS)
        assert await runner.run_job(queued.job_id) is None
        assert await runner.recover_once() == []

    asyncio.run(worker())
    record = service.get(queued.job_id)
    assert (record.status, record.attempts) == ("queued", 0)  # the worker claimed nothing
    assert store.list(keys.RESERVED_PREFIX) == []


def test_a_fixed_server_is_picked_up_at_the_next_probe(store, monkeypatch):
    lax = IgnoresConditions(store)
    service = JobService(lax, JOBS, registry())
    with pytest.raises(Unavailable):
        service.submit("echo", {"text": "a"})
    lax.honour()
    with pytest.raises(Unavailable):  # the negative verdict holds until it is re-checked…
        service.submit("echo", {"text": "a"})
    monkeypatch.setattr(base, "CONDITIONAL_RECHECK_S", 0)  # …CONDITIONAL_RECHECK_S later
    assert service.submit("echo", {"text": "a"}).status == "queued"
    assert lax.conditional_writes().state == "enforced"


def test_an_old_botocore_is_reported_as_not_enforcing(s3_config):
    """botocore < 1.35.69 has no IfMatch on PutObject (ParamValidationError on every conditional put)."""
    store = open_store(s3_config)
    real = store._client.meta.service_model

    class OldModel:
        def operation_model(self, name):
            op = real.operation_model(name)

            class Shape:
                members = {k: v for k, v in op.input_shape.members.items() if k != "IfMatch"}

            return type("Op", (), {"input_shape": Shape()})()

    store._client.meta._service_model = OldModel()
    try:
        problem = store.probe_conditional_writes()
    finally:
        store._client.meta._service_model = real
    assert "cannot send IfMatch on PutObject" in problem and "boto3>=1.35.69" in problem


def http_app(cfg: AppConfig, store: ArtifactStore) -> TestClient:
    """The real FastAPI ingress over `store` (no Ray: no model is called by the routes used here)."""
    from serve_app.ingress.context import IngressContext
    from serve_app.ingress.fastapi_app import create_app
    from serve_app.pipelines.services import Services

    services = Services.create(cfg, None, None)
    jobs = JobService(store, cfg.jobs, services.jobs.kinds, cfg.storage.default_tenant)
    services = dataclasses.replace(services, shared=dataclasses.replace(services.shared, store=store), jobs=jobs)
    app = create_app()
    app.state.ctx = IngressContext(services=services, click=None, job_worker=None)
    return TestClient(app, raise_server_exceptions=False)


PCS_JOB = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=5))}, "prompts": [{"text": "car"}]}}


def test_http_submit_is_503_and_readyz_says_why(storage_config, monkeypatch):
    from serve_app.ingress.routers import health

    monkeypatch.setattr(health, "_model_state", lambda: ("ready", {}))  # no Serve here: the models are "ready"
    cfg = AppConfig.model_validate({"storage": storage_config.model_dump()})
    real = open_store(storage_config)
    with http_app(cfg, real) as http:
        assert http.get("/readyz").json()["jobs"] == {"state": "accepting"}
        assert http.post("/v1/jobs", json=PCS_JOB).status_code == 202
    with http_app(cfg, IgnoresConditions(real)) as http:
        r = http.post("/v1/jobs", json=PCS_JOB, headers={"x-request-id": "nc-1"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "storage_not_conditional"
        assert r.json()["error"]["request_id"] == "nc-1"
        assert "does not enforce conditional writes" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] == str(base.CONDITIONAL_RECHECK_S)
        ready = http.get("/readyz")
        assert ready.status_code == 200  # the synchronous API does not need conditional writes
        assert ready.json()["jobs"]["state"] == "refused"
        assert "If-None-Match: * on an existing key was not enforced" in ready.json()["jobs"]["reason"]
        assert len(http.get("/v1/jobs").json()["jobs"]) == 1  # reads still work


# -- J3: an unreadable record is quarantined -------------------------------------------------------------


def test_an_unreadable_record_is_quarantined_and_the_others_run(store, caplog):
    kinds = registry(Echo())
    service = JobService(store, JOBS, kinds)
    good = service.submit("echo", {"text": "good"})
    bad = service.submit("echo", {"text": "bad"})
    newer = service.submit("echo", {"text": "newer"})
    bad_key = keys.job_record_key("default", bad.job_id)
    store.put(bad_key, b'{"job_id": "truncated', "application/json")
    newer_raw = json.loads(newer.to_bytes())
    newer_raw.update(priority=9, tags=["a"])  # a newer version's fields
    store.put(keys.job_record_key("default", newer.job_id), json.dumps(newer_raw).encode(), "application/json")

    assert {r.job_id for r in service.list()[0]} == {good.job_id, newer.job_id}  # the listing skips it
    with pytest.raises(UnreadableRecord):
        service.get(bad.job_id)

    with caplog.at_level(logging.ERROR, logger="serve_app.jobs"):
        assert service.recover() == []  # quarantines, and starts watching the others
    assert sorted(service.recover(now=utcnow() + LATER)) == sorted([good.job_id, newer.job_id])
    quarantined = keys.quarantine_key("default", bad_key)
    assert quarantined == f"t/default/quarantine/jobs/{bad.job_id}/record.json"
    assert store.get(quarantined).data == b'{"job_id": "truncated'
    assert not exists(store, bad_key)
    assert not exists(store, keys.active_job_key("default", bad.job_id))
    logged = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(logged) == 1 and bad_key in logged[0] and "not JSON" in logged[0] and quarantined in logged[0]
    with pytest.raises(NotFound):
        service.get(bad.job_id)

    async def run() -> list[JobRecord]:
        runner = JobRunner(service, kinds, "w1", JOBS)
        runner.start()
        try:
            return [await wait_for(lambda j=j: (r := service.get(j)).terminal and r, what=j)
                    for j in (good.job_id, newer.job_id)]
        finally:
            await runner.stop()

    done = asyncio.run(run())
    assert [(r.status, r.attempts) for r in done] == [("succeeded", 1), ("succeeded", 1)]
    assert json.loads(store.get(done[1].result_key).data) == {"echo": "newer", "attempt": 1}
    assert "priority" not in json.loads(store.get(keys.job_record_key("default", newer.job_id)).data)
    assert service.recover() == [] and store.get(quarantined).data == b'{"job_id": "truncated'


def test_http_list_skips_an_unreadable_record(storage_config):
    cfg = AppConfig.model_validate({"storage": storage_config.model_dump()})
    store = open_store(storage_config)
    with http_app(cfg, store) as http:
        ids = [http.post("/v1/jobs", json=PCS_JOB).json()["job_id"] for _ in range(3)]
        store.put(keys.job_record_key("default", ids[1]), b"\x00garbage", "application/json")
        r = http.get("/v1/jobs")
        assert r.status_code == 200, r.text
        assert sorted(j["job_id"] for j in r.json()["jobs"]) == sorted([ids[0], ids[2]])
        assert all(j["status"] == "queued" and j["kind"] == "pcs_image" for j in r.json()["jobs"])
        assert http.get(f"/v1/jobs/{ids[0]}").status_code == 200
        broken = http.get(f"/v1/jobs/{ids[1]}")
        assert (broken.status_code, broken.json()["error"]["code"]) == (500, "internal_error")


# -- J2: a crash-looping job fails alone -----------------------------------------------------------------


def test_jobs_recovered_from_an_expired_lease_run_one_at_a_time(store):
    """A worker running two jobs dies (its tasks are cancelled); another worker's recovery re-runs both,
    one at a time, while a new job dispatched to it meanwhile waits its turn; none is charged for the crash."""

    async def scenario():
        kinds1 = registry(Hang(), Echo())
        service1 = JobService(store, JOBS, kinds1)
        first = [service1.submit("hang", {"text": t, "sleep_s": 0.3}) for t in ("a", "b")]
        worker1 = JobRunner(service1, kinds1, "w1", JOBS)
        for job in first:
            worker1.dispatch(job.job_id)
        await wait_for(lambda: all(service1.get(j.job_id).status == "running" for j in first), what="w1 running")
        await worker1.stop()  # the replica dies with both jobs running

        class Finish(Echo):
            name = "hang"

        running = Running()  # every job worker 2 runs, whatever its kind
        kinds2 = registry(Finish(running), Echo(running))
        service2 = JobService(store, JOBS, kinds2)
        worker2 = JobRunner(service2, kinds2, "w2", JOBS)
        worker2.start()
        try:
            await wait_for(lambda: running.now, what="a recovered job to run on w2")
            fresh = service2.submit("echo", {"text": "new", "sleep_s": 0.3})
            worker2.dispatch(fresh.job_id)  # the ingress hands w2 a new job meanwhile: it waits its turn
            done = [await wait_for(lambda j=j: (r := service2.get(j.job_id)).terminal and r, what=j.job_id)
                    for j in [*first, fresh]]
        finally:
            await worker2.stop()
        for record in done[:2]:
            assert (record.status, record.attempts, record.charged_attempts) == ("succeeded", 2, 1)
            assert (record.run_alone, record.lease_alone, record.forgiven_attempts) == (True, True, 1)
        assert (done[2].status, done[2].attempts, done[2].run_alone, done[2].lease_alone) == ("succeeded", 1, False, False)
        assert running.most == 1 and not running.now  # never two jobs at once on w2

    asyncio.run(scenario())


WORKER_PROCESS = """
import asyncio, json, os, sys
from serve_app.config import JobsConfig, StorageConfig
from serve_app.jobs import JobKindRegistry, JobOutput, JobRunner, JobService
from serve_app.storage import open_store

storage, jobs = StorageConfig.model_validate_json(sys.argv[1]), JobsConfig.model_validate_json(sys.argv[2])
mode, owner, job_ids = sys.argv[3], sys.argv[4], sys.argv[5:]
running = set()

class Innocent:
    name = "innocent"
    def validate(self, input):
        pass
    async def execute(self, input, ctx):
        running.add(ctx.job_id)
        try:
            if mode == "first":  # share the worker with the poison job until it kills the process
                await asyncio.Event().wait()
            return JobOutput(json.dumps({"worker": owner, "attempt": ctx.attempt,
                                         "running": sorted(running)}).encode())
        finally:
            running.discard(ctx.job_id)

class Poison:
    name = "poison"
    def validate(self, input):
        pass
    async def execute(self, input, ctx):
        running.add(ctx.job_id)
        while mode == "first" and len(running) < 3:  # let both innocent jobs start first
            await asyncio.sleep(0.01)
        os._exit(137)  # e.g. the OOM killer

async def main():
    kinds = JobKindRegistry()
    kinds.register(Innocent())
    kinds.register(Poison())
    runner = JobRunner(JobService(open_store(storage), jobs, kinds), kinds, owner, jobs)
    if mode == "first":
        for job_id in job_ids:
            runner.dispatch(job_id)
    else:
        runner.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_crash_looping_job_fails_alone(storage_config, store):
    """A job that kills its worker process (os._exit) every time it runs: the two jobs that shared its
    first worker are re-run alone and succeed; the poison job, run alone, ends attempts_exhausted."""
    cfg = JOBS.model_copy(update={"max_attempts": 2})
    service = JobService(store, cfg, registry(type("Innocent", (Echo,), {"name": "innocent"})(),
                                              type("Poison", (Echo,), {"name": "poison"})()))  # to submit them
    innocent = [service.submit("innocent", {"n": n}) for n in (1, 2)]
    poison = service.submit("poison", {})
    ids = [job.job_id for job in (*innocent, poison)]

    def worker(mode: str, owner: str, *job_ids: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WORKER_PROCESS, storage_config.model_dump_json(),
                                 cfg.model_dump_json(), mode, owner, *job_ids], cwd=REPO, env=os.environ.copy())

    first = worker("first", "shared", *ids)
    assert first.wait(timeout=120) == 137  # the poison job killed it with both innocent jobs running
    for job_id in ids:
        record = service.get(job_id)
        assert (record.status, record.attempts, record.lease_owner, record.lease_alone) == ("running", 1, "shared", False)

    crashes, proc = 0, None
    try:
        while not all(service.get(job_id).terminal for job_id in ids):
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    assert proc.returncode == 137
                    crashes += 1
                assert crashes < 6, "the poison job should have been given up on by now"
                proc = worker("recovery", f"r{crashes}")
            time.sleep(0.1)
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    dead = service.get(poison.job_id)
    assert (dead.status, dead.error.code) == ("failed", "attempts_exhausted")
    assert (dead.attempts, dead.forgiven_attempts, dead.charged_attempts) == (3, 1, cfg.max_attempts)
    assert "while running it alone" in dead.error.message
    assert crashes == cfg.max_attempts  # each charged attempt cost one recovery worker
    for job in innocent:
        done = service.get(job.job_id)
        assert (done.status, done.attempts, done.forgiven_attempts, done.run_alone) == ("succeeded", 2, 1, True)
        result = json.loads(store.get(done.result_key).data)
        assert result["running"] == [job.job_id]  # it ran alone on its recovery worker
        assert result["worker"] == done.lease_owner and result["attempt"] == 2


# -- J4: lease expiry on the worker's own clock ----------------------------------------------------------


@pytest.mark.parametrize("skew", [timedelta(hours=-1), timedelta(hours=1)], ids=["behind", "ahead"])
def test_lease_expiry_does_not_depend_on_the_clocks_of_other_hosts(store, skew):
    """The job's worker runs on a host whose wall clock is an hour off; the watching worker neither steals
    a live lease (clock behind: its timestamps look long expired) nor waits an hour for a dead one (ahead)."""
    owner_host = JobService(store, JOBS, registry())  # its `now` is off by `skew`
    clock = ManualClock()
    watcher = JobService(store, JOBS, registry(), clock=clock)
    job = owner_host.submit("echo", {"text": "a"}, now=utcnow() + skew)
    claimed = owner_host.claim(job.job_id, "skewed", now=utcnow() + skew, alone=False)
    assert (claimed.created_at < utcnow() - timedelta(minutes=30)) == (skew < timedelta(0))

    assert watcher.recover_due() == []  # first sighting: the watch starts
    assert watcher.claim(job.job_id, "watcher") is None
    for _ in range(3):  # the owner keeps renewing: never stolen, however stale its timestamps look
        clock.advance(0.9 * JOBS.lease_s)
        owner_host.heartbeat(job.job_id, claimed.lease_id, now=utcnow() + skew)
        assert watcher.recover_due() == []
    clock.advance(0.9 * JOBS.lease_s)
    assert watcher.recover_due() == []  # 0.9 lease since the last renewal it saw
    assert watcher.claim(job.job_id, "watcher") is None
    clock.advance(0.2 * JOBS.lease_s)  # the owner died: a full lease without a change
    assert watcher.recover_due() == [DueJob(job.job_id, True)]
    taken = watcher.claim(job.job_id, "watcher", alone=True)
    assert (taken.lease_owner, taken.attempts, taken.forgiven_attempts, taken.run_alone) == ("watcher", 2, 1, True)


def test_queued_pickup_is_observed_too_and_now_is_injectable(store):
    clock = ManualClock()
    service = JobService(store, JOBS, registry(), clock=clock)
    t0 = utcnow() - timedelta(days=3)  # a submit "long ago" by another host's clock
    job = service.submit("echo", {"text": "a"}, now=t0)
    assert (job.created_at, job.updated_at) == (t0, t0)
    assert service.recover_due() == []  # never judged by the old timestamp
    clock.advance(JOBS.queued_pickup_timeout_s)
    assert service.recover_due() == [DueJob(job.job_id, False)]
    t1 = t0 + timedelta(seconds=5)
    cancelled = service.cancel(job.job_id, now=t1)
    assert (cancelled.status, cancelled.updated_at, cancelled.finished_at) == ("cancelled", t1, t1)
    other = service.submit("echo", {"text": "b"})
    claimed = service.claim(other.job_id, "w1")
    t2 = utcnow() + timedelta(minutes=7)
    renewed = service.heartbeat(other.job_id, claimed.lease_id, now=t2)
    assert (renewed.updated_at, renewed.lease_expires_at) == (t2, t2 + timedelta(seconds=JOBS.lease_s))
    assert service.recover_due() == []
