"""GET /v1/cluster: the deployment's state on Kubernetes (warming_up | ready | draining | off | failed).

Reads the RayService, its RayClusters and pods with the pod's service account (the Helm chart grants read
access to exactly those). Outside Kubernetes it answers {"state": "local", ...}; API errors give
{"state": "unknown", "reason": ...}. Always 200: this endpoint reports state, it is not a health check.
Answers are cached for CACHE_TTL_S so polling clients cannot flood the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter

from serve_app.cluster.status import ClusterStatus

router = APIRouter(tags=["cluster"])

CACHE_TTL_S = 2.0
_cache: tuple[float, ClusterStatus] | None = None


def _read_status() -> ClusterStatus:
    from serve_app.cluster.client import get_cluster_status

    # The HTTP endpoint never falls back to a developer's kubeconfig: outside a pod it is "local".
    return get_cluster_status(use_kubeconfig=False)


@router.get(
    "/v1/cluster",
    response_model=ClusterStatus,
    summary="Deployment state on Kubernetes: warming_up | ready | draining | off | failed (local outside k8s)",
)
async def cluster_status() -> ClusterStatus:
    global _cache
    cached = _cache
    if cached is not None and time.monotonic() - cached[0] <= CACHE_TTL_S:
        return cached[1]
    # The kubernetes client blocks: run it in a worker thread.
    status = await asyncio.to_thread(_read_status)
    _cache = (time.monotonic(), status)
    return status
