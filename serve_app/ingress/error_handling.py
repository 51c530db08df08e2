"""The one place that maps exceptions to HTTP responses, and the request-id middleware.

Body: {"error": {"code", "message", "request_id"}}; header x-request-id on every response, exactly once: behind
the Serve proxy the proxy sets it (ray.serve._private.http_util.RequestIdMiddleware: it puts the client's id, or
one it generates, on the request and APPENDS the same value to every response), so the app never adds its own;
standalone (no proxy: tests' TestClient) the middleware here echoes or generates it.
- Sam3Error (serve_app.errors): its status and code. 4xx carry their message; 429/503 get Retry-After (the
  error's own, else `ingress.retry_after_s`); a Sam3Error with status 500 is a bug: message hidden, stack
  logged.
- Request validation (FastAPI): 422 validation_error. Routing errors (Starlette): 404/405.
- Anything else is a bug: 500 internal_error, message hidden, stack logged. Ray/Serve failures of model
  calls never arrive here untranslated: serve_app.pipelines.remote translates them at the call site.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import Sam3Error, format_validation_errors

log = logging.getLogger("serve_app.ingress")

REQUEST_ID_HEADER = "x-request-id"
_RID_BYTES = REQUEST_ID_HEADER.encode("latin-1")
DEFAULT_RETRY_AFTER_S = 2  # only when the app has no config (never behind Serve)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "unknown"


def connection_request_id(conn: HTTPConnection) -> str:
    """The request id of a request or a WebSocket, for code that runs outside RequestIdMiddleware's reach (pure
    ASGI middleware, WebSocket handshakes): the id the middleware put on the request, else the x-request-id the
    client (or the Serve proxy) sent, first 128 characters, else a new one."""
    rid = getattr(conn.state, "request_id", None)
    if rid:
        return str(rid)
    incoming = conn.headers.get(REQUEST_ID_HEADER)
    return incoming[:128] if incoming else uuid.uuid4().hex


def error_response(request_id: str, status: int, code: str, message: str,
                   retry_after_s: int | None = None, limit: str | None = None) -> JSONResponse:
    """The error body; x-request-id is not set here (RequestIdMiddleware or the Serve proxy sets it once).
    `limit`: for a quota refusal (429), the name of the tenant's limit it hit (body `error.limit`)."""
    headers: dict[str, str] = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(int(retry_after_s))
    detail = {"code": code, "message": message, "request_id": request_id}
    if limit:
        detail["limit"] = limit
    body = {"error": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def configured_retry_after_s(request: Request) -> int:
    """`ingress.retry_after_s` of the replica's config: the one default Retry-After for 429/503."""
    ctx = getattr(request.app.state, "ctx", None)
    return ctx.config.ingress.retry_after_s if ctx is not None else DEFAULT_RETRY_AFTER_S


def sam3_error_response(request: Request, err: Sam3Error) -> JSONResponse:
    rid = request_id_of(request)
    if err.status_code >= 500 and err.status_code not in (503, 504):
        log.error("request %s failed with %s", rid, err.code, exc_info=err)
        return _internal_error(rid)
    if err.status_code >= 500:
        log.warning("request %s failed: %s %s", rid, err.code, err.message)
    retry = err.retry_after_s
    if retry is None and err.status_code in (429, 503):
        retry = configured_retry_after_s(request)
    return error_response(rid, err.status_code, err.code, err.message, retry, getattr(err, "limit", None))


def _internal_error(rid: str) -> JSONResponse:
    return error_response(rid, 500, "internal_error", "internal error; quote the request id when reporting it")


def behind_serve_proxy() -> bool:
    """True inside a Serve replica (the app is reached through the Serve proxy, which sets x-request-id)."""
    try:
        from ray import serve

        serve.get_replica_context()  # raises outside a replica
    except Exception:
        return False
    return True


class RequestIdMiddleware:
    """Pure ASGI (no task group or memory streams per request, unlike `@app.middleware("http")`): puts the
    request id on `request.state.request_id` (the incoming x-request-id, first 128 characters, else a new
    one) and, with `echo`, on the response. Behind the Serve proxy the header is always present (the client's,
    or one the proxy generated) and the proxy appends it to the response: adding ours too would send it
    twice, so `echo` is off there. An exception raised past the exception handlers (in the middleware chain
    itself) becomes the usual error body when no response has started; after that it propagates."""

    def __init__(self, app: ASGIApp, echo: bool):
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        incoming = request.headers.get(REQUEST_ID_HEADER)
        rid = incoming[:128] if incoming else uuid.uuid4().hex
        request.state.request_id = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.echo:
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _RID_BYTES]
                    headers.append((_RID_BYTES, rid.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise
            await _unhandled(request, exc)(scope, receive, send_with_id)


def install_error_handling(app: FastAPI) -> None:
    """Request-id middleware + exception handlers on `app`."""
    # Decided once, when the replica builds its app (Serve sets the replica context before that).
    echo_request_id = not behind_serve_proxy()

    app.add_middleware(RequestIdMiddleware, echo=echo_request_id)

    @app.exception_handler(Sam3Error)
    async def _sam3(request: Request, exc: Sam3Error):
        return sam3_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(request_id_of(request), 422, "validation_error", format_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error_response(request_id_of(request), exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: list every method of the path (Starlette names one route's)
            response.headers["Allow"] = _allowed_methods(request) or response.headers.get("Allow", "")
        return response

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception):
        return _unhandled(request, exc)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """The methods some route of the app fully matches for the request's path ("GET, POST"), asked through
    each route's own `matches` (included routers resolve their nesting themselves)."""
    from starlette.routing import Match

    def routed(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(dict(scope))[0] == Match.FULL for route in request.app.router.routes)

    return ", ".join(m for m in _METHODS if routed(m))


def _unhandled(request: Request, exc: BaseException) -> JSONResponse:
    if isinstance(exc, Sam3Error):
        return sam3_error_response(request, exc)
    rid = request_id_of(request)
    log.error("unhandled error (request_id=%s)", rid, exc_info=exc)
    return _internal_error(rid)
