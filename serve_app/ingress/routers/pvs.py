"""POST /v1/pvs/image (clicks/boxes, SAM 1/2 style, on SAM 3's tracker) and POST /v1/auto/image
(automatic "segment everything"). JSON bodies; the image by id (uploaded, embedding cached) or by ref."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from serve_app.errors import UnsupportedMediaType
from serve_app.ingress.body import (
    content_kind,
    parse_json_body,
    parse_model,
    read_capped,
)
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.errors import request_id_of
from serve_app.ingress.openapi import json_request_body
from serve_app.schemas import (
    AutoImageRequest,
    AutoImageResponse,
    AutoOptions,
    ErrorBody,
    ImageRef,
    PvsImageRequest,
    PvsImageResponse,
    PvsOptions,
)
from serve_app.storage import keys

router = APIRouter(tags=["visual prompts"])

_ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422, 429, 503, 504)}
_MASK_INPUT_BYTES = 512 * 1024  # a mask_input handle of a 288x288 model is ~200 kB of base64 at worst


async def _image(ctx: IngressContext, image_id: str | None, ref: ImageRef | None) -> tuple[str, bytes | None]:
    """(image id, the bytes when the request carried the image itself). Ids are validated; stored images
    are loaded only if the replica does not hold the embedding (see PromptPipeline)."""
    if ref is not None and ref.image_id is not None:
        image_id = ref.image_id
    if image_id is not None:
        return keys.validate_sha256(image_id), None
    data = await ctx.images.load(ref)
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest()), data


@router.post(
    "/v1/pvs/image",
    response_model=PvsImageResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    summary="Masks from clicks and boxes, several objects per call, refinable with mask_input",
    openapi_extra=json_request_body(PvsImageRequest),
    description="Points/boxes are pixels of the original (EXIF-rotated) image. Send each object's "
    "`mask_input` from the previous answer with the next click to refine it.",
)
async def pvs_image(request: Request, ctx: Annotated[IngressContext, Depends(get_context)]) -> Any:
    req = parse_model(PvsImageRequest, await _json(request, ctx))
    image_id, data = await _image(ctx, req.image_id, req.image)
    opts = PvsOptions.model_validate(req.model_dump(include=set(PvsOptions.model_fields)))
    return await ctx.prompts.segment(image_id, data, opts, request_id_of(request))


@router.post(
    "/v1/auto/image",
    response_model=AutoImageResponse,
    responses=_ERRORS,
    summary="Automatic mask generation: every object in the image",
    openapi_extra=json_request_body(AutoImageRequest),
    description="A point grid decoded on the cached image embedding, filtered by predicted IoU and stability, "
    "deduplicated by box NMS. Knobs default to the server's prompt.auto config.",
)
async def auto_image(request: Request, ctx: Annotated[IngressContext, Depends(get_context)]) -> Any:
    req = parse_model(AutoImageRequest, await _json(request, ctx))
    image_id, data = await _image(ctx, req.image_id, req.image)
    opts = AutoOptions.model_validate(req.model_dump(include=set(AutoOptions.model_fields)))
    return await ctx.prompts.auto(image_id, data, opts, request_id_of(request))


async def _json(request: Request, ctx: IngressContext) -> object:
    """The JSON body (415 for other content types), capped at an inline image + every object's mask_input."""
    if content_kind(request) != "json":
        raise UnsupportedMediaType("Content-Type must be application/json", "unsupported_media_type")
    cfg = ctx.config
    limit = (cfg.limits.max_image_bytes * 4) // 3 + cfg.prompt.max_objects * _MASK_INPUT_BYTES + 1024 * 1024
    return parse_json_body(await read_capped(request, limit))
