"""Deployment status on Kubernetes: RayService/RayCluster/pods -> warming_up | ready | draining | off | failed.

`status` is the pure mapping; `client` reads the objects with the `kubernetes` package (imported lazily,
only when a status is requested), so importing this package costs nothing when it is unused.
"""
