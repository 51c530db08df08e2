"""Reading request bodies within limits: size-capped raw reads, JSON and multipart forms."""

from __future__ import annotations

import json

from fastapi import Request
from pydantic import BaseModel, ValidationError

from serve_app.errors import (
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    format_validation_errors,
)


async def read_capped(request: Request, limit: int) -> bytes:
    """The raw body, failing with 413 as soon as it exceeds `limit` bytes (Content-Length checked first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes, limit {limit}", "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_model(model: type[BaseModel], data: object) -> BaseModel:
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

