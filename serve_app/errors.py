"""Error types shared by every layer. Each carries its HTTP status and a stable machine-readable code.

They are raised anywhere (model layer, deployments, ingress) and mapped to HTTP in exactly one place,
`serve_app.ingress.error_handling`. They must survive the Ray boundary: Ray re-raises a replica's exception
in the caller as a RayTaskError that is also an instance of the original class, which needs the
exception to be picklable from its constructor args, hence `__reduce__`.

This module imports nothing else from serve_app.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any


class Sam3Error(Exception):
    """Base class: `status_code` (HTTP), `code` (stable string), `message` (safe to show a client)."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, code: str | None = None, *, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.code, self.retry_after_s))


def _rebuild(cls, message, code, retry_after_s):
    return cls(message, code, retry_after_s=retry_after_s)


class InvalidInput(Sam3Error):
    """The request is well-formed HTTP but its content is wrong (bad prompt, box, threshold...)."""

    status_code = 400
    code = "invalid_input"


class ValidationFailed(Sam3Error):
    """The body does not match the request schema (types, ranges, unknown fields)."""

    status_code = 422
    code = "validation_error"


class InvalidImage(InvalidInput):
    """The bytes are not a decodable image (not an image, truncated, corrupt)."""

    code = "invalid_image"


class PayloadTooLarge(Sam3Error):
    status_code = 413
    code = "payload_too_large"


class OutputTooLarge(PayloadTooLarge):
    """The answer would exceed the output budget (limits.max_output_pixels) and cannot be truncated."""

    code = "output_too_large"


class UnsupportedMediaType(Sam3Error):
    status_code = 415
    code = "unsupported_media_type"


class NotFound(Sam3Error):
    status_code = 404
    code = "not_found"


class Forbidden(Sam3Error):
    """The caller may not do this (e.g. a presigned URL with a bad or expired signature)."""

    status_code = 403
    code = "forbidden"


class Conflict(Sam3Error):
    status_code = 409
    code = "conflict"


class PreconditionFailed(Conflict):
    """A conditional storage write lost (If-Match / If-None-Match did not hold): someone else wrote first."""

    code = "precondition_failed"


class Overloaded(Sam3Error):
    """Back-pressure: the service is saturated; the client should retry after `retry_after_s`."""

    status_code = 429
    code = "overloaded"


class QuotaRefused(Sam3Error):
    """The tenant is over one of its limits (config QuotaConfig): `limit` names it (e.g. "requests_per_s"),
    `retry_after_s` says when it frees up (or, for concurrency limits, a short hint). `free_in_s`: for a
    limit that frees at a known time (the request rate), the exact seconds until then (float; not sent to
    clients: the ingress uses it to refuse the tenant's next requests itself until then). Other tenants are
    not affected."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, code: str | None = None, *, retry_after_s: int | None = None,
                 limit: str = "", free_in_s: float | None = None):
        super().__init__(message, code, retry_after_s=retry_after_s)
        self.limit = limit
        self.free_in_s = free_in_s

    def __reduce__(self):
        return (_rebuild_quota, (type(self), self.message, self.code, self.retry_after_s, self.limit, self.free_in_s))


def _rebuild_quota(cls, message, code, retry_after_s, limit, free_in_s=None):
    return cls(message, code, retry_after_s=retry_after_s, limit=limit, free_in_s=free_in_s)


class Unavailable(Sam3Error):
    """A dependency (model replicas, storage) is down or warming up; retry after `retry_after_s`."""

    status_code = 503
    code = "unavailable"


class ModelOutOfMemory(Unavailable):
    """The model replica ran out of accelerator memory for this request even when running it alone (503 +
    Retry-After: memory frees as other batches finish). The replica itself keeps serving."""

    code = "model_out_of_memory"


class StartupFailure(Unavailable):
    """Something the service needs at start cannot be used (the model checkpoint, the storage), for a known
    cause with a known fix. `line` is the ONE log line that says so: `sam3-serve: cannot load the model 'X'
    [model_gated]: <cause>. Fix: <fix>` (one line, whatever the cause's own text). `startup_lines` finds such
    lines in any text (a Ray status message, a traceback, a log). `retryable`: a later attempt may work
    (network down), as opposed to a wrong setting that only a person can fix."""

    code = "startup_failure"

    def __init__(self, subject: str, code: str, cause: str, fix: str, *, retry_after_s: int | None = None):
        self.subject, self.cause, self.fix = _one_line(subject), _one_line(cause), _one_line(fix)
        super().__init__(f"sam3-serve: {self.subject} [{code}]: {self.cause}. Fix: {self.fix}", code,
                         retry_after_s=retry_after_s)

    @property
    def line(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_STARTUP_CODES

    def __reduce__(self):
        return (_rebuild_startup, (type(self), self.subject, self.code, self.cause, self.fix, self.retry_after_s))


def _rebuild_startup(cls, subject, code, cause, fix, retry_after_s):
    return cls(subject, code, cause, fix, retry_after_s=retry_after_s)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


# Startup failures a later attempt may get past by itself (the network or a server coming back).
RETRYABLE_STARTUP_CODES = frozenset({"model_hub_unreachable", "storage_unreachable", "storage_unavailable"})
_STARTUP_LINE = re.compile(r"sam3-serve: cannot [^\n\[]*\[[a-z0-9_]+\]: [^\n]*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def startup_lines(text: str) -> list[str]:
    """The StartupFailure lines in `text` (e.g. a deployment's status message, which holds a traceback), each
    once, in order of appearance."""
    found: list[str] = []
    for m in _STARTUP_LINE.finditer(_ANSI.sub("", text or "")):
        line = m.group(0).rstrip()
        if line not in found:
            found.append(line)
    return found


def startup_code(line: str) -> str:
    """The code of a StartupFailure line (`model_gated` of `sam3-serve: ... [model_gated]: ...`), else ""."""
    m = re.search(r"\[([a-z0-9_]+)\]: ", line)
    return m.group(1) if m else ""


class Timeout(Sam3Error):
    status_code = 504
    code = "timeout"


def format_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic error list -> 'field.path: message; ...' (short, no input echo)."""
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes/contexts, outermost first (cycles cut, at most 20): where start-up failures are
    classified (model loading, storage checks), the telling error is often a cause deep in the chain."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
