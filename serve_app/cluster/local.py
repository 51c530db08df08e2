"""The live Ray + Serve this process is connected to, seen through `serve_app.cluster.pending`: which replicas
wait for resources, and a bounded wait for an application to run.

Used by GET /readyz (in the ingress replica), `sam3-serve run` and the benchmarks (loadtest/bench_common.py).
Ray is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from serve_app.cluster.pending import SETTLE_S, PendingDeployment, find_pending, pending_message


class NotRunning(RuntimeError):
    """An application did not reach RUNNING; `pending` lists the deployments waiting for resources."""

    def __init__(self, message: str, pending: list[PendingDeployment] | None = None):
        super().__init__(message)
        self.pending = pending or []


class ReplicasPending(NotRunning):
    """Replicas stayed unplaced (not enough CPUs/GPUs/...) longer than the wait allowed."""


class DeployFailed(NotRunning):
    """Serve gave up on the application (DEPLOY_FAILED: a constructor kept raising, a bad config...)."""


def read_pending(app_name: str | None = None, *, min_age_s: float = SETTLE_S) -> list[PendingDeployment]:
    """The deployments of `app_name` (default: every application) whose replicas Ray has not placed, with
    what one replica needs vs what the cluster has. Needs a connected Ray with Serve running."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()  # Serve's controller client: the same details the dashboard serves
    if client is None:
        return []
    details = client.get_serve_details()
    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    return find_pending(details, ray.cluster_resources(), ray.available_resources(), nodes, app_name=app_name,
                        min_age_s=min_age_s)


def app_status(app_name: str) -> tuple[str, str]:
    """(status, message) of one Serve application: RUNNING, DEPLOYING, DEPLOY_FAILED, ... or MISSING. The
    message adds each unhealthy or failed deployment's own message (where a constructor's traceback is)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "MISSING", ""
    parts = [app.message] if app.message else []
    for name, dep in app.deployments.items():
        if str(getattr(dep.status, "value", dep.status)) in ("UNHEALTHY", "DEPLOY_FAILED") and dep.message:
            parts.append(f"{name}: {dep.message}")
    return str(getattr(app.status, "value", app.status)), "\n".join(parts)


def wait_running(
    app_name: str,
    *,
    pending_timeout_s: float | None = 60.0,
    unplaceable_timeout_s: float | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    on_pending: Callable[[str], None] | None = None,
) -> None:
    """Return once `app_name` is RUNNING. Raise ReplicasPending when replicas short of resources (a CPU/GPU/...
    they need is not free, or not in the cluster) have waited for a placement for `pending_timeout_s` (None:
    wait for them forever), or already after `unplaceable_timeout_s` when one replica needs more than the
    cluster or any node has (a fixed local cluster never heals; an autoscaling one may add a node: None =
    treat them like the others); DeployFailed on DEPLOY_FAILED; NotRunning when `timeout_s` (None: no limit)
    passes first. Replicas whose resources are free but whose worker is not up yet (a loaded machine), and
    replicas placed and loading their model, are bounded by `timeout_s` only. `on_pending(message)` hears
    every new set of pending deployments (`replicas pending: ...`)."""
    t0 = time.monotonic()
    settle = SETTLE_S if pending_timeout_s is None else min(SETTLE_S, pending_timeout_s)
    seen: tuple[str, ...] = ()
    while True:
        status, message = app_status(app_name)
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise DeployFailed(f"application {app_name} failed to deploy: {message}")
        pending = read_pending(app_name, min_age_s=settle) if status != "MISSING" else []
        names = tuple(p.deployment for p in pending)
        if pending and names != seen and on_pending is not None:
            on_pending(pending_message(pending))
        seen = names
        short = [p for p in pending if p.short]
        if short and pending_timeout_s is not None and max(p.oldest_s for p in short) >= pending_timeout_s:
            raise ReplicasPending(pending_message(pending), pending)
        stuck = [p for p in pending if not p.placeable]
        if stuck and unplaceable_timeout_s is not None and max(p.oldest_s for p in stuck) >= unplaceable_timeout_s:
            raise ReplicasPending(pending_message(pending), pending)
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            detail = pending_message(pending) or message or "no replica is waiting for resources"
            raise NotRunning(f"application {app_name} is {status} after {timeout_s:g} s: {detail}", pending)
        time.sleep(poll_s)
