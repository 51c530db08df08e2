"""POST /v1/auto/image: automatic "segment everything" masks on the click model's cached embedding."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from serve_app.ingress.body import read_json_model
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.error_handling import request_id_of
from serve_app.ingress.openapi import json_request_body
from serve_app.ingress.responses import json_response
from serve_app.ingress.routers.click import ERRORS, body_limit, resolve_image
from serve_app.pipelines.click import auto_knobs
from serve_app.schemas import AutoImageRequest, AutoImageResponse

router = APIRouter(tags=["automatic masks"])


@router.post(
    "/v1/auto/image",
    response_model=AutoImageResponse,
    responses=ERRORS,
    summary="Automatic mask generation: every object in the image",
    openapi_extra=json_request_body(AutoImageRequest),
    description="A point grid decoded on the cached image embedding, filtered by predicted IoU and stability, "
    "deduplicated by box NMS. Knobs default to the server's click.auto config.",
)
async def generate_masks(request: Request, ctx: Annotated[IngressContext, Depends(get_context)]) -> Response:
    req = await read_json_model(request, AutoImageRequest, body_limit(ctx.config))
    auto_knobs(req, ctx.config.click)  # bounds, before any image I/O
    image_id, image = await resolve_image(ctx, req)
    answer = await ctx.click.generate_masks(image_id, image, req, request_id_of(request))
    return await json_response(answer, exclude_none=False)  # this route always listed its null fields
