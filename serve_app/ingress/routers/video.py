"""/v1/video/sessions: video sessions (ingest, prompts, streamed propagation over NDJSON or WebSocket,
playback of frames and stored masks). The work is in serve_app.pipelines.video."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from serve_app.errors import InvalidInput, PayloadTooLarge, Sam3Error, format_validation_errors
from serve_app.ingress.body import content_kind, loads_json, parse_model, read_json_model
from serve_app.ingress.context import IngressContext, context_of, get_context
from serve_app.ingress.error_handling import request_id_of
from serve_app.ingress.openapi import inline_schema, json_request_body
from serve_app.pipelines.video import ndjson, session_view
from serve_app.schemas import (
    ErrorBody,
    MasksResponse,
    PropagateRequest,
    SessionActionResponse,
    SessionCreateRequest,
    SessionList,
    SessionOptionsIn,
    SessionView,
    VideoPromptRequest,
    VideoPromptResponse,
)
from serve_app.sessions.records import SessionSource
from serve_app.storage import keys

router = APIRouter(tags=["video sessions"])
Ctx = Annotated[IngressContext, Depends(get_context)]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 429, 503, 504)}
_FORM_SCHEMA = {
    "type": "object",
    "required": ["video"],
    "properties": {
        "video": {"type": "string", "format": "binary", "description": "mp4/mov/webm/mkv file."},
        "max_frames": {"type": "integer"}, "fps": {"type": "number"},
    },
}
REBUILT_HEADER = "x-session-rebuilt"


def _rebuilt_headers(rebuilt: bool) -> dict[str, str]:
    return {REBUILT_HEADER: "1"} if rebuilt else {}


@router.post(
    "/v1/video/sessions",
    status_code=201,
    response_model=SessionView,
    response_model_exclude_none=True,
    responses={**ERRORS, 403: {"model": ErrorBody}},
    summary="Create a video session: the video is decoded into frames (PyAV) and stored",
    description="Multipart `video` file (+ `max_frames`, `fps`), or JSON {\"video\": {\"upload_id\"|\"url\"|"
    "\"video_id\"}}. The processing fps is min(source fps, fps, video.limits.max_frames / duration).",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_schema(SessionCreateRequest)},
        "multipart/form-data": {"schema": _FORM_SCHEMA},
    }}},
)
async def create_session(request: Request, ctx: Ctx) -> SessionView:
    sessions = ctx.video
    limits = ctx.config.video.limits
    workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="sam3-video-")
    try:
        if content_kind(request) == "json":
            body = await read_json_model(request, SessionCreateRequest, 64 * 1024)
            sessions.check_options(body)
            path, source = await sessions.fetch(body.video, workdir)
            opts: SessionOptionsIn = body
        else:
            path, opts = await _receive_upload(request, workdir, limits.max_video_bytes)
            sessions.check_options(opts)
            source = SessionSource()
        record = await sessions.create(path, source, opts)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return session_view(record)


async def _receive_upload(request: Request, workdir: str, max_bytes: int) -> tuple[str, SessionOptionsIn]:
    """multipart/form-data: the `video` file copied to `workdir` (413 past max_bytes) + options."""
    path, _, fields = await receive_video_upload(request, workdir, max_bytes)
    raw = {k: fields.get(k) for k in ("max_frames", "fps") if fields.get(k) not in (None, "")}
    return path, parse_model(SessionOptionsIn, raw)


async def receive_video_upload(request: Request, workdir: str,
                               max_bytes: int) -> tuple[str, str | None, dict[str, Any]]:
    """multipart/form-data with a `video` file part: the file copied to `workdir/video` (413 video_too_large past
    `max_bytes`, 400 missing_video / malformed_multipart). Returns (path, the part's client file name or None,
    the other form fields by name: strings, or UploadFile for file parts)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise PayloadTooLarge(f"request body is {declared} bytes, video limit {max_bytes}", "video_too_large")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # malformed multipart framing
        raise InvalidInput(f"malformed multipart body: {exc}", "malformed_multipart") from exc
    upload = form.get("video")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("multipart field 'video' (the video file) is required", "missing_video")
    path = os.path.join(workdir, "video")

    def copy() -> None:
        size = 0
        with open(path, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"video is over {max_bytes} bytes", "video_too_large")
                out.write(chunk)

    await asyncio.to_thread(copy)
    return path, upload.filename, {k: form.get(k) for k in form.keys() if k != "video"}


@router.get("/v1/video/sessions", response_model=SessionList, response_model_exclude_none=True, responses=ERRORS,
            summary="Sessions, newest first")
async def list_sessions(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        cursor: str | None = None) -> SessionList:
    if cursor is not None:
        keys.validate_id(cursor, "cursor")
    records, next_cursor = await ctx.video.list(limit, cursor)
    return SessionList(sessions=[session_view(r) for r in records], next_cursor=next_cursor)


@router.get("/v1/video/sessions/{sid}", response_model=SessionView, response_model_exclude_none=True,
            responses=ERRORS, summary="A session's state and video facts")
async def get_session(sid: str, ctx: Ctx) -> SessionView:
    return session_view(await ctx.video.get(sid))


@router.delete("/v1/video/sessions/{sid}", status_code=204, responses=ERRORS,
               summary="Delete a session: its actor stops, frames, masks, journal and checkpoints are deleted")
async def delete_session(sid: str, ctx: Ctx) -> Response:
    await ctx.video.delete(sid)
    return Response(status_code=204)


@router.get("/v1/video/sessions/{sid}/frames/{index}", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
            response_class=Response, summary="One processed frame as JPEG (never touches a GPU)")
async def get_frame(sid: str, index: int, ctx: Ctx) -> Response:
    data = await ctx.video.frame_jpeg(sid, index)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400, immutable"})


@router.get("/v1/video/sessions/{sid}/masks", response_model=MasksResponse, responses=ERRORS,
            summary="Stored results of a frame range (for playback and exports, without the actor)")
async def get_masks(sid: str, ctx: Ctx, frame_start: Annotated[int, Query(ge=0)] = 0,
                    frame_end: Annotated[int | None, Query(ge=0)] = None) -> MasksResponse:
    return await ctx.video.masks(sid, frame_start, frame_end)


@router.post("/v1/video/sessions/{sid}/prompts", response_model=VideoPromptResponse, responses=ERRORS,
             openapi_extra=json_request_body(VideoPromptRequest),
             summary="A text prompt (detect + track every instance) or clicks/boxes/masks on one frame")
async def add_prompt(sid: str, request: Request, ctx: Ctx, response: Response) -> VideoPromptResponse:
    body = await read_json_model(request, VideoPromptRequest, _prompt_body_limit(ctx))
    result = await ctx.video.prompt(sid, body, request_id_of(request))
    response.headers.update(_rebuilt_headers(result.rebuilt))
    return result


def _prompt_body_limit(ctx: IngressContext) -> int:
    v = ctx.config.video
    frame_rle = 4 * v.limits.max_frame_pixels // 8 + 1024  # a generous bound of one COCO RLE mask
    return min(v.limits.max_objects_per_call * frame_rle, 64 * 1024 * 1024) + 64 * 1024


@router.delete("/v1/video/sessions/{sid}/objects/{obj_id}", response_model=SessionActionResponse, responses=ERRORS,
               summary="Remove an object from every frame")
async def remove_object(sid: str, obj_id: int, request: Request, ctx: Ctx, response: Response) -> SessionActionResponse:
    rebuilt = await ctx.video.remove_object(sid, obj_id, request_id_of(request))
    response.headers.update(_rebuilt_headers(rebuilt))
    return SessionActionResponse(session_id=sid, request_id=request_id_of(request), rebuilt=rebuilt)


@router.post("/v1/video/sessions/{sid}/reset", response_model=SessionActionResponse, responses=ERRORS,
             summary="Clear prompts, objects and stored results (the frames stay)")
async def reset_session(sid: str, request: Request, ctx: Ctx, response: Response) -> SessionActionResponse:
    rebuilt = await ctx.video.reset(sid, request_id_of(request))
    response.headers.update(_rebuilt_headers(rebuilt))
    return SessionActionResponse(session_id=sid, request_id=request_id_of(request), rebuilt=rebuilt)


@router.post(
    "/v1/video/sessions/{sid}/propagate",
    responses={**ERRORS, 200: {"content": {"application/x-ndjson": {}}}},
    response_class=StreamingResponse,
    openapi_extra=json_request_body(PropagateRequest),
    summary="Track through the video: NDJSON, one line per frame as it is computed",
    description='Lines: {"type": "frame", "frame_index", "objects", "progress": {"done", "total"}} per frame, '
    'then {"type": "done"} (or "cancelled" when a newer prompt/propagation took over, or "error"). '
    '"both" covers every frame once: forward from start_frame_index, then backward.',
)
async def propagate(sid: str, request: Request, ctx: Ctx) -> StreamingResponse:
    body = await read_json_model(request, PropagateRequest, 64 * 1024)
    messages = ctx.video.propagate(sid, body, request_id_of(request))
    first = await anext(messages)  # errors before the first frame (unknown session, bad index) are plain 4xx

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield ndjson(first)
            async for message in messages:
                yield ndjson(message)
        finally:
            await messages.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers=_rebuilt_headers(bool(first.get("rebuilt"))))


@router.websocket("/v1/video/sessions/{sid}/ws")
async def session_socket(sid: str, ws: WebSocket) -> None:
    """Actions in: {"action": "start", "direction", "start_frame_index", "max_frames"} | {"action": "cancel"}.
    Messages out: the NDJSON messages of `propagate` (with `event`: propagation_frame | propagation_done |
    propagation_cancelled, as the SAM 3 demo names them) and {"type": "error", "error": {...}} for a bad
    action (the connection stays open)."""
    ctx = context_of(ws)
    await ws.accept()
    pump: asyncio.Task | None = None
    request_id = ws.headers.get("x-request-id", "ws")

    async def run(req: PropagateRequest) -> None:
        try:
            async for message in ctx.video.propagate(sid, req, request_id):
                await ws.send_json({**message, "event": f"propagation_{message['type']}"})
        except Sam3Error as exc:
            await ws.send_json(_ws_error(exc.code, exc.message, request_id))

    try:
        while True:
            try:  # loads_json bounds the nesting depth: `[[[[…` is an error message, not a RecursionError
                action = loads_json(await _receive_text(ws), "message")
            except InvalidInput as exc:
                await ws.send_json(_ws_error(exc.code, exc.message, request_id))
                continue
            if not isinstance(action, dict):
                await ws.send_json(_ws_error("invalid_action", "messages must be JSON objects", request_id))
                continue
            kind = action.get("action")
            if kind == "start":
                try:
                    req = PropagateRequest.model_validate({k: v for k, v in action.items() if k != "action"},
                                                         strict=True)
                except ValidationError as exc:
                    await ws.send_json(_ws_error("validation_error", format_validation_errors(exc.errors()),
                                                 request_id))
                    continue
                # a running propagation ends with "cancelled" on its own: the new one takes over the actor
                pump = asyncio.create_task(run(req))
            elif kind == "cancel":
                try:
                    await ctx.video.cancel(sid)  # the running stream ends with a "cancelled" message
                except Sam3Error as exc:
                    await ws.send_json(_ws_error(exc.code, exc.message, request_id))
            else:
                await ws.send_json(_ws_error("invalid_action", 'action must be "start" or "cancel"', request_id))
    except WebSocketDisconnect:
        pass
    finally:
        if pump is not None and not pump.done():
            pump.cancel()


async def _receive_text(ws: WebSocket) -> str | bytes:
    """The next message's payload (text, or binary frames as bytes for loads_json to decode)."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    if message.get("text") is not None:
        return message["text"]
    return message.get("bytes") or b""


def _ws_error(code: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "event": "error", "error": {"code": code, "message": message, "request_id": request_id}}
