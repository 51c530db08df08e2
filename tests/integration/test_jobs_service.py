"""Jobs that are never lost, on both storage backends (a directory and a real S3 server, SeaweedFS).

JobService transitions are driven with explicit clocks (`now=`) where a lease must expire; JobRunner tests
run real asyncio workers with sub-second leases. The crash tests kill a worker two ways: cancelling its
asyncio tasks (heartbeats stop) and SIGKILLing a separate worker process, then another worker's recovery
finishes the job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from serve_app.config import JobsConfig, StorageConfig
from serve_app.errors import Conflict, InvalidImage, InvalidInput, NotFound, PreconditionFailed, Unavailable
from serve_app.jobs import JobContext, JobKindRegistry, JobOutput, JobRunner, JobService
from serve_app.jobs.records import utcnow
from serve_app.storage import ArtifactStore, keys, open_store
from tests.fixtures.s3 import s3_storage_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOBS = JobsConfig(lease_s=1.0, heartbeat_interval_s=0.25, max_attempts=3, recovery_interval_s=0.2,
                  queued_pickup_timeout_s=0.5, max_concurrent_jobs=2)
LATER = timedelta(seconds=JOBS.lease_s + 1)


# -- test kinds and fakes --------------------------------------------------------------------------


class Echo:
    """Succeeds at once: result {"echo", "attempt", "worker"}, overlay when input["overlay"] is true."""

    name = "echo"

    def __init__(self, worker: str = "w"):
        self.worker = worker

    def validate(self, input: dict) -> None:
        if not isinstance(input.get("text"), str):
            raise InvalidInput("text must be a string")

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        result = {"echo": input["text"], "attempt": ctx.attempt, "worker": self.worker}
        overlay = b"\x89PNG" + input["text"].encode() if input.get("overlay") else None
        return JobOutput(json.dumps(result).encode(), overlay)


class Gate(Echo):
    """Blocks until the test opens the gate (asyncio.Events made inside the running loop)."""

    name = "gate"

    def __init__(self, worker: str = "w"):
        super().__init__(worker)
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return await super().execute(input, ctx)


class Raises(Echo):
    """Raises `errors` one per attempt, then succeeds."""

    name = "raises"

    def __init__(self, *errors: Exception):
        super().__init__()
        self.errors = list(errors)

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        if self.errors:
            raise self.errors.pop(0)
        return await super().execute(input, ctx)


def registry(*kinds) -> JobKindRegistry:
    reg = JobKindRegistry()
    for kind in kinds or (Echo(),):
        reg.register(kind)
    return reg


class SpyStore(ArtifactStore):
    """Delegates to a real store; records every write in order; `down=True` makes every call Unavailable."""

    def __init__(self, inner: ArtifactStore):
        self.inner = inner
        self.writes: list[tuple[str, str, bytes]] = []
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable("storage is down (test)", retry_after_s=1)

    def put(self, key, data, content_type="application/octet-stream", **conditions):
        self._check()
        etag = self.inner.put(key, data, content_type, **conditions)
        self.writes.append(("put", key, data))
        return etag

    def delete(self, key):
        self._check()
        self.inner.delete(key)
        self.writes.append(("delete", key, b""))

    def get(self, key):
        self._check()
        return self.inner.get(key)

    def head(self, key):
        self._check()
        return self.inner.head(key)

    def list(self, prefix, **kwargs):
        self._check()
        return self.inner.list(prefix, **kwargs)

    def presign_get(self, key, expires_s):
        return self.inner.presign_get(key, expires_s)

    def presign_put(self, key, content_type, expires_s, content_length=None):
        return self.inner.presign_put(key, content_type, expires_s, content_length)


@pytest.fixture
def store(storage_config) -> ArtifactStore:
    return open_store(storage_config)


def service_for(store: ArtifactStore, *kinds, cfg: JobsConfig = JOBS) -> JobService:
    return JobService(store, cfg, registry(*kinds))


async def wait_for(predicate, upper_bound_s: float = 30.0, what: str = "condition"):
    """Poll `predicate` (sync, may do storage I/O) until it returns a truthy value; fail after the bound."""
    deadline = time.monotonic() + upper_bound_s
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def exists(store: ArtifactStore, key: str) -> bool:
    try:
        store.head(key)
        return True
    except NotFound:
        return False


# -- submit, get, list, cancel ---------------------------------------------------------------------


def test_submit_stores_a_queued_job(store):
    service = service_for(store)
    record = service.submit("echo", {"text": "car", "overlay": True})
    assert (record.status, record.kind, record.attempts, record.max_attempts) == ("queued", "echo", 0, 3)
    assert record.result_key is None and record.error is None
    assert service.get(record.job_id) == record
    assert service.load_input(record) == {"text": "car", "overlay": True}
    assert record.input_key == keys.job_input_key("default", record.job_id)
    assert exists(store, keys.active_job_key("default", record.job_id))


def test_submit_validates_kind_and_input(store):
    service = service_for(store)
    with pytest.raises(InvalidInput) as info:
        service.submit("nope", {"text": "x"})
    assert info.value.code == "unknown_job_kind"
    with pytest.raises(InvalidInput):
        service.submit("echo", {"text": 3})
    with pytest.raises(InvalidInput):
        service.submit("echo", ["not", "a", "dict"])
    assert service.list() == ([], None)
    with pytest.raises(NotFound):
        service.get("0123456789abcdef")
    with pytest.raises(InvalidInput):
        service.get("../escape")


class SteppingClock:
    """An injected `time` for serve_app.storage.keys: every reading is 1 ms after the previous one, so job
    ids (which sort by their millisecond) made one after another have a defined order without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        self.now += 0.001
        return self.now


def test_list_newest_first_with_status_filter_and_cursor(store, monkeypatch):
    service = service_for(store)
    monkeypatch.setattr(keys, "time", SteppingClock())  # distinct milliseconds, so the order is defined
    ids = [service.submit("echo", {"text": str(i)}).job_id for i in range(5)]
    service.cancel(ids[1])
    service.cancel(ids[3])
    page, cursor = service.list(limit=2)
    assert [r.job_id for r in page] == [ids[4], ids[3]]
    page, cursor = service.list(limit=2, cursor=cursor)
    assert [r.job_id for r in page] == [ids[2], ids[1]]
    page, cursor = service.list(limit=2, cursor=cursor)
    assert [r.job_id for r in page] == [ids[0]] and cursor is None
    assert [r.job_id for r in service.list(status="cancelled")[0]] == [ids[3], ids[1]]
    assert [r.job_id for r in service.list(status="queued")[0]] == [ids[4], ids[2], ids[0]]
    assert service.list(status="succeeded") == ([], None)


def test_cancel_only_queued_jobs(store):
    service = service_for(store)
    queued = service.submit("echo", {"text": "a"})
    cancelled = service.cancel(queued.job_id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert service.cancel(queued.job_id) == cancelled  # idempotent
    assert not exists(store, keys.active_job_key("default", queued.job_id))
    assert service.claim(queued.job_id, "w1") is None
    running = service.submit("echo", {"text": "b"})
    service.claim(running.job_id, "w1")
    with pytest.raises(Conflict) as info:
        service.cancel(running.job_id)
    assert info.value.status_code == 409
    assert service.get(running.job_id).status == "running"


# -- idempotency -----------------------------------------------------------------------------------


def test_idempotency_key_same_body_same_job_different_body_conflict(store):
    service = service_for(store)
    first = service.submit("echo", {"text": "a", "overlay": False}, idempotency_key="req-1")
    again = service.submit("echo", {"overlay": False, "text": "a"}, idempotency_key="req-1")  # key order irrelevant
    assert again == first
    with pytest.raises(Conflict) as info:
        service.submit("echo", {"text": "b"}, idempotency_key="req-1")
    assert info.value.code == "idempotency_key_reused"
    other = service.submit("echo", {"text": "a", "overlay": False}, idempotency_key="req-2")
    assert other.job_id != first.job_id
    assert sorted(r.job_id for r in service.list()[0]) == sorted([first.job_id, other.job_id])


def test_concurrent_replays_of_one_key_make_one_job(store):
    service = service_for(store)
    barrier = threading.Barrier(4)

    def submit(_):
        barrier.wait()
        return service.submit("echo", {"text": "same"}, idempotency_key="burst").job_id

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        job_ids = set(pool.map(submit, range(4)))
    assert len(job_ids) == 1
    assert [r.job_id for r in service.list()[0]] == list(job_ids)


def test_an_idempotency_key_expires_after_its_ttl(store):
    service = service_for(store)  # jobs.idempotency_ttl_s: the default day
    first = service.submit("echo", {"text": "a"}, idempotency_key="daily")
    later = utcnow() + timedelta(seconds=service.cfg.idempotency_ttl_s - 60)
    assert service.submit("echo", {"text": "a"}, idempotency_key="daily", now=later) == first
    expired = utcnow() + timedelta(seconds=service.cfg.idempotency_ttl_s + 60)
    renewed = service.submit("echo", {"text": "b"}, idempotency_key="daily", now=expired)  # any body: a new job
    assert renewed.job_id != first.job_id
    assert service.submit("echo", {"text": "b"}, idempotency_key="daily") == renewed  # the key now names it
    with pytest.raises(Conflict):
        service.submit("echo", {"text": "a"}, idempotency_key="daily")


def test_idempotent_replay_finishes_a_submit_that_crashed_halfway(store):
    spy = SpyStore(store)
    service = service_for(spy)
    original_put = spy.put

    def put_failing_on_record(key, data, content_type="application/octet-stream", **conditions):
        if key.endswith("/record.json"):
            raise Unavailable("storage went away (test)", retry_after_s=1)
        return original_put(key, data, content_type, **conditions)

    spy.put = put_failing_on_record
    with pytest.raises(Unavailable):
        service.submit("echo", {"text": "a"}, idempotency_key="flaky")
    spy.put = original_put
    record = service.submit("echo", {"text": "a"}, idempotency_key="flaky")  # the client's retry
    assert record.status == "queued"
    assert service.list()[0] == [record]
    assert service.submit("echo", {"text": "a"}, idempotency_key="flaky") == record


# -- claims, leases, recovery ----------------------------------------------------------------------


def test_two_claimers_one_wins(store):
    service = service_for(store)
    job = service.submit("echo", {"text": "a"})
    barrier = threading.Barrier(2)

    def claim(owner):
        barrier.wait()
        return service.claim(job.job_id, owner)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(claim, ["w1", "w2"]))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    record = service.get(job.job_id)
    assert (record.status, record.attempts, record.lease_owner) == ("running", 1, winners[0].lease_owner)
    assert record.lease_id == winners[0].lease_id


def test_expired_lease_is_recovered_and_the_old_owner_is_fenced_off(store):
    service = service_for(store)
    job = service.submit("echo", {"text": "a"})
    first = service.claim(job.job_id, "w1")
    assert service.recover() == []  # lease still valid
    assert service.claim(job.job_id, "w2") is None
    later = utcnow() + LATER
    assert service.recover(now=later) == [job.job_id]
    second = service.claim(job.job_id, "w2", now=later)
    assert (second.attempts, second.lease_owner) == (2, "w2")
    with pytest.raises(PreconditionFailed):
        service.heartbeat(job.job_id, first.lease_id)
    with pytest.raises(PreconditionFailed):
        service.complete(job.job_id, first.lease_id, JobOutput(b'{"from":"w1"}'))
    assert not exists(store, keys.job_result_key("default", job.job_id))  # the fenced worker wrote nothing
    done = service.complete(job.job_id, second.lease_id, JobOutput(b'{"from":"w2"}', b"PNG"))
    assert (done.status, done.attempts, done.lease_owner) == ("succeeded", 2, "w2")
    assert store.get(done.result_key).data == b'{"from":"w2"}'
    assert store.get(done.overlay_key).data == b"PNG"
    assert not exists(store, keys.active_job_key("default", job.job_id))
    assert service.recover(now=later + LATER) == []


def test_heartbeat_extends_the_lease(store):
    service = service_for(store)
    job = service.submit("echo", {"text": "a"})
    claimed = service.claim(job.job_id, "w1", now=utcnow() - timedelta(seconds=JOBS.lease_s / 2))  # claimed a while ago
    renewed = service.heartbeat(job.job_id, claimed.lease_id)
    assert renewed.lease_expires_at > claimed.lease_expires_at
    assert service.recover(now=claimed.lease_expires_at + timedelta(milliseconds=5)) == []


def test_attempts_exhausted_marks_the_job_failed(store):
    service = service_for(store, cfg=JOBS.model_copy(update={"max_attempts": 2}))
    job = service.submit("echo", {"text": "a"})
    now = utcnow()
    for attempt in (1, 2):
        claimed = service.claim(job.job_id, f"w{attempt}", now=now)
        assert claimed.attempts == attempt
        now += LATER  # the worker died: its lease runs out
        assert service.recover(now=now) == [job.job_id]
    assert service.claim(job.job_id, "w3", now=now) is None
    record = service.get(job.job_id)
    assert (record.status, record.attempts, record.error.code) == ("failed", 2, "attempts_exhausted")
    assert "w2" in record.error.message and record.finished_at is not None
    assert service.recover(now=now) == []
    assert not exists(store, keys.active_job_key("default", job.job_id))


def test_fail_retryable_requeues_until_attempts_run_out(store):
    service = service_for(store, cfg=JOBS.model_copy(update={"max_attempts": 2}))
    job = service.submit("echo", {"text": "a"})
    first = service.claim(job.job_id, "w1")
    requeued = service.fail(job.job_id, first.lease_id, "model_unavailable", "no replicas", retryable=True)
    assert (requeued.status, requeued.attempts, requeued.error.code) == ("queued", 1, "model_unavailable")
    assert requeued.lease_id is None
    assert service.recover() == []  # not before queued_pickup_timeout_s
    assert service.recover(now=utcnow() + LATER) == [job.job_id]
    second = service.claim(job.job_id, "w2")
    failed = service.fail(job.job_id, second.lease_id, "model_unavailable", "no replicas", retryable=True)
    assert (failed.status, failed.attempts, failed.error.code) == ("failed", 2, "model_unavailable")
    assert "gave up after 2 attempts" in failed.error.message
    with pytest.raises(PreconditionFailed):
        service.fail(job.job_id, second.lease_id, "x", "y", retryable=False)


def test_fail_not_retryable_is_final(store):
    service = service_for(store)
    job = service.submit("echo", {"text": "a"})
    claimed = service.claim(job.job_id, "w1")
    failed = service.fail(job.job_id, claimed.lease_id, "invalid_image", "not an image", retryable=False)
    assert (failed.status, failed.attempts, failed.error.message) == ("failed", 1, "not an image")
    assert service.recover(now=utcnow() + LATER) == []


def test_complete_writes_outputs_before_the_record_flips(store):
    spy = SpyStore(store)
    service = service_for(spy)
    job = service.submit("echo", {"text": "a"})
    claimed = service.claim(job.job_id, "w1")
    spy.writes.clear()
    service.complete(job.job_id, claimed.lease_id, JobOutput(b'{"r":1}', b"PNG"))
    order = [(op, key.rsplit("/", 1)[-1]) for op, key, _ in spy.writes]
    assert order == [("put", "result.json"), ("put", "overlay.png"), ("put", "record.json"), ("delete", job.job_id)]
    assert json.loads(spy.writes[2][2])["status"] == "succeeded"


def test_recover_cleans_stale_markers(store):
    # S3 timestamps have 1 s resolution: give the orphan test a pickup timeout well above that
    service = service_for(store, cfg=JOBS.model_copy(update={"queued_pickup_timeout_s": 10.0}))
    job = service.submit("echo", {"text": "a"})
    claimed = service.claim(job.job_id, "w1")
    service.complete(job.job_id, claimed.lease_id, JobOutput(b"{}"))
    store.put(keys.active_job_key("default", job.job_id), b"")  # as if dropping it had failed
    orphan = keys.active_job_key("default", keys.new_job_id())  # a submit that died before its record
    store.put(orphan, b"")
    assert service.recover() == []
    assert not exists(store, keys.active_job_key("default", job.job_id))
    assert exists(store, orphan)  # too young to tell from a submit in progress
    assert service.recover(now=utcnow() + timedelta(seconds=20)) == []
    assert not exists(store, orphan)


# -- the runner ------------------------------------------------------------------------------------


def test_runner_runs_a_job_to_success(store):
    async def scenario():
        kinds = registry(Echo("w1"))
        service = JobService(store, JOBS, kinds)
        job = service.submit("echo", {"text": "car", "overlay": True})
        done = await JobRunner(service, kinds, "w1", JOBS).run_job(job.job_id)
        assert (done.status, done.attempts, done.lease_owner) == ("succeeded", 1, "w1")
        assert json.loads(store.get(done.result_key).data) == {"echo": "car", "attempt": 1, "worker": "w1"}
        assert store.get(done.overlay_key).data == b"\x89PNGcar"
        assert service.get(job.job_id) == done

    asyncio.run(scenario())


def test_runner_maps_kind_errors(store):
    async def scenario():
        kind = Raises(InvalidImage("not an image"), Unavailable("model down", retry_after_s=1))
        kinds = registry(kind)
        service = JobService(store, JOBS, kinds)
        runner = JobRunner(service, kinds, "w1", JOBS)
        bad = service.submit("raises", {"text": "x"})
        failed = await runner.run_job(bad.job_id)
        assert (failed.status, failed.error.code, failed.error.message) == ("failed", "invalid_image", "not an image")
        flaky = service.submit("raises", {"text": "y"})
        requeued = await runner.run_job(flaky.job_id)
        assert (requeued.status, requeued.error.code, requeued.attempts) == ("queued", "unavailable", 1)
        runner.start()  # recovery picks the re-queued job up after queued_pickup_timeout_s
        try:
            done = await wait_for(lambda: (r := service.get(flaky.job_id)).status == "succeeded" and r, what="retry")
        finally:
            await runner.stop()
        assert (done.attempts, done.error) == (2, None)
        assert json.loads(store.get(done.result_key).data)["attempt"] == 2

    asyncio.run(scenario())


def test_a_dead_worker_job_is_finished_by_another(store):
    """Worker 1's tasks are cancelled mid-job (its replica died: no more heartbeats); worker 2's recovery
    loop re-runs the job once the lease expires."""

    async def scenario():
        gate1, gate2 = Gate("w1"), Gate("w2")
        gate2.release.set()
        kinds1, kinds2 = registry(gate1), registry(gate2)
        service1, service2 = JobService(store, JOBS, kinds1), JobService(store, JOBS, kinds2)
        job = service1.submit("gate", {"text": "survive"})
        worker1 = JobRunner(service1, kinds1, "w1", JOBS)
        worker1.dispatch(job.job_id)
        await asyncio.wait_for(gate1.started.wait(), 30)
        await worker1.stop()  # the replica dies mid-run
        assert gate1.cancelled
        running = service1.get(job.job_id)
        assert (running.status, running.attempts, running.lease_owner) == ("running", 1, "w1")

        worker2 = JobRunner(service2, kinds2, "w2", JOBS)
        worker2.start()
        try:
            done = await wait_for(lambda: (r := service2.get(job.job_id)).terminal and r, what="recovery")
        finally:
            await worker2.stop()
        assert (done.status, done.attempts, done.lease_owner) == ("succeeded", 2, "w2")
        assert json.loads(store.get(done.result_key).data) == {"echo": "survive", "attempt": 2, "worker": "w2"}

    asyncio.run(scenario())


WORKER_PROCESS = """
import asyncio, sys
from serve_app.config import JobsConfig, StorageConfig
from serve_app.jobs import JobKindRegistry, JobRunner, JobService
from serve_app.storage import open_store

class Hang:
    name = "gate"
    def validate(self, input):
        pass
    async def execute(self, input, ctx):
        await asyncio.Event().wait()

async def main():
    storage, jobs = StorageConfig.model_validate_json(sys.argv[1]), JobsConfig.model_validate_json(sys.argv[2])
    kinds = JobKindRegistry()
    kinds.register(Hang())
    await JobRunner(JobService(open_store(storage), jobs, kinds), kinds, "doomed", jobs).run_job(sys.argv[3])

asyncio.run(main())
"""


def test_sigkilled_worker_process_job_completes(storage_config, store):
    """A real worker process holding a running job is SIGKILLed; a surviving worker completes the job."""

    async def scenario():
        service = JobService(store, JOBS, registry(Gate()))
        job = service.submit("gate", {"text": "kill -9"})
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_PROCESS, storage_config.model_dump_json(), JOBS.model_dump_json(),
             job.job_id], cwd=REPO, env=os.environ.copy(),
        )
        try:
            await wait_for(lambda: service.get(job.job_id).lease_owner == "doomed", what="the doomed worker's claim")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert service.get(job.job_id).status == "running"

        class Finish(Echo):
            name = "gate"

        survivor_kinds = registry(Finish("survivor"))
        survivor = JobRunner(JobService(store, JOBS, survivor_kinds), survivor_kinds, "survivor", JOBS)
        survivor.start()
        try:
            done = await wait_for(lambda: (r := service.get(job.job_id)).terminal and r, what="recovery")
        finally:
            await survivor.stop()
        assert (done.status, done.attempts, done.lease_owner) == ("succeeded", 2, "survivor")
        assert json.loads(store.get(done.result_key).data) == {"echo": "kill -9", "attempt": 2, "worker": "survivor"}

    asyncio.run(scenario())


def test_a_worker_that_loses_its_lease_stops_without_writing(store):
    async def scenario():
        gate = Gate("w1")
        kinds = registry(gate)
        service = JobService(store, JOBS, kinds)
        job = service.submit("gate", {"text": "a"})
        worker = JobRunner(service, kinds, "w1", JOBS)
        run = asyncio.create_task(worker.run_job(job.job_id))
        await asyncio.wait_for(gate.started.wait(), 30)
        # another worker takes the job over (as if w1's lease had expired unseen)
        thief = await asyncio.to_thread(service.claim, job.job_id, "w2", utcnow() + LATER)
        assert await asyncio.wait_for(run, 30) is None
        assert gate.cancelled
        assert not exists(store, keys.job_result_key("default", job.job_id))
        record = service.get(job.job_id)
        assert (record.status, record.lease_owner, record.lease_id) == ("running", "w2", thief.lease_id)

    asyncio.run(scenario())


def test_storage_outage_mid_job_is_retried_later_without_corruption(tmp_path):
    """Storage fails while a job finishes: nothing is written, and once storage is back recovery completes it."""
    spy = SpyStore(open_store(StorageConfig(uri=f"file://{tmp_path}/store")))

    async def scenario():
        gate = Gate("w1")
        kinds = registry(gate)
        service = JobService(spy, JOBS, kinds)
        job = service.submit("gate", {"text": "a"})
        worker = JobRunner(service, kinds, "w1", JOBS)
        run = asyncio.create_task(worker.run_job(job.job_id))
        await asyncio.wait_for(gate.started.wait(), 30)
        spy.down = True
        gate.release.set()
        assert await asyncio.wait_for(run, 30) is None  # gave up once its lease could not be proven
        spy.down = False
        record = service.get(job.job_id)
        assert (record.status, record.attempts, record.result_key) == ("running", 1, None)
        worker.start()
        try:
            done = await wait_for(lambda: (r := service.get(job.job_id)).terminal and r, what="recovery")
        finally:
            await worker.stop()
        assert (done.status, done.attempts) == ("succeeded", 2)
        assert json.loads(spy.get(done.result_key).data)["attempt"] == 2

    asyncio.run(scenario())


def test_s3_server_stopped_mid_job(private_seaweedfs, aws_env):
    """The real S3 server goes away while a job runs and comes back: the job still succeeds, intact."""
    store = open_store(s3_storage_config(private_seaweedfs, connect_timeout_s=0.5, read_timeout_s=1.0,
                                         max_attempts=1))

    async def scenario():
        gate = Gate("w1")
        kinds = registry(gate)
        service = JobService(store, JOBS, kinds)
        job = service.submit("gate", {"text": "outage"})
        worker = JobRunner(service, kinds, "w1", JOBS)
        run = asyncio.create_task(worker.run_job(job.job_id))
        await asyncio.wait_for(gate.started.wait(), 30)
        await asyncio.to_thread(private_seaweedfs.stop)
        gate.release.set()
        assert await asyncio.wait_for(run, 60) is None
        assert await worker.recover_once() == []  # recovery skips a pass while storage is down
        with pytest.raises(Unavailable):
            service.get(job.job_id)
        await asyncio.to_thread(private_seaweedfs.start)
        worker.start()
        try:
            done = await wait_for(lambda: (r := service.get(job.job_id)).terminal and r, what="recovery")
        finally:
            await worker.stop()
        assert (done.status, done.attempts) == ("succeeded", 2)
        assert json.loads(store.get(done.result_key).data) == {"echo": "outage", "attempt": 2, "worker": "w1"}

    asyncio.run(scenario())
