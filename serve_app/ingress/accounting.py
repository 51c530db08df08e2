"""Per-tenant accounting at the ingress: Prometheus metrics labelled by tenant, and the tenant in every log
line of a request (serve_app.pipelines.tenant_log).

    sam3_tenant_requests_total{tenant, status}        requests answered, status = 2xx/3xx/4xx/5xx
    sam3_tenant_quota_rejections_total{tenant, limit} 429s from the tenant's limits (serve_app.ingress.quotas)
    sam3_tenant_model_seconds_total{tenant, deployment}  model time (serve_app.deployments; see there)

Label cardinality stays bounded: a tenant label is always a configured tenant (set by AuthMiddleware from a
key the operator listed) or "-" for requests no key was accepted for (401s), never a client string. The
metrics are Ray Serve's (ray.serve.metrics), exported on each node's metrics port with the others.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("serve_app.ingress")

NO_TENANT = "-"
_metrics: dict[str, Any] | None = None


def _get_metrics() -> dict[str, Any]:
    """The process's metric objects, made on first use (no-ops when Ray's metrics are unavailable)."""
    global _metrics
    if _metrics is None:
        try:
            from ray.serve.metrics import Counter

            # Ray annotates tag_keys as a 1-tuple (tuple[str]): Any lets two keys through mypy
            by_status: Any = ("tenant", "status")
            by_limit: Any = ("tenant", "limit")
            _metrics = {
                "requests": Counter("sam3_tenant_requests_total", description="Requests answered, by tenant "
                                    "and status class", tag_keys=by_status),
                "rejections": Counter("sam3_tenant_quota_rejections_total", description="Requests refused by a "
                                      "tenant limit (429)", tag_keys=by_limit),
            }
        except Exception as exc:  # outside Ray (unit tests): count nothing
            log.debug("no Ray metrics (%s)", type(exc).__name__)
            _metrics = {}
    return _metrics


def count_quota_rejection(tenant: str, limit: str) -> None:
    counter = _get_metrics().get("rejections")
    if counter is not None:
        counter.inc(tags={"tenant": tenant, "limit": limit or "unknown"})


class AccountingMiddleware:
    """Pure ASGI, just outside AuthMiddleware (so 401s are counted too): counts each HTTP response by the
    tenant AuthMiddleware set on the connection and the status class. (AuthMiddleware also sets the tenant
    for log lines: serve_app.pipelines.tenant_log.tenant_var.)"""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            tenant = scope.get("state", {}).get("tenant") or NO_TENANT
            counter = _get_metrics().get("requests")
            if counter is not None and status:
                counter.inc(tags={"tenant": tenant, "status": f"{status // 100}xx"})
