"""/v1/videos: the tenant's video library (upload once, name, list, reuse by video_id, delete), and
/v1/storage/usage. The work is in serve_app.pipelines.media_library."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from serve_app.errors import ValidationFailed
from serve_app.ingress.body import content_kind, parse_model, read_json_model
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.openapi import inline_schema, json_request_body
from serve_app.ingress.routers.video import receive_video_upload
from serve_app.pipelines.media_library import VideoLibrary, sanitize_name, storage_usage
from serve_app.pipelines.pools import run_io
from serve_app.schemas import (
    ErrorBody,
    StorageUsage,
    VideoCreateRequest,
    VideoEntry,
    VideoList,
    VideoPatchRequest,
    VideoRef,
)

router = APIRouter(tags=["media library"])
Ctx = Annotated[IngressContext, Depends(get_context)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


_FORM_SCHEMA = {
    "type": "object",
    "required": ["video"],
    "properties": {
        "video": {"type": "string", "format": "binary", "description": "mp4/mov/webm/mkv file."},
        "name": {"type": "string", "maxLength": 128,
                 "description": "Display name (default: the file name, printable characters, <= 128)."},
    },
}


def _library(ctx: IngressContext) -> VideoLibrary:
    return ctx.video.library


@router.post(
    "/v1/videos",
    status_code=201,
    response_model=VideoEntry,
    responses={200: {"model": VideoEntry, "description": "The same bytes are in the library already: that entry "
                     "(original name and created_at; a name given now is not applied)."},
               **_errors(400, 403, 404, 413, 415, 422, 429, 503)},
    summary="Add a video to the library (probed, stored once by content)",
    description="Multipart `video` file (+ optional `name`), or JSON {\"upload_id\"|\"url\"|\"video_id\": ..., "
    "\"name\"?}. video_id = sha256 of the bytes. The file is probed (PyAV) against video.limits before anything is "
    "stored: not a video 400 invalid_video / no_frames, 415 unsupported_codec, 413 video_too_large / "
    "video_too_long / frame_too_large. 201 with the new entry; 200 with the existing one when the same bytes "
    "were added before (its name and created_at are kept: rename with PATCH). A JSON `video_id` registers a "
    "video that a session create stored. Default name: the multipart file name, else \"video-{id[:12]}\".",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(VideoCreateRequest)},
        "multipart/form-data": {"schema": _FORM_SCHEMA},
    }}},
)
async def add_video(request: Request, response: Response, ctx: Ctx) -> VideoEntry:
    library = _library(ctx)
    max_bytes = library.limits.max_video_bytes
    workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="sam3-library-")
    try:
        if content_kind(request) == "json":
            body = await read_json_model(request, VideoCreateRequest, 64 * 1024)
            ref = VideoRef(upload_id=body.upload_id, url=body.url, video_id=body.video_id)
            path, _ = await ctx.video.fetch(ref, workdir)
            name = body.name
        else:
            path, filename, fields = await receive_video_upload(request, workdir, max_bytes)
            name = _form_name(fields.get("name")) or sanitize_name(filename)
        # Not on the bounded pools: probing demuxes the whole file and the put may take minutes for a large video.
        entry, created = await asyncio.to_thread(library.add_file, path, name)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    if not created:
        response.status_code = 200
    return entry


def _form_name(value: object) -> str | None:
    """The multipart `name` field, validated like PATCH's (422 validation_error); None when absent or empty."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationFailed("name: must be a text field, not a file")
    return parse_model(VideoPatchRequest, {"name": value}).name


@router.get(
    "/v1/videos", response_model=VideoList, responses=_errors(400, 422, 503),
    summary="The library's videos, newest first",
    description="Pages of `limit` entries; pass `next_cursor` as `cursor` for the next (older) page.",
)
async def list_videos(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                      cursor: Annotated[str | None, Query(max_length=128)] = None) -> VideoList:
    entries, next_cursor = await run_io(_library(ctx).list, limit, cursor)
    return VideoList(videos=entries, next_cursor=next_cursor)


@router.get(
    "/v1/videos/{video_id}", response_model=VideoEntry,
    responses=_errors(400, 404, 422, 503), summary="One library video",
    description="404 video_not_found also for a video that a session stored but that is not registered in the "
    "library (POST /v1/videos with {\"video_id\": ...} registers it).",
)
async def get_video(video_id: str, ctx: Ctx) -> VideoEntry:
    return await run_io(_library(ctx).get, video_id)


@router.patch(
    "/v1/videos/{video_id}", response_model=VideoEntry,
    responses=_errors(400, 404, 409, 413, 415, 422, 503), openapi_extra=json_request_body(VideoPatchRequest),
    summary="Rename a library video", description="JSON {\"name\": 1-128 printable characters}.",
)
async def rename_video(video_id: str, request: Request, ctx: Ctx) -> VideoEntry:
    body = await read_json_model(request, VideoPatchRequest, 16 * 1024)
    return await run_io(_library(ctx).rename, video_id, body.name)


@router.delete(
    "/v1/videos/{video_id}", status_code=204, responses=_errors(400, 404, 409, 422, 503),
    summary="Delete a library video (bytes, metadata, index)",
    description="409 video_in_use (the session ids in the message) while a live session (ingesting, ready or "
    "parked) was created from it, unless force=true: such sessions keep working on their own frames, but new "
    "sessions can no longer name the video. 404 video_not_found when nothing of it is stored.",
)
async def delete_video(video_id: str, ctx: Ctx,
                       force: Annotated[bool, Query(description="Delete even while live sessions use it.")] = False
                       ) -> Response:
    await asyncio.to_thread(_library(ctx).delete, video_id, force)  # reads every session record: off the io pool
    return Response(status_code=204)


@router.get(
    "/v1/storage/usage", response_model=StorageUsage, responses=_errors(503),
    summary="Bytes and object counts of the tenant's stored objects, by category",
    description="Computed now from a listing of every object (no object is read): takes about one storage "
    "request per 1000 objects.",
)
async def get_storage_usage(ctx: Ctx) -> StorageUsage:
    return await asyncio.to_thread(storage_usage, ctx.services.store, ctx.services.images.tenant)

