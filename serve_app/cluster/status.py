"""Map KubeRay objects to one deployment state: warming_up | ready | draining | off | failed.

Pure functions over plain dicts (what the Kubernetes API returns, `ApiClient.sanitize_for_serialization` of
the typed objects, or recorded JSON): no Kubernetes client, no Ray, no I/O. `serve_app.cluster.client` fetches
the objects; tests feed recorded ones.

Inputs (KubeRay v1.7 field names, see ray.io_rayservices.yaml / ray.io_rayclusters.yaml):
- RayService: `status.conditions` (types Ready, UpgradeInProgress, RollbackInProgress, Suspending, Suspended;
  Ready reasons Initializing, InitializingTimeout, ValidationFailed, ZeroServeEndpoints, NonZeroServeEndpoints),
  `status.activeServiceStatus` / `status.pendingServiceStatus` (rayClusterName, applicationStatuses
  {app: {status, message, serveDeploymentStatuses}}), `status.serviceStatus` (deprecated "Running"),
  `spec.suspend`.
- RayCluster (active, and pending during an upgrade or the first start): `spec.workerGroupSpecs`
  (a group is a GPU group when its pod template requests a `*/gpu` resource), `status.conditions`.
- Pods of those clusters (labels ray.io/cluster, ray.io/node-type, ray.io/group).
- Optionally Ray Serve's REST details (`GET <dashboard>/api/serve/applications/`), for replica counts.

States, first match wins:
- off: suspended; or ready with a GPU pool at zero pods and nothing pending (scale-to-zero idle: the next
  request cold-starts a GPU worker).
- failed: Ready condition failed for good (ValidationFailed, InitializingTimeout), an application
  DEPLOY_FAILED/UNHEALTHY on the serving cluster, or pods that cannot start (image pull, crash loop, pod
  creation failure) while nothing serves in their place.
- draining: an upgrade or rollback in progress (two clusters), suspending, or GPU workers terminating
  on the way to zero.
- warming_up: not Ready yet, applications DEPLOYING/NOT_STARTED, or GPU workers pending with none ready.
- ready: Ready condition true, applications RUNNING, at least one GPU worker ready (when there is a GPU pool).
`unknown` (API errors) and `local` (no Kubernetes) are produced by the client, not by this mapping.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Mapping, TypeGuard

from pydantic import BaseModel, Field

State = Literal["warming_up", "ready", "draining", "off", "failed", "unknown", "local"]

_FAILED_APP = {"DEPLOY_FAILED", "UNHEALTHY"}
_STARTING_APP = {"DEPLOYING", "NOT_STARTED"}
# Container waiting reasons that will not fix themselves without a change.
_STUCK_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


class WorkerCounts(BaseModel):
    """GPU worker pods of the serving RayCluster."""

    ready: int = Field(0, description="Running and Ready pods.")
    desired: int = Field(0, description="Pods the autoscaler asks for (sum of GPU groups' replicas, clamped).")
    pending: int = Field(0, description="Pods created but not Ready yet (scheduling, pulling, starting).")
    terminating: int = Field(0, description="Pods being deleted (scale-down, upgrade).")
    min: int = Field(0, description="Sum of GPU groups' minReplicas (0 = the pool may scale to zero).")
    max: int = Field(0, description="Sum of GPU groups' maxReplicas.")


class ReplicaCounts(BaseModel):
    """Serve replicas over all deployments of the applications (None when Serve details are unavailable)."""

    running: int | None = None
    target: int | None = None
    gpu_running: int | None = Field(None, description="Running replicas of deployments that use GPUs.")
    gpu_target: int | None = Field(None, description="Target replicas of deployments that use GPUs.")


class DeploymentState(BaseModel):
    status: str = ""
    message: str = ""
    replicas_running: int | None = None
    replicas_target: int | None = None
    num_gpus: float | None = None


class ApplicationState(BaseModel):
    status: str = ""
    message: str = ""
    deployments: dict[str, DeploymentState] = Field(default_factory=dict)


class ClusterStatus(BaseModel):
    """What GET /v1/cluster and `sam3-serve cluster-status` return."""

    state: State
    reason: str
    namespace: str | None = None
    rayservice: str | None = None
    ray_cluster: str | None = Field(None, description="RayCluster serving traffic (active).")
    pending_ray_cluster: str | None = Field(None, description="RayCluster being prepared (first start or upgrade).")
    gpu_workers: WorkerCounts = Field(default_factory=WorkerCounts)
    serve_replicas: ReplicaCounts = Field(default_factory=ReplicaCounts)
    applications: dict[str, ApplicationState] = Field(default_factory=dict)
    conditions: dict[str, str] = Field(
        default_factory=dict, description="RayService condition type -> 'True/False (Reason)'."
    )
    observed_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"


# --------------------------------------------------------------------------------------------- helpers


def _get(obj: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur or cur[key] is None:
            return default
        cur = cur[key]
    return cur


def _conditions(obj: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (_get(obj, "status", "conditions", default=[]) or [])}


def _is_true(cond: Mapping[str, Any] | None) -> TypeGuard[Mapping[str, Any]]:
    """A condition with status "True" (a TypeGuard: callers may then read its other fields)."""
    return cond is not None and str(cond.get("status")) == "True"


def _quantity(value: Any) -> float:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return 0.0


def _container_gpus(container: Mapping[str, Any]) -> float:
    res = container.get("resources") or {}
    total = 0.0
    for section in ("limits", "requests"):
        for key, val in (res.get(section) or {}).items():
            if key.endswith("/gpu"):
                total = max(total, _quantity(val))
    return total


def pod_spec_gpus(pod_spec: Mapping[str, Any] | None) -> float:
    """GPUs requested by a pod spec (any `<vendor>/gpu` resource), summed over its containers."""
    return sum(_container_gpus(c) for c in (_get(pod_spec, "containers", default=[]) or []))


def _gpu_groups(cluster: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    groups = _get(cluster, "spec", "workerGroupSpecs", default=[]) or []
    return [g for g in groups if pod_spec_gpus(_get(g, "template", "spec")) > 0]


def _desired(group: Mapping[str, Any]) -> tuple[int, int, int]:
    lo = int(group.get("minReplicas") or 0)
    hi = group.get("maxReplicas")
    hi = int(hi) if hi is not None else 2**31 - 1
    hosts = int(group.get("numOfHosts") or 1)
    replicas = int(group.get("replicas") or 0)
    replicas = min(max(replicas, lo), hi)
    return replicas * hosts, lo * hosts, hi * hosts


def _pod_problem(pod: Mapping[str, Any]) -> str | None:
    """A reason string when the pod cannot make progress on its own (image pull, crash loop...)."""
    name = _get(pod, "metadata", "name", default="?")
    if _get(pod, "status", "phase") == "Failed":
        return f"pod {name} failed: {_get(pod, 'status', 'reason', default='')} {_get(pod, 'status', 'message', default='')}".strip()
    statuses = list(_get(pod, "status", "initContainerStatuses", default=[]) or []) + list(
        _get(pod, "status", "containerStatuses", default=[]) or []
    )
    for cs in statuses:
        waiting = _get(cs, "state", "waiting")
        if waiting and waiting.get("reason") in _STUCK_REASONS:
            msg = (waiting.get("message") or "").strip()
            return f"pod {name} container {cs.get('name', '?')}: {waiting['reason']}" + (f": {msg}" if msg else "")
    return None


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if _get(pod, "status", "phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and str(c.get("status")) == "True"
        for c in (_get(pod, "status", "conditions", default=[]) or [])
    )


def _pending_reason(pod: Mapping[str, Any]) -> str:
    for c in _get(pod, "status", "conditions", default=[]) or []:
        if c.get("type") == "PodScheduled" and str(c.get("status")) == "False":
            msg = (c.get("message") or "").strip()
            return f"{c.get('reason') or 'Unscheduled'}" + (f": {msg}" if msg else "")
    for cs in _get(pod, "status", "containerStatuses", default=[]) or []:
        waiting = _get(cs, "state", "waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    return str(_get(pod, "status", "phase", default="Pending"))


def _is_gpu_worker(pod: Mapping[str, Any]) -> bool:
    node_type = _get(pod, "metadata", "labels", "ray.io/node-type")
    return node_type == "worker" and pod_spec_gpus(pod.get("spec")) > 0


def _apps(service_status: Mapping[str, Any] | None) -> dict[str, ApplicationState]:
    out: dict[str, ApplicationState] = {}
    for name, app in (_get(service_status, "applicationStatuses", default={}) or {}).items():
        deps = {
            dname: DeploymentState(status=str(d.get("status") or ""), message=str(d.get("message") or ""))
            for dname, d in (app.get("serveDeploymentStatuses") or {}).items()
        }
        out[name] = ApplicationState(
            status=str(app.get("status") or ""), message=str(app.get("message") or ""), deployments=deps
        )
    return out


def _merge_serve_details(
    apps: dict[str, ApplicationState], details: Mapping[str, Any] | None
) -> ReplicaCounts:
    """Fold Ray Serve's REST details (replica states, targets, num_gpus) into `apps`; return totals."""
    if not details:
        return ReplicaCounts()
    total_running = total_target = gpu_running = gpu_target = 0
    for app_name, app in (details.get("applications") or {}).items():
        state = apps.setdefault(app_name, ApplicationState(status=str(app.get("status") or "")))
        for dname, dep in (app.get("deployments") or {}).items():
            running = sum(1 for r in (dep.get("replicas") or []) if r.get("state") == "RUNNING")
            target = dep.get("target_num_replicas")
            gpus = _get(dep, "deployment_config", "ray_actor_options", "num_gpus", default=0) or 0
            ds = state.deployments.setdefault(dname, DeploymentState(status=str(dep.get("status") or "")))
            ds.replicas_running = running
            ds.replicas_target = int(target) if target is not None else None
            ds.num_gpus = float(gpus)
            total_running += running
            total_target += int(target or 0)
            if float(gpus) > 0:
                gpu_running += running
                gpu_target += int(target or 0)
    return ReplicaCounts(running=total_running, target=total_target, gpu_running=gpu_running, gpu_target=gpu_target)


def _one_line(message: str, limit: int = 400) -> str:
    """Serve messages can be whole tracebacks: one line, head and tail kept (the error is at the end)."""
    text = " | ".join(line.strip() for line in (message or "").splitlines() if line.strip())
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... {text[-half:]}"


def _app_summary(apps: Mapping[str, ApplicationState], statuses: Iterable[str]) -> str:
    wanted = set(statuses)
    parts = []
    for name, app in sorted(apps.items()):
        if app.status in wanted:
            bad = [f"{d}={s.status}" for d, s in sorted(app.deployments.items()) if s.status not in ("", "HEALTHY")]
            detail = _one_line(app.message) or ", ".join(bad)
            parts.append(f"application {name} {app.status}" + (f": {detail}" if detail else ""))
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------- mapping


def compute_status(
    rayservice: Mapping[str, Any],
    active_cluster: Mapping[str, Any] | None = None,
    pending_cluster: Mapping[str, Any] | None = None,
    pods: Iterable[Mapping[str, Any]] = (),
    serve_details: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
) -> ClusterStatus:
    """Map one RayService (+ its RayClusters, their pods, optional Serve details) to a ClusterStatus."""
    status = rayservice.get("status") or {}
    conds = _conditions(rayservice)
    ready_cond = conds.get("Ready")
    if ready_cond is not None:
        service_ready = _is_true(ready_cond)
    else:  # KubeRay < 1.3 or status not written yet: the deprecated serviceStatus
        service_ready = status.get("serviceStatus") == "Running"

    active_name = _get(status, "activeServiceStatus", "rayClusterName") or None
    pending_name = _get(status, "pendingServiceStatus", "rayClusterName") or None
    active_apps = _apps(status.get("activeServiceStatus"))
    pending_apps = _apps(status.get("pendingServiceStatus"))
    # Before the first cluster is promoted, the pending cluster is the one coming up.
    serving_name = active_name or pending_name
    serving_cluster = active_cluster if active_name else pending_cluster
    apps = dict(active_apps if active_name else pending_apps)
    replicas = _merge_serve_details(apps, serve_details)

    pods = [p for p in pods if isinstance(p, Mapping)]
    serving_pods = [p for p in pods if _get(p, "metadata", "labels", "ray.io/cluster") == serving_name]

    # GPU worker counts on the serving cluster.
    gpu_groups = _gpu_groups(serving_cluster)
    gpu = WorkerCounts()
    for g in gpu_groups:
        desired, lo, hi = _desired(g)
        gpu.desired += desired
        gpu.min += lo
        gpu.max += hi
    pending_reasons: list[str] = []
    gpu_problems: list[str] = []
    for p in serving_pods:
        if not _is_gpu_worker(p):
            continue
        if _get(p, "metadata", "deletionTimestamp"):
            gpu.terminating += 1
        elif _pod_ready(p):
            gpu.ready += 1
        else:
            gpu.pending += 1
            problem = _pod_problem(p)
            if problem:
                gpu_problems.append(problem)
            else:
                pending_reasons.append(f"{_get(p, 'metadata', 'name', default='?')}: {_pending_reason(p)}")
    has_gpu_pool = bool(gpu_groups) or any(_is_gpu_worker(p) for p in serving_pods)

    other_problems = [
        prob
        for p in serving_pods
        if not _is_gpu_worker(p) and not _get(p, "metadata", "deletionTimestamp")
        for prob in [_pod_problem(p)]
        if prob
    ]
    replica_failure = _conditions(serving_cluster).get("ReplicaFailure")

    result = ClusterStatus(
        state="warming_up",
        reason="",
        namespace=namespace or _get(rayservice, "metadata", "namespace"),
        rayservice=_get(rayservice, "metadata", "name"),
        ray_cluster=active_name,
        pending_ray_cluster=pending_name if active_name else None,
        gpu_workers=gpu,
        serve_replicas=replicas,
        applications=apps,
        conditions={
            t: f"{c.get('status')}" + (f" ({c.get('reason')})" if c.get("reason") else "") for t, c in conds.items()
        },
    )
    if not active_name and pending_name:
        result.pending_ray_cluster = pending_name

    def done(state: State, reason: str) -> ClusterStatus:
        result.state = state
        result.reason = reason
        return result

    # 1. Suspension (spec.suspend): off once everything is deleted, draining while it is being deleted.
    if _is_true(conds.get("Suspended")):
        return done("off", "RayService is suspended (spec.suspend=true): no Ray cluster, no GPU workers")
    if _is_true(conds.get("Suspending")) or (rayservice.get("spec") or {}).get("suspend"):
        return done("draining", "RayService is suspending (spec.suspend=true): deleting its Ray cluster")

    # 2. Failures that will not heal by waiting.
    ready_reason = (ready_cond or {}).get("reason", "")
    ready_msg = ((ready_cond or {}).get("message") or "").strip()
    if ready_reason in ("ValidationFailed", "InitializingTimeout"):
        return done("failed", f"{ready_reason}: {ready_msg}" if ready_msg else ready_reason)
    failed_apps = _app_summary(apps, _FAILED_APP)
    if failed_apps:
        return done("failed", failed_apps)
    if gpu_problems and gpu.ready == 0:
        return done("failed", "GPU workers cannot start: " + "; ".join(gpu_problems))
    if not service_ready and other_problems:
        return done("failed", "Ray pods cannot start: " + "; ".join(other_problems))
    if not service_ready and _is_true(replica_failure):
        msg = (replica_failure.get("message") or replica_failure.get("reason") or "").strip()
        return done("failed", f"RayCluster {serving_name} cannot create pods: {msg}")

    # 3. Upgrade / rollback: two clusters, traffic still on the old one.
    upgrading = _is_true(conds.get("UpgradeInProgress")) or bool(active_name and pending_name)
    if _is_true(conds.get("RollbackInProgress")):
        return done("draining", f"rolling back an upgrade; traffic stays on {active_name or 'the old cluster'}")
    if upgrading:
        detail = _app_summary(pending_apps, _FAILED_APP)
        if detail:
            why = f"upgrade to {pending_name} failing ({detail}); traffic stays on {active_name}"
        else:
            starting = _app_summary(pending_apps, _STARTING_APP) or "cluster starting"
            why = f"upgrade in progress: traffic on {active_name}, new cluster {pending_name} ({starting})"
        return done("draining", why)

    # 4. Not serving yet.
    gpu_note = ""
    if pending_reasons:
        gpu_note = f"; {gpu.pending} GPU worker(s) pending ({'; '.join(pending_reasons[:3])})"
    if not service_ready:
        if ready_msg or ready_reason:
            why = f"RayService not ready: {ready_reason}" + (f" ({ready_msg})" if ready_msg else "")
        else:
            why = "RayService not ready yet"
        starting = _app_summary(apps, _STARTING_APP)
        return done("warming_up", why + (f"; {starting}" if starting else "") + gpu_note)
    if not apps:
        return done("warming_up", "RayService ready but no Serve application reported yet" + gpu_note)
    starting = _app_summary(apps, _STARTING_APP)
    if starting:
        return done("warming_up", starting + gpu_note)
    deleting = _app_summary(apps, {"DELETING"})
    if deleting:
        return done("draining", deleting)

    # 5. Serving: what does the GPU pool look like?
    replicas_note = ""
    if replicas.running is not None:
        replicas_note = f", {replicas.running}/{replicas.target} Serve replicas running"
    if has_gpu_pool:
        if gpu.ready == 0:
            if gpu.pending or gpu.desired > gpu.terminating or (replicas.gpu_target or 0) > 0:
                return done(
                    "warming_up",
                    f"scaling up from zero GPU workers ({gpu.pending} pending, {gpu.desired} desired)"
                    + (f": {'; '.join(pending_reasons[:3])}" if pending_reasons else ""),
                )
            if gpu.terminating:
                return done("draining", f"idle: {gpu.terminating} GPU worker(s) terminating, scaling to zero")
            return done(
                "off",
                "idle: GPU pool scaled to zero; the next model request starts a GPU worker (cold start)",
            )
        if replicas.gpu_target == 0 and replicas.gpu_running == 0:
            return done(
                "draining",
                f"idle: GPU replicas scaled to zero; {gpu.ready} GPU worker(s) left until the idle timeout",
            )
        return done("ready", f"{gpu.ready}/{gpu.desired} GPU workers ready{replicas_note}" + gpu_note)
    return done("ready", f"serving (no GPU worker group){replicas_note}")
