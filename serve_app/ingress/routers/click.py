"""POST /v1/pvs/image: masks from clicks and boxes (SAM 1/2 style, on SAM 3's tracker). JSON bodies; the
image by id (uploaded, embedding cached) or by reference."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from serve_app.codecs.image_decode import DecodedImage
from serve_app.config import AppConfig
from serve_app.ingress.body import image_body_limit, read_json_model
from serve_app.ingress.context import IngressContext, context_of
from serve_app.ingress.error_handling import request_id_of
from serve_app.ingress.openapi import json_request_body
from serve_app.ingress.responses import json_body_response
from serve_app.pipelines.click import validate_objects
from serve_app.schemas import ClickImageRequest, ClickImageResponse, ErrorBody, ImageByIdOrRef
from serve_app.storage import keys

router = APIRouter(tags=["clicks"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 403, 404, 409, 413, 415, 422, 429, 503, 504)}
_MASK_INPUT_BYTES = 512 * 1024  # a mask_input handle of a 288x288 model is ~200 kB of base64 at worst


def body_limit(cfg: AppConfig) -> int:
    """An inline image plus every object's mask_input."""
    return image_body_limit(cfg.limits, cfg.click.max_objects * _MASK_INPUT_BYTES + 1024 * 1024)


async def resolve_image(ctx: IngressContext, req: ImageByIdOrRef) -> tuple[str, DecodedImage | None]:
    """(image id, the decoded image when the request carried or referenced the bytes). An image given by
    value or reference is stored like POST /v1/images does, so the returned id keeps working whatever the
    embedding cache holds; an image_id is only validated (loaded later, on a cache miss)."""
    image_id = req.image_id if req.image_id is not None else (req.image.image_id if req.image else None)
    if image_id is not None:
        return keys.validate_sha256(image_id), None
    assert req.image is not None  # ImageByIdOrRef: exactly one of image_id / image
    image = await ctx.services.images.save(await ctx.services.images.load(req.image))
    return image.sha256, image


@router.post(
    "/v1/pvs/image",
    response_model=ClickImageResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="Masks from clicks and boxes, several objects per call, refinable with mask_input",
    openapi_extra=json_request_body(ClickImageRequest),
    description="Points/boxes are pixels of the original (EXIF-rotated) image. Send each object's "
    "`mask_input` from the previous answer with the next click to refine it.",
)
async def segment_clicks(request: Request) -> Response:
    # the context without a dependency: FastAPI runs a sync dependency (get_context) in its thread pool, a
    # thread hand-off per click for a dict lookup
    ctx = context_of(request)
    req = await read_json_model(request, ClickImageRequest, body_limit(ctx.config))
    validate_objects(req, ctx.config.click)  # before any image I/O
    image_id, image = await resolve_image(ctx, req)
    # encoded and serialised in one step (ClickPipeline.segment_json); no response_model validation
    return json_body_response(await ctx.click.segment_json(image_id, image, req, request_id_of(request)))
