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

from serve_app.errors import Forbidden, InvalidInput, NotFound
from serve_app.ingress.body import read_capped
from serve_app.storage.local import LocalStore

router = APIRouter(tags=["blobs"], include_in_schema=False)


def get_local_store(request: Request) -> LocalStore:
    """FastAPI dependency: the replica's store when it is a LocalStore, else 404 (S3 serves its own URLs)."""
    store = request.app.state.ctx.store
    if not isinstance(store, LocalStore):
        raise NotFound("blobs are served by object storage in this deployment", "not_found")
    return store


Store = Annotated[LocalStore, Depends(get_local_store)]


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
    expires: str = Query(""),
    sig: str = Query(""),
    content_length: int | None = Query(None, ge=0),
) -> Response:
    content_type = request.headers.get("content-type", "")
    store.verify_presigned("PUT", key, expires, sig, content_type=content_type, content_length=content_length)
    if content_length is not None and request.headers.get("content-length") != str(content_length):
        raise Forbidden("Content-Length differs from the one the URL was signed for", "invalid_signature")
    data = await read_capped(request, store.max_upload_bytes if content_length is None else content_length)
    if content_length is not None and len(data) != content_length:
        raise InvalidInput(f"body is {len(data)} bytes, the URL was signed for {content_length}", "length_mismatch")
    etag = await asyncio.to_thread(store.put, key, data, content_type)
    return Response(status_code=200, headers={"ETag": etag})
