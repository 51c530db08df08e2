"""Per-tenant quotas over real Serve HTTP (the `auth_url` app of tests/conftest.py: tenants q-rate, q-flight,
q-bytes and q-jobs have one tight limit each, acme none; one QuotaKeeper deployment holds the shared ledger).

Each limit answers 429 with its code, `error.limit`, a request id and an honest Retry-After, recovers (after
the window, or when the held work ends), and leaves the other tenants' requests alone. Waits are on counters
(GET /v1/quotas), never on sleeps."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ACME_KEY, AUTH_APP, QUOTA_KEYS
from tests.helpers import b64, kill_replica, png_bytes, serve_replicas, wait_for

KEY_OF = {tenant: key for key, tenant in QUOTA_KEYS.items()}


def client_for(auth_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=auth_url, timeout=120, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def acme(auth_url) -> Iterator[httpx.Client]:
    with client_for(auth_url, ACME_KEY) as c:
        yield c


def tenant_client(auth_url: str, tenant: str) -> httpx.Client:
    return client_for(auth_url, KEY_OF[tenant])


def refusal(r: httpx.Response, code: str, limit: str) -> int:
    """Check a quota 429 and return its Retry-After."""
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert (error["code"], error["limit"]) == (code, limit), error
    assert error["request_id"] and r.headers["x-request-id"] == error["request_id"]
    return int(r.headers["Retry-After"])


def usage(c: httpx.Client) -> dict:
    r = c.get("/v1/quotas")
    assert r.status_code == 200, r.text
    return r.json()


def test_request_rate_bucket_refuses_with_the_wait_then_recovers_and_others_are_unaffected(auth_url, acme):
    with tenant_client(auth_url, "q-rate") as c:
        view = usage(c)  # takes a token too: 2 left of the burst of 3
        assert view["limits"]["requests_per_s"] == 0.5 and view["limits"]["burst"] == 3
        answers = [c.get("/v1/jobs") for _ in range(4)]
        assert [a.status_code for a in answers[:2]] == [200, 200]
        retry = refusal(answers[3], "rate_limited", "requests_per_s")
        assert 1 <= retry <= 2  # one token refills in 2 s at 0.5/s
        assert acme.get("/v1/jobs").status_code == 200  # another tenant: no limit, not affected
        # after the window the tenant is served again (each retry waits Retry-After, as a client would)
        wait_for(lambda: c.get("/v1/jobs").status_code == 200, 30, "a rate token to refill", interval_s=retry)


def _slow_concept_body(release: threading.Event) -> Iterator[bytes]:
    body = json.dumps({"image": {"base64": b64(png_bytes(seed=71))}, "prompts": [{"text": "a"}]}).encode()
    yield body[:10]
    release.wait(60)
    yield body[10:]


def test_inflight_model_requests_are_limited_until_the_held_one_ends(auth_url, acme):
    release = threading.Event()
    first: dict[str, httpx.Response] = {}
    with tenant_client(auth_url, "q-flight") as c:
        # A model request whose body arrives slowly holds its in-flight lease from admission to its answer.
        sender = threading.Thread(target=lambda: first.setdefault("r", c.post(
            "/v1/pcs/image", content=_slow_concept_body(release), headers={"Content-Type": "application/json"})))
        sender.start()
        try:
            wait_for(lambda: usage(c)["usage"]["inflight_model_requests"] == 1, 60, "the first request's lease")
            body = {"image": {"base64": b64(png_bytes(seed=72))}, "prompts": [{"text": "b"}]}
            assert refusal(c.post("/v1/pcs/image", json=body), "quota_exceeded", "max_inflight_model_requests") == 1
            assert c.get("/v1/jobs").status_code == 200  # not model work: not limited
            assert acme.post("/v1/pcs/image", json=body).status_code == 200  # another tenant: unaffected
        finally:
            release.set()
            sender.join(120)
        assert first["r"].status_code == 200, first["r"].text
        wait_for(lambda: usage(c)["usage"]["inflight_model_requests"] == 0, 30, "the lease to be released")
        assert c.post("/v1/pcs/image", json=body).status_code == 200


def test_upload_bytes_per_day_covers_presigned_uploads_and_bodies_and_survives_a_keeper_restart(auth_url):
    from ray import serve

    with tenant_client(auth_url, "q-bytes") as c:
        ok = c.post("/v1/uploads", json={"content_type": "image/png", "content_length": 200_000})
        assert ok.status_code == 201, ok.text
        over = c.post("/v1/uploads", json={"content_type": "image/png", "content_length": 100_001})
        retry = refusal(over, "quota_exceeded", "upload_bytes_per_day")
        assert 1 <= retry <= 86_400  # until 00:00 UTC
        used = usage(c)["usage"]["upload_bytes_today"]
        assert 200_000 <= used < 201_000  # the upload plus the small JSON bodies
        # a request body bigger than what is left is refused by its Content-Length, before it is read
        data = bytes(150_000)  # (never decoded: refused by its size first)
        assert len(data) > 300_000 - used
        r = c.post("/v1/images", content=data, headers={"Content-Type": "image/png"})
        refusal(r, "quota_exceeded", "upload_bytes_per_day")
        # the day's counter is stored: a restarted keeper continues from it instead of handing out a new day
        keeper = serve.get_deployment_handle("QuotaKeeper", app_name=AUTH_APP)
        keeper.flush.remote().result()
        (replica,) = serve_replicas(AUTH_APP, "QuotaKeeper")
        kill_replica(AUTH_APP, "QuotaKeeper", replica)
        wait_for(lambda: (set(serve_replicas(AUTH_APP, "QuotaKeeper")) - {replica}) and usage(c)["usage"].get(
            "upload_bytes_today") is not None, 120, "a new QuotaKeeper replica")
        assert usage(c)["usage"]["upload_bytes_today"] >= used
        refusal(c.post("/v1/uploads", json={"content_type": "image/png", "content_length": 100_001}),
                "quota_exceeded", "upload_bytes_per_day")


def test_concurrent_jobs_are_limited_and_an_idempotent_replay_is_never_refused(auth_url, acme):
    job = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=74))}, "prompts": [{"text": "a"}]}}
    with tenant_client(auth_url, "q-jobs") as c:
        # The limit counts jobs still queued or running; a job may end between two submits, so try until a
        # second submit met a first one that was still active (it must then be refused).
        for attempt in range(5):
            key = {"Idempotency-Key": f"q-first-{attempt}"}
            first = c.post("/v1/jobs", json=job, headers=key)
            assert first.status_code == 202, first.text
            first_id = first.json()["job_id"]
            second = c.post("/v1/jobs", json=job)
            if second.status_code == 429:
                assert refusal(second, "quota_exceeded", "max_concurrent_jobs") == 5
                replay = c.post("/v1/jobs", json=job, headers=key)
                assert replay.status_code == 202 and replay.json()["job_id"] == first_id  # never refused
                assert acme.post("/v1/jobs", json=job).status_code == 202  # another tenant: unaffected
                break
            assert second.status_code == 202, second.text
            for job_id in (first_id, second.json()["job_id"]):  # both ran: let them end, then try again
                wait_for(lambda j=job_id: c.get(f"/v1/jobs/{j}").json()["status"] == "succeeded", 120, "the job")
        else:
            pytest.fail("every second submit came after the first job had ended")
        wait_for(lambda: c.get(f"/v1/jobs/{first_id}").json()["status"] == "succeeded", 120, "the first job")
        wait_for(lambda: usage(c)["usage"]["active_jobs"] == 0, 60, "the job's active marker to go")
        assert c.post("/v1/jobs", json=job).status_code == 202
