"""GET /v1/quotas: the caller's own limits and current usage (config auth.quotas; serve_app.pipelines.quotas)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends

from serve_app.ingress.context import IngressContext, get_context
from serve_app.schemas import ErrorBody, QuotaLimits, QuotaUsage, QuotaView

router = APIRouter(tags=["quotas"])


@router.get(
    "/v1/quotas",
    response_model=QuotaView,
    responses={code: {"model": ErrorBody} for code in (503,)},
    summary="Your tenant's limits and what it uses of them now",
    description="Limits are null when unset (unlimited). Usage counts come from the quota keeper (shared by "
    "every ingress replica) and, for jobs, from storage.",
)
async def get_quotas(ctx: Annotated[IngressContext, Depends(get_context)]) -> QuotaView:
    limits = ctx.config.auth.quota_of(ctx.tenant)
    usage = QuotaUsage.model_validate(await ctx.quotas.usage(ctx.tenant) or {})
    if limits.max_concurrent_jobs is not None:
        active = await asyncio.to_thread(ctx.services.jobs.active_count, limits.max_concurrent_jobs + 1)
        usage = usage.model_copy(update={"active_jobs": active})
    return QuotaView(tenant=ctx.tenant, limits=QuotaLimits.model_validate(limits.model_dump()), usage=usage)
