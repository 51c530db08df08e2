"""GET /healthz (process alive) and GET /readyz (model deployments able to serve)."""

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
    return JSONResponse({"state": state, "deployments": details}, status_code=status, headers=headers)


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
