"""POST /v1/images: store an image once (id = sha256 of its bytes) and, by default, cache its embedding;
GET /v1/images lists the stored images, DELETE /v1/images/{image_id} deletes one."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from serve_app.errors import Overloaded, Timeout, Unavailable
from serve_app.ingress.body import content_kind, form_bool, image_body_limit, read_form_file, read_json_model
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.error_handling import request_id_of
from serve_app.ingress.openapi import inline_schema
from serve_app.pipelines.timings import round_ms
from serve_app.schemas import ErrorBody, ImageList, ImageUploadRequest, ImageUploadResponse

router = APIRouter(tags=["images"])
log = logging.getLogger("serve_app.ingress")

_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The image file (or use the field name `image`)."},
        "image": {"type": "string", "format": "binary"},
        "precompute": {"type": "boolean"},
    },
}


@router.post(
    "/v1/images",
    response_model=ImageUploadResponse,
    responses={code: {"model": ErrorBody} for code in (400, 403, 404, 409, 413, 415, 422, 429, 503, 504)},
    summary="Upload an image for clicks (POST /v1/pvs/image) and automatic masks",
    description="Multipart (`file` or `image` field) or JSON {\"image\": {\"base64\"|\"upload_id\"|\"url\": ...}}. "
    "Returns image_id = sha256 of the bytes (re-uploads dedupe). With precompute (default true) the image "
    "embedding is computed now, so the first click is fast.",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(ImageUploadRequest)},
        "multipart/form-data": {"schema": _FORM_SCHEMA},
    }}},
)
async def upload_image(
    request: Request,
    ctx: Annotated[IngressContext, Depends(get_context)],
    precompute: Annotated[bool | None, Query(description="Compute the embedding now (default: config).")] = None,
) -> ImageUploadResponse:
    t0 = time.perf_counter()
    images = ctx.services.images
    max_bytes = ctx.config.limits.max_image_bytes
    if content_kind(request) == "json":
        body = await read_json_model(request, ImageUploadRequest, image_body_limit(ctx.config.limits, 4096))
        data = await images.load(body.image)
        field_precompute = body.precompute
    else:
        data, field_precompute = await _parse_multipart(request, max_bytes)
    image = await images.save(data)
    t1 = time.perf_counter()
    want = next((v for v in (precompute, field_precompute) if v is not None), ctx.config.click.precompute_on_upload)
    done = False
    if want:
        try:
            await ctx.click.precompute(image)
            done = True
        except (Overloaded, Unavailable, Timeout) as exc:  # the image is stored: the first click will encode it
            log.warning("upload %s stored without precompute: %s %s", image.sha256, exc.code, exc.message)
    t2 = time.perf_counter()
    timings = {"store_ms": (t1 - t0) * 1e3, "embed_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}
    return ImageUploadResponse(request_id=request_id_of(request), image_id=image.sha256, width=image.width,
                               height=image.height, precomputed=done, timings_ms=round_ms(timings))


async def _parse_multipart(request: Request, max_bytes: int) -> tuple[bytes, bool | None]:
    """multipart/form-data: one file in `file` or `image`, optional `precompute`."""
    data, form = await read_form_file(request, ("file", "image"), max_file_bytes=max_bytes,
                                      body_limit=max_bytes + 64 * 1024, max_fields=8)
    return data, form_bool(form.get("precompute"), "precompute")


@router.get(
    "/v1/images", response_model=ImageList, tags=["media library"],
    responses={code: {"model": ErrorBody} for code in (400, 422, 503)},
    summary="The stored images (POST /v1/images), in image_id order",
    description="Pages of `limit` entries; pass `next_cursor` as `cursor` for the next page. Image ids are content "
    "hashes, so the order is not by time; created_at is when the bytes were stored.",
)
async def list_images(ctx: Annotated[IngressContext, Depends(get_context)],
                      limit: Annotated[int, Query(ge=1, le=200)] = 50,
                      cursor: Annotated[str | None, Query(max_length=128)] = None) -> ImageList:
    entries, next_cursor = await ctx.services.images.list_stored(limit, cursor)
    return ImageList(images=entries, next_cursor=next_cursor)


@router.delete(
    "/v1/images/{image_id}", status_code=204, tags=["media library"],
    responses={code: {"model": ErrorBody} for code in (400, 404, 422, 503)},
    summary="Delete a stored image",
    description="404 image_not_found when it is not stored. Requests that read it by image_id then get 404 "
    "image_not_found: its cached embedding is dropped from the click replica that holds it (with "
    "`click.routing: consistent_hash`, the default; with `default` routing another replica's copy may answer "
    "clicks until it is evicted).",
)
async def delete_image(image_id: str, ctx: Annotated[IngressContext, Depends(get_context)]) -> Response:
    await ctx.services.images.delete_stored(image_id)
    try:
        await ctx.click.forget(image_id)
    except (Overloaded, Unavailable, Timeout) as exc:  # the image is gone; its embedding ages out of the LRU
        log.warning("image %s deleted, its cached embedding not dropped: %s %s", image_id, exc.code, exc.message)
    return Response(status_code=204)
