"""The one place that maps exceptions to HTTP responses, and the request-id middleware.

Body: {"error": {"code", "message", "request_id"}}; header x-request-id on every response. 4xx for bad
input, 429/503 + Retry-After for saturation and unavailable dependencies, 504 for timeouts, 500 only for
bugs (message hidden, stack logged).
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import format_validation_errors
from serve_app.pipelines.remote import RETRY_AFTER_S, translate_remote_error

log = logging.getLogger("serve_app.ingress")

REQUEST_ID_HEADER = "x-request-id"


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "unknown"


def error_response(request_id: str, status: int, code: str, message: str,
                   retry_after_s: int | None = None) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id}
    if retry_after_s is not None:
        headers["Retry-After"] = str(int(retry_after_s))
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handling(app: FastAPI) -> None:
    """Request-id middleware + exception handlers on `app`."""

    @app.middleware("http")
    async def request_id_middleware(request: Request, call_next):
        # Behind the Serve proxy the header is always present (the client's, or one the proxy generated)
        # and the proxy echoes it on the response; standalone, we generate and echo it ourselves.
        incoming = request.headers.get(REQUEST_ID_HEADER)
        request.state.request_id = incoming[:128] if incoming else uuid.uuid4().hex
        try:
            response = await call_next(request)
        except Exception as exc:  # errors raised past the handlers (middleware stack)
            response = _handle(request, exc)
        if incoming is None:
            response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(request_id_of(request), 422, "validation_error", format_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request_id_of(request), exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception):
        return _handle(request, exc)


def _handle(request: Request, exc: BaseException) -> JSONResponse:
    rid = request_id_of(request)
    err = translate_remote_error(exc)
    if err is None:
        log.exception("unhandled error (request_id=%s)", rid, exc_info=exc)
        return error_response(rid, 500, "internal_error", "internal error; quote the request id when reporting it")
    if err.status_code >= 500:
        log.warning("request %s failed: %s %s", rid, err.code, err.message)
    retry = err.retry_after_s if err.retry_after_s is not None else (
        RETRY_AFTER_S if err.status_code in (429, 503) else None)
    return error_response(rid, err.status_code, err.code, err.message, retry)
