"""POST /v1/pcs/image: SAM 3 concept segmentation, synchronous, JSON or multipart."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from serve_app.errors import InvalidInput
from serve_app.ingress.body import content_kind, parse_json_body, parse_model, read_capped, read_form_file
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.errors import request_id_of
from serve_app.ingress.openapi import inline_schema
from serve_app.schemas import ErrorBody, PcsImageRequest, PcsImageResponse, PcsOptions, PcsUrlResponse

router = APIRouter(tags=["concept segmentation"])

_OPTION_FIELDS = ("threshold", "mask_threshold", "max_instances", "mask_format", "overlay", "return")
_URL_RESPONSE_FIELDS = ("request_id", "image_id", "width", "height", "timings_ms", "batch_size")
_FORM_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "The image file."},
        "prompts": {"type": "string", "description": 'JSON list of prompts, e.g. [{"text": "car"}]'},
        "text": {"type": "array", "items": {"type": "string"}, "description": "Repeatable: one text prompt each."},
        "threshold": {"type": "number"}, "mask_threshold": {"type": "number"},
        "max_instances": {"type": "integer"}, "mask_format": {"type": "string", "enum": ["rle", "polygon", "none"]},
        "overlay": {"type": "boolean"}, "return": {"type": "string", "enum": ["inline", "url"]},
    },
}
_ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422, 429, 503, 504)}


@router.post(
    "/v1/pcs/image",
    response_model=PcsImageResponse | PcsUrlResponse,
    responses=_ERRORS,
    response_model_exclude_none=True,
    summary="Segment every instance of each concept in an image",
    description='Results inline (PcsImageResponse), or with "return": "url" stored and linked (PcsUrlResponse).',
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(PcsImageRequest)},
        "multipart/form-data": {"schema": _FORM_SCHEMA},
    }}},
)
async def pcs_image(request: Request, ctx: Annotated[IngressContext, Depends(get_context)]) -> Any:
    limits = ctx.config.limits
    body_limit = (limits.max_image_bytes * 4) // 3 + 1024 * 1024  # base64 overhead + prompts
    if content_kind(request) == "json":
        body = parse_model(PcsImageRequest, parse_json_body(await read_capped(request, body_limit)))
        data = await ctx.images.load(body.image)
        opts = PcsOptions.model_validate(body.model_dump(exclude={"image"}))
    else:
        data, opts = await _parse_multipart(request, body_limit, limits.max_image_bytes)
    if opts.return_ == "inline":
        return await ctx.pcs.run(data, opts, request_id_of(request))
    body, overlay_png = await ctx.pcs.run_parts(data, opts, request_id_of(request))
    urls = await ctx.results.publish(body, overlay_png)
    return {**{k: body[k] for k in _URL_RESPONSE_FIELDS}, **urls}


async def _parse_multipart(request: Request, body_limit: int, max_image_bytes: int) -> tuple[bytes, PcsOptions]:
    """multipart/form-data: `image` file + `prompts` (JSON list) or repeated `text` fields + options."""
    data, form = await read_form_file(request, ("image",), max_file_bytes=max_image_bytes, body_limit=body_limit,
                                      max_fields=64)
    raw: dict[str, Any] = {k: form.get(k) for k in _OPTION_FIELDS if form.get(k) not in (None, "")}
    if "prompts" in form:
        try:
            raw["prompts"] = json.loads(form.get("prompts"))
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInput(f"field 'prompts' is not valid JSON: {exc}", "malformed_json") from exc
    else:
        raw["prompts"] = [{"text": t} for t in form.getlist("text")]
    if "overlay" in raw:
        raw["overlay"] = str(raw["overlay"]).lower() in ("1", "true", "yes", "on")
    return data, parse_model(PcsOptions, raw)
