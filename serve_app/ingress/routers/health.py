"""GET /healthz (process alive) and GET /readyz (model deployments able to serve; when not, `reason` says
why: a model that cannot be loaded, as its one line with the cause and the fix (`sam3-serve: cannot load the
model 'facebook/sam3' [model_gated]: ... Fix: ...`, found in the deployment's status message by
serve_app.errors.startup_lines), or the replicas Ray cannot place and what they need (`replicas pending:
ConceptSegmenter needs 1 GPU, cluster has 0`, from serve_app.cluster.pending)). `storage` says whether a test
write to the storage works, else its one line (serve_app.storage.check): information only, like `jobs`."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.errors import RETRYABLE_STARTUP_CODES, StartupFailure, startup_code, startup_lines
from serve_app.ingress.error_handling import configured_retry_after_s

router = APIRouter(tags=["health"])

MODEL_DEPLOYMENTS = ("ConceptSegmenter", "ClickSegmenter")
STORAGE_CHECK_S = 3.0  # /readyz waits this long for the storage test write (it goes on in the background)
_STORAGE_TTL_S = {"ok": 30.0, "failed": 5.0}  # how long a storage verdict is reused

log = logging.getLogger(__name__)


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
        lines = [line for d in details.values() for line in d.get("startup_failures", [])]
        body["reason"] = "; ".join(dict.fromkeys(lines)) or await asyncio.to_thread(_pending_reason)
    body["jobs"] = await _jobs_state(request)
    body["storage"] = await _storage_state(request)
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

    app_name = serve.get_replica_context().app_name
    return model_state(serve.status().applications.get(app_name))


def model_state(app: Any) -> tuple[str, dict]:
    """(state, details per model deployment) of one application's status (Serve's ApplicationStatusOverview; None:
    not deployed yet). A deployment whose message carries a startup failure line (a model that cannot be loaded)
    lists it under `startup_failures`, and its `message` is that line instead of the traceback around it; it is
    `failed` as soon as the line names a cause that retrying cannot fix (Serve marks it DEPLOY_FAILED after its
    retries anyway)."""
    from ray.serve.schema import ReplicaState

    if app is None:
        return "warming_up", {}
    details: dict[str, dict] = {}
    states = []
    for name in MODEL_DEPLOYMENTS:
        dep = app.deployments.get(name)
        if dep is None:
            details[name] = {"status": "MISSING", "running_replicas": 0}
            states.append("warming_up")
            continue
        running = int(dep.replica_states.get(ReplicaState.RUNNING, 0))
        lines = startup_lines(dep.message or "")
        details[name] = {"status": str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                         "running_replicas": running, "message": "; ".join(lines) or dep.message or ""}
        if lines:
            details[name]["startup_failures"] = lines
        permanent = any(startup_code(line) not in RETRYABLE_STARTUP_CODES for line in lines)
        if details[name]["status"] in ("UNHEALTHY", "DEPLOY_FAILED") or (permanent and running == 0):
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


# Per store (weakly): the cached answer (valid until), the test write in flight (with its event loop), the
# last line logged.
_storage_verdicts: weakref.WeakKeyDictionary[Any, tuple[float, dict]] = weakref.WeakKeyDictionary()
_storage_checks: weakref.WeakKeyDictionary[Any, tuple[Any, asyncio.Future]] = weakref.WeakKeyDictionary()
_storage_logged: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


async def _storage_state(request: Request) -> dict:
    """`{"state": "ok"}`, `{"state": "failed", "code", "reason": <one line: cause and fix>}` or `{"state":
    "unknown", "reason"}` (no answer within STORAGE_CHECK_S yet). A test write, cached (ok 30 s, failed 5 s);
    a new failure is logged once as its line. Information only: it never fails readiness."""
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        return {"state": "unknown", "reason": "the ingress is starting"}
    store, cfg = ctx.services.store, ctx.services.config.storage
    key = store
    cached = _storage_verdicts.get(key)
    if cached is not None and time.monotonic() < cached[0]:
        return cached[1]
    loop = asyncio.get_running_loop()
    loop_and_check = _storage_checks.get(key)
    if loop_and_check is None or loop_and_check[0] is not loop or loop_and_check[1].done():
        loop_and_check = _storage_checks[key] = (loop, asyncio.ensure_future(asyncio.to_thread(_check_storage, store,
                                                                                                cfg)))
    check = loop_and_check[1]
    try:
        answer = await asyncio.wait_for(asyncio.shield(check), STORAGE_CHECK_S)
    except asyncio.TimeoutError:
        return {"state": "unknown", "reason": f"object storage did not answer a test write within "
                                              f"{STORAGE_CHECK_S:g} s ({cfg.uri})"}
    _storage_verdicts[key] = (time.monotonic() + _STORAGE_TTL_S[answer["state"]], answer)
    if answer.get("reason", "") != _storage_logged.get(key, ""):
        if answer["state"] == "failed":
            log.warning("%s", answer["reason"])
        elif key in _storage_logged:
            log.info("storage %s works again", cfg.uri)
        _storage_logged[key] = answer.get("reason", "")
    return answer


def _check_storage(store: Any, cfg: Any) -> dict:
    from serve_app.storage.check import check_store

    try:
        check_store(store, cfg)
    except StartupFailure as err:
        return {"state": "failed", "code": err.code, "reason": err.line}
    return {"state": "ok"}
