"""QuotaMiddleware and the tenant in log lines, on the real ingress app (create_app) over Starlette's
TestClient. The QuotaKeeper is replaced by a ledger in this process behind a counting handle: these tests
count keeper calls (who is asked, for what). The real keeper over Serve: tests/integration/test_quotas.py."""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.testclient import TestClient

from serve_app.config import AppConfig
from serve_app.errors import QuotaRefused
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from serve_app.pipelines.quotas import QuotaGate, QuotaLedger
from tests.unit.test_auth_config import ACME_KEY, GLOBEX_KEY, api_keys_cfg


class CountingKeeper:
    """A DeploymentHandle look-alike around an in-process QuotaLedger that records every call."""

    def __init__(self, ledger: QuotaLedger):
        self.ledger = ledger
        self.calls: list[tuple] = []

    def __getattr__(self, method: str):
        keeper = self

        class Method:
            @staticmethod
            def remote(*args):
                keeper.calls.append((method, *args))
                fn = getattr(keeper.ledger, method)

                async def answer():
                    try:
                        if method == "admit":
                            tenant, model_work, body_bytes = args
                            return fn(tenant, model_work=model_work, body_bytes=body_bytes)
                        return fn(*args)
                    except QuotaRefused as refused:
                        return refused
                return asyncio.ensure_future(answer())
        return Method


def app_with_keeper(tmp_path, quotas: dict, clock=None) -> tuple[TestClient, CountingKeeper]:
    cfg = AppConfig.model_validate({**api_keys_cfg(tmp_path).model_dump(), "auth": {
        **api_keys_cfg(tmp_path).auth.model_dump(), "tenant_quotas": quotas}})
    app = create_app(cfg)

    @app.post("/v1/pcs/image")  # stands in for the model route (same path: it counts as model work)
    async def model_route(request: Request) -> dict:
        logging.getLogger("serve_app.probe").info("segmenting")
        return {"bytes": len(await request.body())}

    app.router.routes.insert(0, app.router.routes.pop())  # matched before the real route of that path
    clocked = {} if clock is None else {"clock": clock}
    keeper = CountingKeeper(QuotaLedger(cfg.auth.quota_of, **clocked))
    ctx = IngressContext.create(cfg, None, click=None, job_worker=None, sessions=None)
    app.state.ctx = IngressContext(ctx.services, ctx.click, None, QuotaGate(keeper, cfg.auth.quota_of, **clocked))
    return TestClient(app, raise_server_exceptions=False), keeper


def test_a_tenant_without_limits_and_public_routes_never_ask_the_keeper(tmp_path):
    client, keeper = app_with_keeper(tmp_path, {"acme": {"max_inflight_model_requests": 1}})
    assert client.post("/v1/pcs/image", json={}, headers={"X-API-Key": GLOBEX_KEY}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/pcs/image").status_code in (401, 405)  # no key: refused before quotas
    assert keeper.calls == []


def test_model_work_takes_and_releases_a_lease_and_bytes_are_charged(tmp_path):
    client, keeper = app_with_keeper(tmp_path, {"acme": {"max_inflight_model_requests": 1,
                                                         "upload_bytes_per_day": 10_000}})
    r = client.post("/v1/pcs/image", content=b"x" * 300, headers={"X-API-Key": ACME_KEY})
    assert r.status_code == 200 and r.json() == {"bytes": 300}
    (admit, release) = [c for c in keeper.calls if c[0] in ("admit", "release")]
    assert admit == ("admit", "acme", True, 300)
    assert release[:2] == ("release", "acme") and release[2] is not None and release[3] == 0  # its lease back
    assert keeper.ledger.usage("acme") == {"rate_tokens": None, "inflight_model_requests": 0,
                                           "upload_bytes_today": 300}
    r = client.post("/v1/pcs/image", content=b"x" * 9_701, headers={"X-API-Key": ACME_KEY})
    assert r.status_code == 429 and r.json()["error"]["limit"] == "upload_bytes_per_day"
    assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["request_id"] == r.headers["x-request-id"]


def test_log_lines_of_a_request_carry_its_tenant(tmp_path, caplog):
    client, _ = app_with_keeper(tmp_path, {})
    with caplog.at_level(logging.INFO, logger="serve_app.probe"):
        assert client.post("/v1/pcs/image", json={}, headers={"X-API-Key": ACME_KEY}).status_code == 200
        logging.getLogger("serve_app.probe").info("outside a request")
    lines = [(r.getMessage(), r.tenant) for r in caplog.records if r.name == "serve_app.probe"]
    assert lines == [("[tenant=acme] segmenting", "acme"), ("outside a request", "-")]


def test_a_rate_refusal_is_repeated_at_the_ingress_until_the_next_token_without_asking_the_keeper(tmp_path):
    """requests_per_s 2, burst 1: the keeper refuses the 2nd request (next token in 0.5 s); until then the
    gate refuses the tenant itself (same code, limit and a Retry-After counted down), then asks again and
    the keeper admits. Another tenant is unaffected meanwhile."""
    now = [1000.0]
    client, keeper = app_with_keeper(tmp_path, {"acme": {"requests_per_s": 2, "burst": 1},
                                                "globex": {"requests_per_s": 100}}, clock=lambda: now[0])
    gate = client.app.state.ctx.quotas
    acme = {"X-API-Key": ACME_KEY}
    admits = lambda: sum(1 for c in keeper.calls if c[:2] == ("admit", "acme"))  # noqa: E731
    assert client.post("/v1/pcs/image", json={}, headers=acme).status_code == 200
    first = client.post("/v1/pcs/image", json={}, headers=acme)
    assert first.status_code == 429 and first.json()["error"]["code"] == "rate_limited"
    assert (admits(), gate.local_refusals) == (2, 0)
    for t in (1000.1, 1000.49):
        now[0] = t
        again = client.post("/v1/pcs/image", json={}, headers=acme)
        assert again.status_code == 429 and again.headers["Retry-After"] == "1"
        assert again.json()["error"]["code"] == "rate_limited" and again.json()["error"]["limit"] == "requests_per_s"
        assert again.json()["error"]["request_id"] == again.headers["x-request-id"]
    assert (admits(), gate.local_refusals) == (2, 2)
    assert client.post("/v1/pcs/image", json={}, headers={"X-API-Key": GLOBEX_KEY}).status_code == 200
    now[0] = 1000.5  # the next token is due: the keeper is asked again and admits
    assert client.post("/v1/pcs/image", json={}, headers=acme).status_code == 200
    assert (admits(), gate.local_refusals) == (3, 2)


def test_refusals_without_a_known_end_are_not_repeated_locally(tmp_path):
    """A refusal without an exact end (upload bytes here; the in-flight limit frees whenever a request ends)
    is not repeated at the ingress: every request asks the keeper."""
    client, keeper = app_with_keeper(tmp_path, {"acme": {"upload_bytes_per_day": 10}})
    for _ in range(3):
        r = client.post("/v1/pcs/image", content=b"x" * 50, headers={"X-API-Key": ACME_KEY})
        assert r.status_code == 429 and r.json()["error"]["limit"] == "upload_bytes_per_day"
    assert sum(1 for c in keeper.calls if c[0] == "admit") == 3
    assert client.app.state.ctx.quotas.local_refusals == 0
