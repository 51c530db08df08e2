"""GET /healthz (process alive) and GET /readyz (model deployments able to serve; when not, `reason` names
the replicas Ray cannot place and what they need: `replicas pending: ConceptSegmenter needs 1 GPU, cluster
has 0`, from serve_app.cluster.pending)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.ingress.error_handling import configured_retry_after_s

router = APIRouter(tags=["health"])

MODEL_DEPLOYMENTS = ("ConceptSegmenter", "ClickSegmenter")


@router.get("/healthz", summary="Liveness: the ingress process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 when every model deployment has a running replica, else 503")
async def readyz(request: Request) -> JSONResponse:
    state, details = await asyncio.to_thread(_model_state)
    status = 200 if state == "ready" else 503
    headers = {} if status == 200 else {"Retry-After": str(configured_retry_after_s(request))}
    body: dict = {"state": state, "deployments": details}
    if state != "ready":
        body["reason"] = await asyncio.to_thread(_pending_reason)
    body["jobs"] = await _jobs_state(request)
    return JSONResponse(body, status_code=status, headers=headers)


def _pending_reason() -> str:
    """`replicas pending: X needs 1 GPU, cluster has 0` for this application's unplaced replicas, else ""."""
    from ray import serve

    from serve_app.cluster.local import read_pending
    from serve_app.cluster.pending import pending_message

    try:
        return pending_message(read_pending(serve.get_replica_context().app_name))
    except Exception as exc:  # the reason is a hint: never let it turn a 503 into a 500
        return f"pending replicas unknown: {type(exc).__name__}: {exc}"


def _model_state() -> tuple[str, dict]:
    """ready | warming_up | scaled_to_zero | failed, from Serve's own deployment status."""
    from ray import serve
    from ray.serve.schema import ReplicaState

    app_name = serve.get_replica_context().app_name
    app = serve.status().applications.get(app_name)
    if app is None:
        return "warming_up", {}
    details, states = {}, []
    for name in MODEL_DEPLOYMENTS:
        dep = app.deployments.get(name)
        if dep is None:
            details[name] = {"status": "MISSING", "running_replicas": 0}
            states.append("warming_up")
            continue
        running = int(dep.replica_states.get(ReplicaState.RUNNING, 0))
        details[name] = {"status": str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                         "running_replicas": running, "message": dep.message or ""}
        if details[name]["status"] in ("UNHEALTHY", "DEPLOY_FAILED"):
            states.append("failed")
        elif running > 0:
            states.append("ready")
        elif details[name]["status"] == "HEALTHY":
            states.append("scaled_to_zero")
        else:
            states.append("warming_up")
    for s in ("failed", "warming_up", "scaled_to_zero"):
        if s in states:
            return s, details
    return "ready", details


async def _jobs_state(request: Request) -> dict:
    """Whether POST /v1/jobs is served: `accepting`, `refused` (storage does not enforce conditional writes:
    `reason` says what it ignored; see serve_app.storage.base) or `unknown` (storage not reachable yet).
    Information only: the synchronous routes do not need conditional writes, so it never fails readiness."""
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        return {"state": "unknown", "reason": "the ingress is starting"}
    try:  # the first call probes storage (a few requests); later ones read the cached verdict
        writes = await asyncio.wait_for(asyncio.to_thread(ctx.services.store.conditional_writes), 2.0)
    except asyncio.TimeoutError:
        return {"state": "unknown", "reason": "object storage did not answer the conditional-write probe yet"}
    if writes.state == "not_enforced":
        return {"state": "refused", "reason": f"object storage does not enforce conditional writes: {writes.reason}"}
    return {"state": "accepting"} if writes.state == "enforced" else {"state": "unknown", "reason": writes.reason}
