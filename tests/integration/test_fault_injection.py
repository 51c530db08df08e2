"""Faults under load, on an app of this module's own ("sam3-fault" at /fault, in the session's Ray) whose storage is
a SeaweedFS of this module's own (`module_seaweedfs`: the session's storage is never touched):

1. Model replicas killed mid-load: a thread pool of HTTP clients sends concept requests (inline image) and
   clicks (on uploaded images, spread over both click replicas by the consistent-hash router) for ~20 s;
   `ray.kill` takes down a ConceptSegmenter replica at ~5 s and a ClickSegmenter replica at ~10 s (2 replicas
   each). Every answer is a 200, or a 503 with Retry-After and an error code (the requests in flight on the
   killed replica); Serve replaces the replicas, and the service is back to 100 % success without a restart:
   N consecutive successes of each kind, waited for with a bounded timeout.
2. Storage outage mid-load: the S3 server is stopped (its PID, SIGTERM) for ~10 s and restarted on the same
   ports and data dir. Storage-backed requests (image upload, job submit, `"return": "url"`) answer 503 +
   Retry-After + `storage_unavailable` during it; inline requests (/v1/pcs/image with base64) all answer 200;
   nothing acknowledged with a 2xx before, during or after the outage is lost (every stored image, job and
   result is readable afterwards; every job finishes).

The load's timeline (kill/stop at fixed offsets) is real time on purpose: it is the load's duration. Recovery
is always a waited-for condition. Each test prints its counts (answers by status, 503s, recovery time).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import ray
import requests

from tests.conftest import serve_args
from tests.fixtures.s3 import s3_storage_config
from tests.helpers import b64, png_bytes, serve_replicas, wait_for, wait_job

APP, PREFIX = "sam3-fault", "/fault"
T = 60  # per request
CONSECUTIVE = 20  # successes in a row that count as recovered
WAITING = {"max_batch_size": 8, "eager_when_idle": False}  # every request waits in the batch queue


@pytest.fixture(scope="module")
def base(serve_url, tiny_model_dir, module_seaweedfs) -> str:
    """The fault app's base URL: 2 concept + 2 click replicas (so a killed one leaves a live one), jobs and
    images on this module's storage; no video actors."""
    from ray import serve

    from serve_app.app import build_app

    model_replica = {"num_replicas": 2, "num_cpus": 0.5, "num_gpus": 0, "max_ongoing_requests": 16,
                     "max_queued_requests": 64}
    args = serve_args(tiny_model_dir, storage=s3_storage_config(module_seaweedfs).model_dump(),
                      # batches wait for company (0.25 s as in the session app, clicks 0.1 s): requests spend
                      # that long queued on a replica, so a killed one has requests in flight
                      concept={"replica": model_replica, "batching": {**WAITING, "batch_wait_timeout_s": 0.25}},
                      click={"replica": model_replica, "batching": {**WAITING, "batch_wait_timeout_s": 0.1}},
                      ingress={"replica": {"num_cpus": 0.5, "max_ongoing_requests": 64, "max_queued_requests": 128}},
                      video={"warm_pool": 0})
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_url + PREFIX
    serve.delete(APP)


# -- load ---------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    kind: str
    started: float  # time.monotonic()
    ended: float
    status: int
    retry_after: str | None
    code: str | None
    body: dict


def _answer(kind: str, started: float, r: requests.Response | None, error: Exception | None = None) -> Answer:
    if r is None:  # no HTTP answer at all (connection reset...): recorded as status 0, which fails the test
        return Answer(kind, started, time.monotonic(), 0, None, repr(error), {})
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text[:300]}
    code = body.get("error", {}).get("code") if isinstance(body, dict) and r.status_code >= 400 else None
    return Answer(kind, started, time.monotonic(), r.status_code, r.headers.get("Retry-After"), code, body)


class Load:
    """Worker threads, each repeating one request kind (a callable session -> Response) until stopped."""

    def __init__(self, kinds: dict[str, tuple[int, Callable[[requests.Session], requests.Response]]]):
        self.kinds = kinds
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(sum(n for n, _ in kinds.values()))
        self._futures = [self._pool.submit(self._worker, kind, send)
                         for kind, (n, send) in kinds.items() for _ in range(n)]

    def _worker(self, kind: str, send: Callable[[requests.Session], requests.Response]) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = _answer(kind, started, send(session))
                except requests.RequestException as exc:
                    answer = _answer(kind, started, None, exc)
                with self._lock:
                    self.answers.append(answer)

    def count(self, kind: str, status: int) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.kind == kind and a.status == status)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for f in self._futures:
            f.result(timeout=2 * T)
        self._pool.shutdown()
        return sorted(self.answers, key=lambda a: a.started)


def _by_status(answers: list[Answer]) -> dict[str, dict[int, int]]:
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for a in answers:
        out[a.kind][a.status] += 1
    return {k: dict(sorted(c.items())) for k, c in out.items()}


def _check_503(a: Answer, code: str | None = None) -> None:
    """A failed answer: 503 with a Retry-After of >= 1 s and an error code (the given one, if any)."""
    assert a.status == 503, (a.kind, a.status, a.body)
    assert a.retry_after is not None and int(a.retry_after) >= 1, (a.kind, a.retry_after, a.body)
    assert a.code and (code is None or a.code == code), (a.kind, a.code, a.body)


def _recover(send: Callable[[requests.Session], requests.Response], ok: Callable[[int], bool], what: str,
             timeout_s: float = 120) -> float:
    """Send until CONSECUTIVE answers in a row are successes (each failure on the way must be a proper 503);
    the monotonic time the winning streak started."""
    streak: list[float] = []
    with requests.Session() as session:
        def succeeded_in_a_row():
            started = time.monotonic()
            r = send(session)
            if ok(r.status_code):
                streak.append(started)
            else:
                _check_503(_answer(what, started, r))
                streak.clear()
            return len(streak) >= CONSECUTIVE
        wait_for(succeeded_in_a_row, timeout_s, f"{CONSECUTIVE} successes in a row of {what}", interval_s=0)
    return streak[0]


def _kill_one_replica(deployment: str) -> str:
    replicas = serve_replicas(APP, deployment)
    assert len(replicas) == 2, replicas
    replica_id, (name, namespace) = sorted(replicas.items())[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return replica_id


# -- 1. killed model replicas ------------------------------------------------------------------------------------


def test_killed_model_replicas_fail_only_their_requests_then_the_service_recovers(base):
    from ray import serve

    images = [png_bytes(seed=40 + i) for i in range(6)]
    image_ids = []
    for data in images:  # several images: the consistent-hash router puts them on both click replicas
        r = requests.post(base + "/v1/images", files={"file": ("a.png", data, "image/png")}, timeout=T)
        assert r.status_code == 200, r.text
        image_ids.append(r.json()["image_id"])
    pcs_body = {"image": {"base64": b64(images[0])}, "prompts": [{"text": "car"}], "threshold": 0.0,
                "max_instances": 2, "mask_format": "none"}
    clicks = iter(range(10**9))

    def concept(session: requests.Session) -> requests.Response:
        return session.post(base + "/v1/pcs/image", json=pcs_body, timeout=T)

    def click(session: requests.Session) -> requests.Response:
        image_id = image_ids[next(clicks) % len(image_ids)]
        return session.post(base + "/v1/pvs/image", json={"image_id": image_id, "objects": [{"points": [[40, 30]]}]},
                            timeout=T)

    def replaced(deployment: str, old: str) -> bool:
        """Serve runs 2 replicas of `deployment` again, none of them the killed one."""
        ids = serve_replicas(APP, deployment)
        return old not in ids and len(ids) == 2 and \
            serve.status().applications[APP].deployments[deployment].replica_states.get("RUNNING") == 2

    load = Load({"concept": (3, concept), "click": (3, click)})
    killed: dict[str, tuple[str, float]] = {}  # deployment -> (killed replica id, when)
    back: dict[str, float] = {}  # deployment -> when Serve had replaced it
    try:
        wait_for(lambda: load.count("concept", 200) >= 3 and load.count("click", 200) >= 3, 60, "the load to run")
        t0 = time.monotonic()
        schedule = [(5.0, "ConceptSegmenter"), (10.0, "ClickSegmenter")]  # kill at t0 + s
        while time.monotonic() < t0 + 20:  # the load's ~20 s, watching Serve replace the replicas
            if schedule and time.monotonic() >= t0 + schedule[0][0]:
                deployment = schedule.pop(0)[1]
                killed[deployment] = (_kill_one_replica(deployment), time.monotonic())
            for deployment, (old, _) in killed.items():
                if deployment not in back and replaced(deployment, old):
                    back[deployment] = time.monotonic()
            time.sleep(0.2)
    finally:
        answers = load.stop()

    kinds = {"concept": "ConceptSegmenter", "click": "ClickSegmenter"}
    failed = [a for a in answers if a.status != 200]
    for a in failed:
        _check_503(a, "model_unavailable")
    for kind, deployment in kinds.items():
        kill_at = killed[deployment][1]
        mine = [a for a in failed if a.kind == kind]
        # only requests in flight on the killed replica fail: sent before it died (or while the router still
        # had it, well under a second), answered after; never more than there are clients of the kind
        assert all(a.started < kill_at + 1.0 and a.ended >= kill_at for a in mine), (kind, kill_at, mine)
        assert len(mine) <= load.kinds[kind][0], (kind, mine)
    # Serve replaces the killed replicas (new ids), without a restart of anything else
    for deployment, (old, _) in killed.items():
        if deployment not in back:
            wait_for(lambda d=deployment, o=old: replaced(d, o), 120, f"Serve to replace the killed {deployment}")
            back[deployment] = time.monotonic()
    # 100 % success again: CONSECUTIVE answers in a row after the kill (in the load if it got there, else now)
    recovered = {}
    for kind, deployment in kinds.items():
        kill_at = killed[deployment][1]
        after = [a for a in answers if a.kind == kind and a.ended >= kill_at]
        streak_start = next((after[i].started for i in range(len(after) - CONSECUTIVE + 1)
                             if all(a.status == 200 for a in after[i:i + CONSECUTIVE])), None)
        if streak_start is None:
            streak_start = _recover(concept if kind == "concept" else click, lambda s: s == 200, kind)
        recovered[kind] = round(max(0.0, streak_start - kill_at), 2)
    for send, kind in ((concept, "concept"), (click, "click")):  # and with the replacements in the rotation
        _recover(send, lambda s: s == 200, f"{kind} once Serve replaced the replica")
    print(f"\nreplica kills: {len(answers)} answers in {answers[-1].ended - answers[0].started:.1f} s "
          f"{_by_status(answers)}; 503s: {[(a.kind, a.code, round(a.started - killed[kinds[a.kind]][1], 2)) for a in failed]}"
          f"\n  seconds from the kill to {CONSECUTIVE} successes in a row: {recovered}; to Serve running a "
          f"replacement replica: { {d: round(back[d] - at, 1) for d, (_, at) in killed.items()} }")


# -- 2. storage outage -------------------------------------------------------------------------------------------


def _readable_image(base: str, image_id: str) -> bool:
    r = requests.post(base + "/v1/images", json={"image": {"image_id": image_id}, "precompute": False}, timeout=T)
    return r.status_code == 200


def test_storage_outage_is_503_for_storage_routes_inline_keeps_working_nothing_accepted_is_lost(
        base, module_seaweedfs):
    seeds = iter(range(1000, 10**9))
    inline = png_bytes(seed=60)
    pcs_inline = {"image": {"base64": b64(inline)}, "prompts": [{"text": "car"}], "threshold": 0.0,
                  "max_instances": 2, "mask_format": "none"}

    def upload(session: requests.Session) -> requests.Response:  # a new image each time: a storage write
        return session.post(base + "/v1/images", params={"precompute": "false"}, timeout=T,
                            files={"file": ("a.png", png_bytes(width=32, height=24, seed=next(seeds)), "image/png")})

    def submit(session: requests.Session) -> requests.Response:
        job = {"kind": "pcs_image", "input": {**pcs_inline, "image": {"base64": b64(inline)}}}
        return session.post(base + "/v1/jobs", json=job, timeout=T)

    def as_url(session: requests.Session) -> requests.Response:
        return session.post(base + "/v1/pcs/image", json={**pcs_inline, "return": "url"}, timeout=T)

    def concept_inline(session: requests.Session) -> requests.Response:
        return session.post(base + "/v1/pcs/image", json=pcs_inline, timeout=T)

    storage_kinds = {"upload": upload, "job": submit, "url": as_url}
    load = Load({"inline": (2, concept_inline), **{k: (1, send) for k, send in storage_kinds.items()}})
    try:
        wait_for(lambda: all(load.count(k, s) >= 2 for k, s in (("inline", 200), ("upload", 200), ("job", 202),
                                                                 ("url", 200))), 60, "the load to run")
        module_seaweedfs.stop()  # SIGTERM to the server's PID; its ports and data dir stay
        stopped = time.monotonic()
        time.sleep(10)  # the outage's length
        restarting = time.monotonic()
        module_seaweedfs.start()  # same ports, same data dir; returns once it takes writes
        restarted = time.monotonic()
        streak = {kind: _recover(send, lambda s: 200 <= s < 300, kind) for kind, send in storage_kinds.items()}
    finally:
        answers = load.stop()

    # sent once the server had exited (stop() waits for that), answered before it was started again
    during = [a for a in answers if a.started >= stopped + 0.5 and a.ended <= restarting]
    print(f"\nstorage outage: {len(answers)} answers {_by_status(answers)}; while down: {_by_status(during)}; "
          f"back to {CONSECUTIVE} successes in a row {({k: round(v - restarted, 1) for k, v in streak.items()})} s "
          "after the restart")
    assert all(a.status == 200 for a in answers if a.kind == "inline"), _by_status(answers)
    for a in answers:
        if a.kind != "inline" and not 200 <= a.status < 300:
            _check_503(a, "storage_unavailable")
    for kind in storage_kinds:  # the outage was seen by every storage-backed kind
        assert any(a.status == 503 for a in during if a.kind == kind), (kind, _by_status(during))
    assert all(a.status == 503 for a in during if a.kind != "inline"), _by_status(during)

    # nothing acknowledged is lost
    accepted = [a for a in answers if a.kind != "inline" and 200 <= a.status < 300]
    image_ids = {a.body["image_id"] for a in accepted if a.kind == "upload"}
    job_ids = [a.body["job_id"] for a in accepted if a.kind == "job"]
    result_urls = [a.body["result_url"] for a in accepted if a.kind == "url"]
    assert image_ids and job_ids and result_urls
    assert all(_readable_image(base, i) for i in image_ids)
    assert all(requests.get(url, timeout=T).status_code == 200 for url in result_urls)
    done = [wait_job(base, job_id, timeout_s=180) for job_id in job_ids]
    assert all(d["status"] == "succeeded" for d in done), [d for d in done if d["status"] != "succeeded"]
    print(f"after the outage: {len(image_ids)} uploads, {len(job_ids)} jobs, {len(result_urls)} stored results "
          "acknowledged - all readable, every job succeeded")
