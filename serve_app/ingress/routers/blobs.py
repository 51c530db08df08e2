"""GET/PUT /v1/blobs/{key}: the targets of the local storage backend's presigned URLs (development only).

With `storage.uri = s3://…` presigned URLs point at S3 itself and these routes answer 404. With
`file:///dir` they stand in for S3: the query string carries `expires`, `sig` (and `content_length` for a
PUT) made by `LocalStore.presign_*`; a bad or expired signature, or a PUT whose Content-Type differs from
the signed one, is a 403, as is a Content-Length other than the signed one; without a signed length, a body
over `storage.max_upload_bytes` is a 413.

The store is the replica's (IngressContext.store).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from serve_app.errors import Forbidden, InvalidInput
from serve_app.ingress.body import read_capped
from serve_app.ingress.context import IngressContext, get_context
from serve_app.storage.base import ArtifactStore

router = APIRouter(tags=["blobs"], include_in_schema=False)


def get_store(ctx: Annotated[IngressContext, Depends(get_context)]) -> ArtifactStore:
    """FastAPI dependency: the replica's store. Only the file:// backend serves URLs here; the others
    answer 404 from `verify_presigned` (S3 serves its own URLs)."""
    return ctx.services.store


Store = Annotated[ArtifactStore, Depends(get_store)]


@router.get("/v1/blobs/{key:path}")
async def get_blob(key: str, store: Store, expires: str = Query(""), sig: str = Query("")) -> Response:
    store.verify_presigned("GET", key, expires, sig)
    blob = await asyncio.to_thread(store.get, key)
    return Response(blob.data, media_type=blob.content_type, headers={"ETag": blob.etag})


@router.put("/v1/blobs/{key:path}")
async def put_blob(
    key: str,
    request: Request,
    store: Store,
    ctx: Annotated[IngressContext, Depends(get_context)],
    expires: str = Query(""),
    sig: str = Query(""),
    content_length: int | None = Query(None, ge=0),
) -> Response:
    content_type = request.headers.get("content-type", "")
    store.verify_presigned("PUT", key, expires, sig, content_type=content_type, content_length=content_length)
    if content_length is not None and request.headers.get("content-length") != str(content_length):
        raise Forbidden("Content-Length differs from the one the URL was signed for", "invalid_signature")
    max_bytes = ctx.services.config.storage.max_upload_bytes if content_length is None else content_length
    data = await read_capped(request, max_bytes)
    if content_length is not None and len(data) != content_length:
        raise InvalidInput(f"body is {len(data)} bytes, the URL was signed for {content_length}", "length_mismatch")
    etag = await asyncio.to_thread(store.put, key, data, content_type)
    return Response(status_code=200, headers={"ETag": etag})
