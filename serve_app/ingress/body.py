"""Reading request bodies within limits: size-capped raw reads, JSON and multipart forms.

JSON is parsed only after a linear, C-speed scan (numpy) of its nesting depth, so a body like `[[[[...`
answers 400 json_too_deep instead of a RecursionError; numbers Python refuses to parse (integers of more
than 4300 digits) answer 400 number_too_large. Schema violations become 422 validation_error, except
the ones that have a stable 400 code of their own (`_ERROR_CODES`): a list over its schema ceiling gets the
same code as over the configured limit (too_many_prompts, too_many_points, ...), invalid prompt text gets
invalid_text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.types import Message, Receive

from serve_app.config import LimitsConfig
from serve_app.errors import (
    InvalidInput,
    PayloadTooLarge,
    Sam3Error,
    UnsupportedMediaType,
    ValidationFailed,
    format_validation_errors,
)
from serve_app.pipelines.image_library import base64_chars
from serve_app.pipelines.pools import run_cpu

M = TypeVar("M", bound=BaseModel)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
MAX_JSON_DEPTH = 32  # the deepest request is ~6 ({"input": {"prompts": [{"boxes": [[...]]}]}})

# (pydantic error type, last field name in its location) -> stable 400 code; None = any field.
_ERROR_CODES: dict[tuple[str, str | None], str] = {
    ("invalid_text", None): "invalid_text",
    ("unknown_export_format", None): "unknown_export_format",
    ("invalid_merge_groups", None): "invalid_merge_groups",
    ("string_unicode", "url"): "invalid_url_key",
    ("string_unicode", "text"): "invalid_text",  # a lone surrogate ("\\ud800" in JSON)
    ("string_too_long", "text"): "text_too_long",
    ("string_too_long", "url"): "url_key_too_long",
    ("too_long", "prompts"): "too_many_prompts",
    ("too_long", "boxes"): "too_many_boxes",
    ("too_long", "box_labels"): "box_labels_mismatch",
    ("too_long", "objects"): "too_many_objects",
    ("too_long", "points"): "too_many_points",
    ("too_long", "point_labels"): "point_labels_mismatch",
}


def image_body_limit(limits: LimitsConfig, extra_bytes: int = 1024 * 1024) -> int:
    """Largest JSON body that can carry a base64 image of limits.max_image_bytes plus `extra_bytes` of
    other fields (prompts, objects, mask inputs)."""
    return base64_chars(limits.max_image_bytes) + extra_bytes


def form_bool(value: object, field: str) -> bool | None:
    """A multipart form field as a boolean: None when absent or empty; 1/true/yes/on (any case) is True,
    0/false/no/off is False; anything else (a file part, "[]", "maybe") is a 422 validation_error."""
    if value in (None, ""):
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValidationFailed(f"{field}: must be a boolean (true/false, 1/0, yes/no, on/off)")


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes, limit {limit}", "body_too_large")


async def read_capped(request: Request, limit: int) -> bytes:
    """The raw body, failing with 413 as soon as it exceeds `limit` bytes (Content-Length checked first)."""
    _check_declared_length(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def capped_receive(receive: Receive, limit: int) -> Receive:
    """An ASGI `receive` that raises 413 body_too_large once more than `limit` body bytes came through it."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body is over {limit} bytes", "body_too_large")
        return message

    return capped


async def read_form_file(
    request: Request, names: tuple[str, ...], *, max_file_bytes: int, body_limit: int, max_fields: int
) -> tuple[bytes, FormData]:
    """multipart/form-data: the bytes of the first file field in `names` (413 over `max_file_bytes`) and
    the whole form for the other fields. 413 for a declared body over `body_limit`, 400 for bad framing."""
    _check_declared_length(request, body_limit)
    try:
        # parsed from a stream that fails at body_limit bytes: a body without Content-Length (chunked) is cut
        # off there, before more of it is spooled to disk
        form = await Request(request.scope, capped_receive(request.receive, body_limit)).form(
            max_files=1, max_fields=max_fields)
    except Sam3Error:
        raise
    except Exception as exc:  # malformed multipart framing
        raise InvalidInput(f"malformed multipart body: {exc}", "malformed_multipart") from exc
    upload = next((form.get(n) for n in names if form.get(n) is not None), None)
    if upload is None or isinstance(upload, str):
        wanted = " or ".join(repr(n) for n in names)
        raise InvalidInput(f"multipart field {wanted} (the image file) is required", "missing_image")
    data = await upload.read(max_file_bytes + 1)
    if len(data) > max_file_bytes:
        raise PayloadTooLarge(f"image is over {max_file_bytes} bytes", "image_too_large")
    return data, form


def parse_model(model: type[M], data: object, *, strict: bool = False) -> M:
    """Validate `data` against a wire model. Pydantic errors become a 422 validation_error with the field
    paths, or the 400 with a specific code that `_ERROR_CODES` gives the first error that has one.

    `strict` for data parsed from JSON: the JSON types must match the schema (a boolean is no number, a
    string no integer; lax mode would take `true` as 1). Multipart forms (all values strings) are lax."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        specific = _specific_error(errors)
        if specific is not None:
            raise specific from None
        raise ValidationFailed(format_validation_errors(errors)) from None


def _specific_error(errors: Sequence[Mapping[str, Any]]) -> InvalidInput | None:
    for e in errors:
        loc = e.get("loc", ())
        field = loc[-1] if loc and isinstance(loc[-1], str) else None  # not an item: points[0] is no "points"
        kind = str(e.get("type", ""))
        code = _ERROR_CODES.get((kind, field)) or _ERROR_CODES.get((kind, None))
        if code is not None:
            return InvalidInput(format_validation_errors([e]), code)
    return None


def json_depth(raw: bytes | str) -> int:
    """The deepest nesting of arrays/objects in JSON text (brackets inside strings do not count). Linear
    and in C: drop escaped backslashes and quotes, keep only quotes and brackets, then numpy cumsums.
    Exact for valid JSON; for invalid JSON any number (the parser rejects it anyway)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if not any(c in data for c in (b"[", b"{")):
        return 0
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = np.frombuffer(data.translate(None, _NOT_STRUCTURAL), dtype=np.uint8)
    if not kept.size:
        return 0
    quote = (kept == ord('"')).view(np.uint8)
    inside = np.bitwise_xor.accumulate(quote) | quote  # a string's quotes and everything between them
    step = np.where(inside == 0, _STEP[kept], 0).astype(np.int8)
    return max(0, int(np.cumsum(step, dtype=np.int32).max()))


_STRUCTURAL = b'"[]{}'
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in _STRUCTURAL)
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def loads_json(raw: bytes | str, what: str = "request body") -> object:
    """JSON text -> Python objects; every failure is a 400 with a code, never a 500 (RecursionError,
    ValueError from Python's 4300-digit int limit)."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(f"{what} nests arrays/objects {depth} deep, limit {MAX_JSON_DEPTH}", "json_too_deep")
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidInput(f"{what} nests arrays/objects too deep", "json_too_deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in {what}: {exc}", "malformed_json") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not UTF-8 encoded JSON", "malformed_json") from None
    except ValueError as exc:  # int("1" * 5000): Python's integer string conversion limit
        if "digits" in str(exc):
            raise InvalidInput(f"{what} has a number with too many digits", "number_too_large") from None
        raise InvalidInput(f"malformed JSON in {what}: {exc}", "malformed_json") from None


def parse_json_body(raw: bytes) -> object:
    if not raw:
        raise InvalidInput("request body is empty", "empty_body")
    return loads_json(raw)


def content_kind(request: Request) -> str:
    """'json' or 'multipart' from the Content-Type header; 415 for anything else."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return "json"
    if ctype == "multipart/form-data":
        return "multipart"
    raise UnsupportedMediaType(
        f"Content-Type must be application/json or multipart/form-data, got {ctype or 'none'}", "unsupported_media_type"
    )



INLINE_PARSE_BYTES = 64 * 1024  # bodies up to this are parsed on the event loop (a thread hop costs more)


async def read_json_model(request: Request, model: type[M], limit: int) -> M:
    """A JSON body (415 for another content type) of at most `limit` bytes, validated as `model`. Larger
    bodies than INLINE_PARSE_BYTES (inline base64 images, mask_input handles: up to tens of MB) are parsed
    and validated on the CPU pool, so one big request does not stall the others on this replica."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'}",
                                   "unsupported_media_type")
    raw = await read_capped(request, limit)
    if len(raw) <= INLINE_PARSE_BYTES:
        return parse_model(model, parse_json_body(raw), strict=True)
    return await run_cpu(lambda: parse_model(model, parse_json_body(raw), strict=True))
