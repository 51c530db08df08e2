"""QuotaLedger (serve_app.pipelines.quotas): token bucket, in-flight leases, upload bytes per UTC day, on a
controlled clock. The shared-keeper path over HTTP: tests/integration/test_quotas.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from serve_app.config import AuthConfig, QuotaConfig
from serve_app.errors import QuotaRefused
from serve_app.pipelines.quotas import QuotaLedger, seconds_to_midnight


class Clock:
    def __init__(self):
        self.t = 1000.0
        self.wall = datetime(2026, 11, 27, 23, 59, 0, tzinfo=UTC)

    def advance(self, s: float) -> None:
        self.t += s
        self.wall += timedelta(seconds=s)


def ledger(clock: Clock, **limits) -> QuotaLedger:
    auth = AuthConfig(tenant_quotas={"acme": QuotaConfig(**limits)})
    return QuotaLedger(auth.quota_of, clock=lambda: clock.t, wall=lambda: clock.wall, lease_ttl_s=60)


def refused(fn, *args, **kwargs) -> QuotaRefused:
    with pytest.raises(QuotaRefused) as info:
        fn(*args, **kwargs)
    return info.value


def test_token_bucket_allows_the_burst_then_refuses_with_the_exact_wait_and_refills():
    clock = Clock()
    q = ledger(clock, requests_per_s=0.5, burst=3)
    for _ in range(3):
        assert q.admit("acme", model_work=False) is None
    err = refused(q.admit, "acme", model_work=False)
    assert (err.code, err.limit, err.status_code, err.retry_after_s) == ("rate_limited", "requests_per_s", 429, 2)
    assert err.free_in_s == pytest.approx(2.0)
    clock.advance(1.0)  # half a token
    again = refused(q.admit, "acme", model_work=False)
    assert again.retry_after_s == 1 and again.free_in_s == pytest.approx(1.0)
    clock.advance(1.0)
    q.admit("acme", model_work=False)
    assert q.usage("acme")["rate_tokens"] == 0.0


def test_other_tenants_are_not_touched_by_one_tenants_limits():
    clock = Clock()
    q = ledger(clock, requests_per_s=1, burst=1, max_inflight_model_requests=1)
    q.admit("acme", model_work=True)
    refused(q.admit, "acme", model_work=True)
    for _ in range(50):  # globex has no limits at all
        assert q.admit("globex", model_work=True) is None


def test_inflight_leases_refuse_the_next_model_request_until_released_and_expire_if_never_released():
    clock = Clock()
    q = ledger(clock, max_inflight_model_requests=2)
    a = q.admit("acme", model_work=True)
    b = q.admit("acme", model_work=True)
    assert a and b and a != b
    assert q.admit("acme", model_work=False) is None  # not model work: no lease needed
    err = refused(q.admit, "acme", model_work=True)
    assert (err.code, err.limit, err.retry_after_s) == ("quota_exceeded", "max_inflight_model_requests", 1)
    q.release("acme", a)
    q.release("acme", a)  # twice: harmless
    c = q.admit("acme", model_work=True)
    assert q.usage("acme")["inflight_model_requests"] == 2
    clock.advance(61)  # b and c were never released (a dead ingress replica): they expire
    assert q.usage("acme")["inflight_model_requests"] == 0
    q.release("acme", c)  # late release of an expired lease: ignored
    assert q.admit("acme", model_work=True)


def test_refused_admission_takes_nothing():
    clock = Clock()
    q = ledger(clock, requests_per_s=1, burst=2, upload_bytes_per_day=100)
    refused(q.admit, "acme", model_work=False, body_bytes=101)
    assert q.usage("acme") == {"rate_tokens": 2.0, "inflight_model_requests": 0, "upload_bytes_today": 0}


def test_upload_bytes_per_day_counts_bodies_and_presigned_uploads_and_resets_at_utc_midnight():
    clock = Clock()  # 23:59:00 UTC
    q = ledger(clock, upload_bytes_per_day=1000)
    q.admit("acme", model_work=False, body_bytes=600)
    q.release("acme", None, extra_bytes=100)  # a chunked body turned out bigger than declared
    q.charge_upload("acme", 300)
    assert q.usage("acme")["upload_bytes_today"] == 1000
    err = refused(q.charge_upload, "acme", 1)
    assert (err.code, err.limit, err.retry_after_s) == ("quota_exceeded", "upload_bytes_per_day", 60)
    assert q.admit("acme", model_work=False, body_bytes=0) is None  # a bodiless request still passes
    assert q.dirty_counters() == [("acme", "2026-11-27", 1000)]
    assert q.dirty_counters() == []
    clock.advance(60)  # 00:00 UTC: a new day
    assert q.needs_load("acme") == "2026-11-28"
    q.loaded("acme", "2026-11-28", 0)
    assert q.needs_load("acme") is None
    q.charge_upload("acme", 1000)


def test_a_restarted_ledger_continues_from_the_stored_counter():
    clock = Clock()
    q = ledger(clock, upload_bytes_per_day=1000)
    assert q.needs_load("acme") == "2026-11-27"
    q.loaded("acme", "2026-11-27", 900)  # what the keeper read back from storage
    refused(q.charge_upload, "acme", 101)
    q.charge_upload("acme", 100)


def test_tenant_quotas_override_the_defaults_field_by_field():
    auth = AuthConfig(quotas=QuotaConfig(requests_per_s=10, max_concurrent_jobs=3),
                      tenant_quotas={"acme": QuotaConfig(requests_per_s=None, burst=4)})
    assert auth.quota_of("acme") == QuotaConfig(requests_per_s=None, burst=4, max_concurrent_jobs=3)
    assert auth.quota_of("globex") == QuotaConfig(requests_per_s=10, max_concurrent_jobs=3)
    assert auth.quota_of("globex").bucket_size == 10
    assert auth.any_quota and not AuthConfig().any_quota
    with pytest.raises(ValueError, match="not a tenant id"):
        AuthConfig(tenant_quotas={"Bad Tenant": QuotaConfig()})


def test_seconds_to_midnight():
    assert seconds_to_midnight(datetime(2026, 1, 1, 23, 59, 59, 500000, tzinfo=UTC)) == 1
    assert seconds_to_midnight(datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)) == 86400


def test_refusals_survive_pickling_with_their_limit():
    import pickle

    err = QuotaRefused("m", "rate_limited", retry_after_s=3, limit="requests_per_s", free_in_s=2.25)
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.retry_after_s, back.limit, back.message, back.free_in_s) == (
        "rate_limited", 3, "requests_per_s", "m", 2.25)
