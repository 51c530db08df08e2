"""POST /v1/video/sessions/{session_id}/exports: a session's masks as a dataset ZIP, made by a `video_export` job.

The request is checked now (session, frame scope, stored masks, merge groups: 404 / 400 / 409), then a job
is submitted exactly as POST /v1/jobs would (same Idempotency-Key rules); its `export_url` appears once it
succeeded. The work is in serve_app.pipelines.video_exports and serve_app.pipelines.video_jobs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from serve_app.ingress.body import read_json_model
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.openapi import json_request_body
from serve_app.ingress.routers.jobs import submit
from serve_app.schemas import ErrorBody, JobView, VideoExportRequest
from serve_app.storage import keys

router = APIRouter(tags=["video sessions"])
Ctx = Annotated[IngressContext, Depends(get_context)]
EXPORT_BODY_BYTES = 4 * 1024 * 1024  # above the largest body the schema allows (1024 object names, 64 x 256 ids)


@router.post(
    "/v1/video/sessions/{session_id}/exports",
    status_code=202,
    response_model=JobView,
    response_model_exclude_none=True,
    responses={code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 503)},
    summary="Export the session's masks (COCO, YOLO-seg, PNG masks, overlay mp4) as one ZIP: 202 + a job",
    description="Formats: coco_instance, yolo_segmentation, binary_masks_png, overlay_mp4 (+ include_images). "
    "Poll GET /v1/jobs/{job_id}: `progress` while it runs, `export_url` (a presigned GET of the ZIP) once it "
    "succeeded. 409 session_incomplete when frames of the scope have no masks, unless "
    "auto_propagate_if_incomplete.",
    openapi_extra=json_request_body(VideoExportRequest),
)
async def create_export(
    session_id: str, request: Request, ctx: Ctx,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    keys.validate_id(session_id, "session_id")
    body = await read_json_model(request, VideoExportRequest, EXPORT_BODY_BYTES)
    await ctx.services.exports.plan(session_id, body, allow_missing=body.auto_propagate_if_incomplete)
    job_input = {"session_id": session_id, **body.model_dump(mode="json")}
    return await submit(ctx, "video_export", job_input, idempotency_key)
