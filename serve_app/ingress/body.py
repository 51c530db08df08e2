"""Reading request bodies within limits: size-capped raw reads, JSON and multipart forms."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from serve_app.config import LimitsConfig
from serve_app.errors import (
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    format_validation_errors,
)
from serve_app.pipelines.image_library import base64_chars

M = TypeVar("M", bound=BaseModel)
_TRUE = ("1", "true", "yes", "on")


def image_body_limit(limits: LimitsConfig, extra_bytes: int = 1024 * 1024) -> int:
    """Largest JSON body that can carry a base64 image of limits.max_image_bytes plus `extra_bytes` of
    other fields (prompts, objects, mask inputs)."""
    return base64_chars(limits.max_image_bytes) + extra_bytes


def form_bool(value: object) -> bool | None:
    """A multipart form field as a boolean: None when absent or empty; 1/true/yes/on (any case) is True."""
    if value in (None, ""):
        return None
    return str(value).lower() in _TRUE


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


async def read_form_file(
    request: Request, names: tuple[str, ...], *, max_file_bytes: int, body_limit: int, max_fields: int
) -> tuple[bytes, FormData]:
    """multipart/form-data: the bytes of the first file field in `names` (413 over `max_file_bytes`) and
    the whole form for the other fields. 413 for a declared body over `body_limit`, 400 for bad framing."""
    _check_declared_length(request, body_limit)
    try:
        form = await request.form(max_files=1, max_fields=max_fields)
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


def parse_model(model: type[M], data: object) -> M:
    """Validate `data` against a wire model; pydantic errors become a 422 with the field paths."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(format_validation_errors(exc.errors())) from None


def parse_json_body(raw: bytes) -> object:
    if not raw:
        raise InvalidInput("request body is empty", "empty_body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}", "malformed_json") from exc


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



async def read_json_model(request: Request, model: type[M], limit: int) -> M:
    """A JSON body (415 for another content type) of at most `limit` bytes, validated as `model`."""
    if content_kind(request) != "json":
        raise UnsupportedMediaType("Content-Type must be application/json", "unsupported_media_type")
    return parse_model(model, parse_json_body(await read_capped(request, limit)))
