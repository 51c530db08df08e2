"""Deployment status on Kubernetes: RayService/RayCluster/pods -> warming_up | ready | draining | off | failed.

`status` is the pure mapping; `client` reads the objects with the `kubernetes` package (imported lazily,
only when a status is requested), so importing this package costs nothing when it is unused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve_app.cluster.status import ClusterStatus

__all__ = ["get_cluster_status"]


def get_cluster_status(*args: Any, **kwargs: Any) -> "ClusterStatus":
    """See serve_app.cluster.client.get_cluster_status."""
    from serve_app.cluster.client import get_cluster_status as _get

    return _get(*args, **kwargs)
