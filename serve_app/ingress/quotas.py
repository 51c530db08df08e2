"""QuotaMiddleware: every authenticated request of a tenant with limits passes the shared quota ledger first
(serve_app.pipelines.quotas; config auth.quotas / auth.tenant_quotas).

Pure ASGI, inside AuthMiddleware (it needs the tenant) and outside the routes, so a refusal costs no body read
and no model call, and a model request's in-flight lease is held until its response has been sent completely
(streamed propagation included). Public routes and tenants without limits pass without asking the keeper.

- Admission: one QuotaKeeper call with the tenant, whether the route is model work (MODEL_WORK) and the
  request's Content-Length (charged to the day's upload bytes). Refused: 429 with `rate_limited` or
  `quota_exceeded`, `error.limit` naming the limit, and Retry-After.
- Release, after the response: drops the lease and charges body bytes beyond the declared Content-Length
  (a chunked body), without delaying the response.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import QuotaRefused
from serve_app.ingress.accounting import count_quota_rejection
from serve_app.ingress.auth import route_path
from serve_app.ingress.error_handling import connection_request_id, error_response

# POST routes that hold model work while they run: the in-flight limit counts these
MODEL_WORK = re.compile(r"^/v1/(pcs/image|pvs/image|auto/image|video/sessions/[^/]+/(prompts|propagate))$")


def declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0


class QuotaMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app
        self._releases: set[asyncio.Task] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state", {})
        tenant = state.get("tenant")
        ctx = getattr(getattr(scope.get("app"), "state", None), "ctx", None)
        gate = getattr(ctx, "quotas", None)  # None: an app built around a test context without quotas
        if (scope["type"] not in ("http", "websocket") or tenant is None or state.get("public")
                or gate is None or gate.limits(tenant) is None):
            await self.app(scope, receive, send)
            return
        model_work = scope["type"] == "http" and scope["method"] == "POST" and bool(
            MODEL_WORK.match(route_path(scope)))
        declared = declared_length(scope) if scope["type"] == "http" else 0
        try:
            lease = await gate.admit(tenant, model_work=model_work, body_bytes=declared)
        except QuotaRefused as refused:
            count_quota_rejection(tenant, refused.limit)
            await self._refuse(scope, receive, send, refused)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting_receive if scope["type"] == "http" else receive, send)
        finally:
            extra = max(0, received - declared)
            if lease is not None or extra:
                task = asyncio.ensure_future(gate.release(tenant, lease, extra))
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, refused: QuotaRefused) -> None:
        rid = connection_request_id(HTTPConnection(scope))
        response = error_response(rid, 429, refused.code, refused.message, refused.retry_after_s, refused.limit)
        if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": refused.code})  # 1013: try again later
