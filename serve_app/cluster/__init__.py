"""Where the deployment stands, for the people and tools asking.

- On Kubernetes: RayService/RayCluster/pods -> warming_up | ready | draining | off | failed. `status` is the
  pure mapping; `client` reads the objects with the `kubernetes` package (imported lazily, only when a status
  is requested).
- In any Ray: which Serve replicas Ray cannot place and what they need vs what the cluster has
  (`replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0`). `pending` is the pure computation;
  `local` reads the live Ray/Serve (imported lazily) and waits for an application with bounds. GET /readyz,
  `sam3-serve run` and the benchmarks (loadtest/bench_common.py) all report through it.

Importing this package costs nothing when it is unused.
"""
