"""POST /v1/uploads: a presigned PUT so large media go straight to storage, not through the API."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from serve_app.codecs.image_decode import SUPPORTED_CONTENT_TYPES
from serve_app.errors import PayloadTooLarge, UnsupportedMediaType
from serve_app.ingress.body import read_json_model
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.openapi import json_request_body
from serve_app.schemas import ErrorBody, UploadRequest, UploadResponse
from serve_app.storage import keys

router = APIRouter(tags=["uploads"])

# What an upload may hold: the image types the decoder accepts, and the video containers ffmpeg reads.
UPLOAD_CONTENT_TYPES = (SUPPORTED_CONTENT_TYPES - {"application/octet-stream"}) | {
    "video/mp4", "video/quicktime", "video/webm", "video/x-matroska", "video/x-msvideo",
}


@router.post(
    "/v1/uploads",
    response_model=UploadResponse,
    status_code=201,
    responses={code: {"model": ErrorBody} for code in (400, 413, 415, 422, 429, 503)},
    summary="Get a presigned PUT URL for a large image or video",
    openapi_extra=json_request_body(UploadRequest),
    description="PUT the file to `url` with exactly `headers` before `expires_at` (storage rejects another "
    "Content-Type or size), then pass {\"upload_id\": ...} as the image of any request. The file is "
    "checked (type, size, decodable) when first used.",
)
async def create_upload(request: Request, ctx: Annotated[IngressContext, Depends(get_context)]) -> UploadResponse:
    body = await read_json_model(request, UploadRequest, 64 * 1024)
    content_type = body.content_type.split(";")[0].strip().lower()
    if content_type not in UPLOAD_CONTENT_TYPES:
        raise UnsupportedMediaType(f"uploads may be {', '.join(sorted(UPLOAD_CONTENT_TYPES))}; got {content_type!r}",
                                   "unsupported_upload_type")
    limit = ctx.config.storage.max_upload_bytes
    if body.content_length > limit:
        raise PayloadTooLarge(f"upload of {body.content_length} bytes is over the limit of {limit}",
                              "upload_too_large")
    await ctx.quotas.charge_upload(ctx.tenant, body.content_length)  # QuotaRefused: 429 upload_bytes_per_day
    upload_id = keys.new_id()
    presigned = await asyncio.to_thread(
        ctx.services.store.presign_put, keys.upload_key(ctx.services.images.tenant, upload_id), content_type,
        ctx.config.storage.presign_expiry_s, body.content_length,
    )
    return UploadResponse(upload_id=upload_id, url=presigned.url, method=presigned.method, headers=presigned.headers,
                          expires_at=presigned.expires_at.isoformat(timespec="seconds"), max_bytes=limit)
