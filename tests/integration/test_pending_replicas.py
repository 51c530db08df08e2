"""Replicas Ray cannot place, on the session's real Ray (16 CPUs, no GPU): the bounded wait (serve_app.cluster.local,
what `sam3-serve run` and the benchmarks use) fails fast with what they need vs what the cluster has, and
GET /readyz says the same in its `reason`."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import serve_args
from tests.helpers import wait_for


def test_wait_running_fails_fast_naming_what_the_replica_needs(serve_url):
    import ray
    from ray import serve

    from serve_app.cluster.local import ReplicasPending, read_pending, wait_running

    cpus = int(ray.cluster_resources()["CPU"])

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Placed:
        def __call__(self) -> int:
            return 1

    @serve.deployment(ray_actor_options={"num_cpus": cpus + 8})
    class Hungry:
        def __init__(self, placed) -> None:
            self.placed = placed

    app = "pending-probe"
    serve._run(Hungry.bind(Placed.bind()), _blocking=False, name=app, route_prefix=None)
    try:
        with pytest.raises(ReplicasPending) as err:
            wait_running(app, pending_timeout_s=120, unplaceable_timeout_s=1, timeout_s=120, poll_s=0.2)
        assert str(err.value) == f"replicas pending: Hungry needs {cpus + 8} CPUs, cluster has {cpus}"
        (pending,) = err.value.pending
        assert (pending.deployment, pending.placeable, pending.needs) == ("Hungry", False, {"CPU": cpus + 8.0})
        # once its replica runs, the placed deployment is not listed, whatever the age threshold
        wait_for(lambda: serve.status().applications[app].deployments["Placed"].replica_states.get("RUNNING"),
                 timeout_s=60, what="the Placed replica to run")
        assert [p.deployment for p in read_pending(app, min_age_s=0)] == ["Hungry"]
    finally:
        serve.delete(app)


def test_readyz_names_the_model_replicas_ray_cannot_place(serve_url, tiny_model_dir, tmp_path):
    """A sam3 app whose ConceptSegmenter asks for a GPU the cluster does not have: the ingress comes up and
    /readyz answers 503 warming_up with `replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0`."""
    from ray import serve

    from serve_app.app import build_app

    app, prefix = "sam3-pending", "/pending"
    args = serve_args(tiny_model_dir, storage={"uri": f"file://{tmp_path}/store"},
                      concept={"replica": {"num_cpus": 0, "num_gpus": 1}},
                      video={"warm_pool": 0})  # no idle video actor: no video here
    serve._run(build_app(args), _blocking=False, name=app, route_prefix=prefix)
    try:
        last: list[str] = []

        def pending_readyz():
            try:
                r = requests.get(f"{serve_url}{prefix}/readyz", timeout=10)
            except requests.RequestException as exc:
                last[:] = [repr(exc)]
                return None
            last[:] = [f"{r.status_code} {r.text[:1000]}"]
            # (r,): a Response is falsy when its status is not 2xx
            return (r,) if r.status_code == 503 and "ConceptSegmenter" in r.json().get("reason", "") else None

        try:
            (r,) = wait_for(pending_readyz, timeout_s=180, what="/readyz to report the pending ConceptSegmenter",
                         interval_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {last}") from None
        body = r.json()
        assert body["state"] == "warming_up" and int(r.headers["Retry-After"]) >= 1
        assert body["reason"].startswith("replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0"), body
        assert body["deployments"]["ConceptSegmenter"]["running_replicas"] == 0
    finally:
        serve.delete(app)
