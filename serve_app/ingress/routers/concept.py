"""POST /v1/pcs/image: SAM 3 concept segmentation, synchronous, JSON or multipart."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from serve_app.ingress.body import (
    content_kind,
    form_bool,
    image_body_limit,
    loads_json,
    parse_model,
    read_form_file,
    read_json_model,
)
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.error_handling import request_id_of
from serve_app.ingress.openapi import inline_schema
from serve_app.ingress.responses import json_response
from serve_app.pipelines.concept import url_response, validate_options, with_inline_overlay
from serve_app.pipelines.pools import run_cpu
from serve_app.schemas import (
    ConceptImageRequest,
    ConceptImageResponse,
    ConceptOptions,
    ConceptUrlResponse,
    ErrorBody,
)

router = APIRouter(tags=["concept segmentation"])

_OPTION_FIELDS = ("threshold", "mask_threshold", "max_instances", "mask_format", "overlay", "return")
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
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 403, 404, 409, 413, 415, 422, 429, 503, 504)}


@router.post(
    "/v1/pcs/image",
    response_model=ConceptImageResponse | ConceptUrlResponse,
    responses=_ERRORS,
    response_model_exclude_none=True,
    summary="Segment every instance of each concept in an image",
    description='Results inline (ConceptImageResponse), or with "return": "url" stored and linked (ConceptUrlResponse).',
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(ConceptImageRequest)},
        "multipart/form-data": {"schema": _FORM_SCHEMA},
    }}},
)
async def segment_concepts(request: Request,
                           ctx: Annotated[IngressContext, Depends(get_context)]) -> Response:
    services = ctx.services
    limits = services.config.limits
    body_limit = image_body_limit(limits)
    opts: ConceptOptions
    if content_kind(request) == "json":
        body = await read_json_model(request, ConceptImageRequest, body_limit)
        validate_options(body, limits)  # before any image I/O
        data = await services.images.load(body.image)
        opts = body
    else:
        data, opts = await _parse_multipart(request, body_limit, limits.max_image_bytes)
        validate_options(opts, limits)
    response, overlay_png = await services.concept.segment(data, opts, request_id_of(request))
    if opts.return_ == "inline":
        if overlay_png is not None:  # base64 of a PNG of up to max_overlay_pixels: not on the event loop
            response = await run_cpu(with_inline_overlay, response, overlay_png)
        return await json_response(response)
    urls = await services.results.publish(response.model_dump_json(exclude_none=True).encode(), overlay_png)
    return await json_response(url_response(response, urls))


async def _parse_multipart(request: Request, body_limit: int, max_image_bytes: int) -> tuple[bytes, ConceptOptions]:
    """multipart/form-data: `image` file + `prompts` (JSON list) or repeated `text` fields + options."""
    data, form = await read_form_file(request, ("image",), max_file_bytes=max_image_bytes, body_limit=body_limit,
                                      max_fields=64)
    raw: dict[str, Any] = {k: form.get(k) for k in _OPTION_FIELDS if form.get(k) not in (None, "")}
    if "prompts" in form:  # 400 malformed_json / json_too_deep / number_too_large, never a 500
        raw["prompts"] = loads_json(str(form.get("prompts")), "field 'prompts'")
    else:
        raw["prompts"] = [{"text": t} for t in form.getlist("text")]
    if "overlay" in raw:
        raw["overlay"] = form_bool(raw["overlay"], "overlay")
    return data, parse_model(ConceptOptions, raw)
