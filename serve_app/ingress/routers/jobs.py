"""POST/GET/DELETE /v1/jobs: asynchronous work (202 + polling) that is never lost.

Submitting stores the job (serve_app.jobs.service) and then asks a JobWorker replica to run it; if that
ask fails, the workers' recovery loop picks the queued job up anyway (jobs.queued_pickup_timeout_s).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse

from serve_app.ingress.body import image_body_limit, read_json_model
from serve_app.ingress.context import IngressContext, get_context
from serve_app.ingress.openapi import json_request_body
from serve_app.jobs.records import JobRecord
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.results import ResultPublisher, expiry_iso
from serve_app.schemas import ErrorBody, JobList, JobRequest, JobView
from serve_app.storage import keys

log = logging.getLogger("serve_app.ingress")

router = APIRouter(tags=["jobs"])
Ctx = Annotated[IngressContext, Depends(get_context)]
_DISPATCH_TIMEOUT_S = 5.0


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def job_view(record: JobRecord, results: ResultPublisher | None = None) -> JobView:
    """A JobRecord as clients see it; with `results`, a succeeded job's outputs as presigned URLs."""
    view: dict[str, object] = {
        "job_id": record.job_id, "kind": record.kind, "status": record.status,
        "created_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
        "started_at": _iso(record.started_at), "finished_at": _iso(record.finished_at),
        "attempts": record.attempts, "max_attempts": record.max_attempts,
        "error": record.error.model_dump() if record.error else None,
        "progress": record.progress.model_dump() if record.progress else None,
    }
    if results is not None and record.status == "succeeded" and record.result_key:
        view["result_url"] = results.presign(record.result_key)
        if record.overlay_key:
            view["overlay_url"] = results.presign(record.overlay_key)
        if record.artifact_key:
            view["export_url"] = results.presign(record.artifact_key)
        view["urls_expire_at"] = expiry_iso(results.expiry_s)
    return JobView.model_validate(view)


async def _dispatch(ctx: IngressContext, job_id: str) -> None:
    """Best effort: a job that is not dispatched now is run by recovery later."""
    try:
        await ModelClient(ctx.job_worker, _DISPATCH_TIMEOUT_S).call("start_job", job_id, ctx.tenant)
    except Exception as exc:  # the job is stored: a failed hand-off must not fail the submit
        log.warning("job %s not dispatched (%r); recovery will run it", job_id, exc)


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    response_model_exclude_none=True,
    responses={code: {"model": ErrorBody} for code in (400, 409, 413, 415, 422, 429, 503)},
    summary="Submit a job (202 + Location); poll GET /v1/jobs/{job_id}",
    openapi_extra=json_request_body(JobRequest),
    description="An `Idempotency-Key` header makes retries safe: the same key with the same body returns "
    "the same job; with another body it is a 409.",
)
async def submit_job(
    request: Request, ctx: Ctx,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    body = await read_json_model(request, JobRequest, image_body_limit(ctx.config.limits))
    return await submit(ctx, body.kind, body.input, idempotency_key)


async def submit(ctx: IngressContext, kind: str, input: dict, idempotency_key: str | None) -> JSONResponse:
    """Store a job, hand it to a worker, answer 202 with its view and Location (every route that makes a job)."""
    max_active = ctx.quotas.limits(ctx.tenant)
    record = await asyncio.to_thread(ctx.services.jobs.submit, kind, input, idempotency_key, None,
                                     max_active.max_concurrent_jobs if max_active is not None else None)
    if record.status == "queued":
        await _dispatch(ctx, record.job_id)
    return JSONResponse(job_view(record).model_dump(mode="json", exclude_none=True), status_code=202,
                        headers={"Location": f"/v1/jobs/{record.job_id}"})


@router.get(
    "/v1/jobs",
    response_model=JobList,
    response_model_exclude_none=True,
    responses={code: {"model": ErrorBody} for code in (400, 422, 503)},
    summary="Recent jobs, newest first",
)
async def list_jobs(
    ctx: Ctx,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobList:
    if cursor is not None:
        keys.validate_id(cursor, "cursor")
    records, next_cursor = await asyncio.to_thread(ctx.services.jobs.list, status, limit, cursor)
    return JobList(jobs=[job_view(r) for r in records], next_cursor=next_cursor)


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    response_model_exclude_none=True,
    responses={code: {"model": ErrorBody} for code in (400, 404, 422, 503)},
    summary="A job's status; result and overlay as presigned URLs once it succeeded",
)
async def get_job(job_id: str, ctx: Ctx) -> JobView:
    record = await asyncio.to_thread(ctx.services.jobs.get, keys.validate_id(job_id, "job_id"))
    return await asyncio.to_thread(job_view, record, ctx.services.results)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    response_model_exclude_none=True,
    responses={code: {"model": ErrorBody} for code in (400, 404, 409, 422, 503)},
    summary="Cancel a queued job (409 once it runs or finished)",
)
async def cancel_job(job_id: str, ctx: Ctx) -> JobView:
    record = await asyncio.to_thread(ctx.services.jobs.cancel, keys.validate_id(job_id, "job_id"))
    return job_view(record)
