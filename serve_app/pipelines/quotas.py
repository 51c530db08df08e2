"""Per-tenant quotas (config `auth.quotas` / `auth.tenant_quotas`, QuotaConfig): the shared ledger and the
ingress's client of it.

    ledger = QuotaLedger(cfg.auth.quota_of)            # ONE per app, inside the QuotaKeeper deployment
    lease = ledger.admit("acme", model_work=True, body_bytes=1234)   # raises QuotaRefused (429)
    ledger.release("acme", lease, extra_bytes=0)

Why one ledger and not one per ingress replica: a limit divided by the replica count turns wrong the moment
the autoscaler adds or removes a replica, and a tenant whose requests land unevenly would be refused while
under its share. Every ingress replica therefore asks the single QuotaKeeper replica (one small actor call per
request of a tenant that has a limit; none otherwise). Its state is memory, except the upload bytes of the day,
which the keeper writes to `t/{tenant}/usage/uploads-{YYYY-MM-DD}.json` every few seconds and reads back after
a restart, so a restarted keeper does not hand out a fresh day. Rate tokens and in-flight leases start empty
after a restart (a short burst of grace, never a refusal).

Limits (each optional):
- requests_per_s + burst: a token bucket per tenant; each admitted request takes one token. Refused:
  `rate_limited`, Retry-After = when the bucket next holds a token (exact).
- max_inflight_model_requests: leases held while model work is in progress (released when the response ends,
  streamed ones included; a lease the ingress never released, e.g. its replica died, expires after
  LEASE_TTL_S). Refused: `quota_exceeded`, Retry-After 1 (model calls take seconds at most).
- upload_bytes_per_day: bytes charged per UTC day (request bodies by their Content-Length at admission plus
  what a body without one turned out to hold, and the declared size of presigned uploads). Refused:
  `quota_exceeded`, Retry-After = until UTC midnight (exact).
- max_concurrent_jobs is not kept here: the jobs' own active markers in storage count them (JobService).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from serve_app.config import QuotaConfig
from serve_app.errors import QuotaRefused

log = logging.getLogger("serve_app.quotas")

LEASE_TTL_S = 900.0  # an in-flight lease nobody released (its ingress replica died) stops counting after this
INFLIGHT_RETRY_AFTER_S = 1
ADMIT_TIMEOUT_S = 2.0  # the ingress waits this long for the keeper, then admits (fails open) and logs


@dataclass
class _TenantState:
    tokens: float = 0.0
    refilled_at: float | None = None  # monotonic time of the last refill; None = bucket never used (full)
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> monotonic expiry
    day: str = ""  # UTC date the upload counter is for
    upload_bytes: int = 0


def utc_day(now: datetime) -> str:
    return now.strftime("%Y-%m-%d")


def seconds_to_midnight(now: datetime) -> int:
    """Whole seconds from `now` (aware, UTC) to the next UTC midnight, at least 1."""
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


class QuotaLedger:
    """Every tenant's rate tokens, in-flight leases and upload bytes of the day (module docstring). Pure and
    single-threaded: the QuotaKeeper calls it from its event loop only. `clock` (monotonic seconds) and `wall`
    (aware UTC datetime) are injectable for tests."""

    def __init__(self, quota_of: Callable[[str], QuotaConfig], *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC), lease_ttl_s: float = LEASE_TTL_S):
        self.quota_of = quota_of
        self._clock = clock
        self._wall = wall
        self._lease_ttl_s = lease_ttl_s
        self._tenants: dict[str, _TenantState] = {}
        self._dirty: set[str] = set()  # tenants whose upload counter changed since the last flush

    # -- the upload counter's persistence (the keeper reads and writes storage) ---------------------------

    def needs_load(self, tenant: str) -> str | None:
        """The UTC day whose stored upload counter must be loaded (`loaded`) before `tenant` is admitted, or
        None when the counter in memory is today's."""
        if self.quota_of(tenant).upload_bytes_per_day is None:
            return None
        today = utc_day(self._wall())
        return None if self._state(tenant).day == today else today

    def loaded(self, tenant: str, day: str, stored_bytes: int) -> None:
        """Install the counter read from storage for `day` (0 when none was stored)."""
        state = self._state(tenant)
        if state.day != day:
            state.day, state.upload_bytes = day, stored_bytes
        else:  # charged meanwhile (another admit loaded first): keep the larger
            state.upload_bytes = max(state.upload_bytes, stored_bytes)

    def dirty_counters(self) -> list[tuple[str, str, int]]:
        """(tenant, day, bytes) of the counters changed since the last call: what to write to storage now."""
        out = [(t, self._tenants[t].day, self._tenants[t].upload_bytes) for t in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def mark_dirty(self, tenants: list[str]) -> None:
        """Counters whose write failed: write them again on the next flush."""
        self._dirty.update(tenants)

    # -- admission ------------------------------------------------------------------------------------

    def admit(self, tenant: str, *, model_work: bool, body_bytes: int = 0) -> str | None:
        """Admit one request of `tenant`: takes a rate token, an in-flight lease when `model_work`, and
        charges `body_bytes` to the day's uploads. Returns the lease id (None when no lease was taken).
        Raises QuotaRefused (nothing taken) when a limit would be exceeded."""
        quota = self.quota_of(tenant)
        state = self._state(tenant)
        now = self._clock()
        self._check_uploads(tenant, quota, state, body_bytes)
        if model_work and quota.max_inflight_model_requests is not None:
            self._expire_leases(state, now)
            if len(state.leases) >= quota.max_inflight_model_requests:
                raise QuotaRefused(
                    f"tenant {tenant} already has {len(state.leases)} model request(s) in progress, its limit "
                    f"max_inflight_model_requests", retry_after_s=INFLIGHT_RETRY_AFTER_S,
                    limit="max_inflight_model_requests")
        if quota.requests_per_s is not None:
            self._refill(quota, state, now)
            if state.tokens < 1.0:
                free_in = (1.0 - state.tokens) / quota.requests_per_s
                raise QuotaRefused(f"tenant {tenant} is over its request rate ({quota.requests_per_s:g}/s, burst "
                                   f"{quota.bucket_size:g})", "rate_limited", retry_after_s=max(1, math.ceil(free_in)),
                                   limit="requests_per_s", free_in_s=free_in)
            state.tokens -= 1.0
        self._charge(tenant, state, body_bytes)
        if model_work and quota.max_inflight_model_requests is not None:
            lease = secrets.token_hex(8)
            state.leases[lease] = now + self._lease_ttl_s
            return lease
        return None

    def release(self, tenant: str, lease: str | None, extra_bytes: int = 0) -> None:
        """End a request `admit` admitted: drop its lease and charge body bytes beyond those it declared.
        Unknown leases (expired, or from before a keeper restart) are ignored."""
        state = self._state(tenant)
        if lease is not None:
            state.leases.pop(lease, None)
        if extra_bytes > 0 and self.quota_of(tenant).upload_bytes_per_day is not None:
            self._charge(tenant, state, extra_bytes)

    def charge_upload(self, tenant: str, nbytes: int) -> None:
        """Charge a presigned upload's declared size; QuotaRefused (nothing charged) if over the day's bytes."""
        quota, state = self.quota_of(tenant), self._state(tenant)
        self._check_uploads(tenant, quota, state, nbytes)
        self._charge(tenant, state, nbytes)

    def usage(self, tenant: str) -> dict[str, Any]:
        """What `tenant` uses of its limits right now (GET /v1/quotas)."""
        quota, state = self.quota_of(tenant), self._state(tenant)
        now = self._clock()
        self._expire_leases(state, now)
        tokens = None
        if quota.requests_per_s is not None:
            self._refill(quota, state, now)
            tokens = round(state.tokens, 3)
        today = utc_day(self._wall())
        return {"rate_tokens": tokens, "inflight_model_requests": len(state.leases),
                "upload_bytes_today": state.upload_bytes if state.day == today else 0}

    # -- internals ------------------------------------------------------------------------------------

    def _state(self, tenant: str) -> _TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _TenantState()
        return state

    @staticmethod
    def _refill(quota: QuotaConfig, state: _TenantState, now: float) -> None:
        assert quota.requests_per_s is not None
        size = quota.bucket_size
        if state.refilled_at is None:
            state.tokens = size
        else:
            state.tokens = min(size, state.tokens + (now - state.refilled_at) * quota.requests_per_s)
        state.refilled_at = now

    @staticmethod
    def _expire_leases(state: _TenantState, now: float) -> None:
        for lease in [lease for lease, expiry in state.leases.items() if expiry <= now]:
            del state.leases[lease]
            log.warning("an in-flight lease expired unreleased (its ingress replica stopped?)")

    def _check_uploads(self, tenant: str, quota: QuotaConfig, state: _TenantState, nbytes: int) -> None:
        limit = quota.upload_bytes_per_day
        if limit is None or nbytes <= 0:
            return
        wall = self._wall()
        today = utc_day(wall)
        used = state.upload_bytes if state.day == today else 0
        if used + nbytes > limit:
            raise QuotaRefused(f"tenant {tenant} would exceed its upload_bytes_per_day ({limit} bytes; {used} used "
                               f"today, {nbytes} more asked); the counter resets at 00:00 UTC",
                               retry_after_s=seconds_to_midnight(wall), limit="upload_bytes_per_day")

    def _charge(self, tenant: str, state: _TenantState, nbytes: int) -> None:
        if nbytes <= 0 or self.quota_of(tenant).upload_bytes_per_day is None:
            return
        today = utc_day(self._wall())
        if state.day != today:
            state.day, state.upload_bytes = today, 0
        state.upload_bytes += nbytes
        self._dirty.add(tenant)


class QuotaGate:
    """The ingress's side: asks the QuotaKeeper deployment (`handle`), or admits everything when the app has
    no limits (`handle` None). `quota_of` is the replica's own copy of the config, so tenants without limits
    never cost a call. If the keeper does not answer within ADMIT_TIMEOUT_S the request is admitted and the
    miss logged: a quota outage degrades fairness, never availability.

    A refusal that says when its limit frees (`free_in_s`: the request rate) is remembered per tenant until
    then, counted from when the call was SENT (so never longer than the keeper would refuse): the tenant's
    requests meanwhile are refused here without a keeper call (`local_refusals` counts them). A client that
    ignores Retry-After then costs the keeper nothing. Such a request is refused as rate_limited even when
    the keeper would have named another limit first (it refuses it either way)."""

    def __init__(self, handle: Any | None, quota_of: Callable[[str], QuotaConfig], *,
                 clock: Callable[[], float] = time.monotonic):
        self.handle = handle
        self.quota_of = quota_of
        self._clock = clock
        self._refusing: dict[str, tuple[float, QuotaRefused]] = {}  # tenant -> (until, the keeper's refusal)
        self.local_refusals = 0

    @classmethod
    def disabled(cls) -> QuotaGate:
        """A gate without a keeper: admits everything."""
        return cls(None, lambda tenant: QuotaConfig())

    def limits(self, tenant: str) -> QuotaConfig | None:
        """`tenant`'s limits when it has any and the keeper runs, else None (nothing to enforce)."""
        if self.handle is None:
            return None
        quota = self.quota_of(tenant)
        return quota if quota.limited else None

    async def admit(self, tenant: str, *, model_work: bool, body_bytes: int) -> str | None:
        """A lease id (or None); raises QuotaRefused."""
        sent = self._clock()
        remembered = self._refusing.get(tenant)
        if remembered is not None:
            until, refused = remembered
            if sent < until:
                self.local_refusals += 1
                raise QuotaRefused(refused.message, refused.code, retry_after_s=max(1, math.ceil(until - sent)),
                                   limit=refused.limit, free_in_s=until - sent)
            del self._refusing[tenant]
        try:
            return await self._call("admit", tenant, model_work, body_bytes)
        except QuotaRefused as refused:
            if refused.free_in_s is not None and refused.free_in_s > 0:
                self._refusing[tenant] = (sent + refused.free_in_s, refused)
            raise

    async def release(self, tenant: str, lease: str | None, extra_bytes: int) -> None:
        await self._call("release", tenant, lease, extra_bytes)

    async def charge_upload(self, tenant: str, nbytes: int) -> None:
        """Raises QuotaRefused when `nbytes` more would exceed the tenant's upload bytes of the day."""
        if self.handle is not None and self.quota_of(tenant).upload_bytes_per_day is not None:
            await self._call("charge_upload", tenant, nbytes)

    async def usage(self, tenant: str) -> dict[str, Any] | None:
        return await self._call("usage", tenant) if self.handle is not None else None

    async def _call(self, method: str, *args: Any) -> Any:
        """The keeper's answer; a refusal comes back as a QuotaRefused VALUE (no exception crosses the actor
        boundary: cheaper, and no traceback) and is raised here."""
        import asyncio

        try:
            answer = await asyncio.wait_for(getattr(self.handle, method).remote(*args), ADMIT_TIMEOUT_S)
        except Exception as exc:
            log.warning("quota keeper did not answer %s (%s): admitting without it", method, type(exc).__name__)
            return None
        if isinstance(answer, QuotaRefused):
            raise answer
        return answer
