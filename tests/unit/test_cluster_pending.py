"""serve_app.cluster.pending: Serve details + cluster resources -> which deployments wait for resources and the
one message /readyz, `sam3-serve run` and the benchmarks print; and `sam3-serve run`'s exit on it (no Ray)."""

from __future__ import annotations

from enum import Enum

import pytest

from serve_app.cluster.pending import amount, find_pending, pending_message

NOW = 1000.0


class ReplicaState(str, Enum):  # what the Serve controller's own details hold (the REST JSON has plain strings)
    STARTING = "STARTING"
    RUNNING = "RUNNING"


def replica(state: str | Enum = "STARTING", age_s: float = 30.0, pid: int | None = None) -> dict:
    return {"replica_id": "r", "state": state, "pid": pid, "start_time_s": NOW - age_s}


def details(**deployments: tuple[dict, list[dict]]) -> dict:
    """{"applications": {"sam3": ...}} with deployments name=(required_resources, replicas)."""
    return {"applications": {"sam3": {"status": "DEPLOYING", "deployments": {
        name: {"status": "UPDATING", "required_resources": res, "replicas": reps}
        for name, (res, reps) in deployments.items()}}}}


def message(d: dict, total: dict, available: dict | None = None, nodes: list[dict] | None = None, **kw) -> str:
    return pending_message(find_pending(d, total, available, nodes, now=NOW, **kw))


def test_a_gpu_replica_on_a_cluster_without_gpus():
    d = details(ConceptSegmenter=({"CPU": 1, "GPU": 1}, [replica()]),
                Sam3Ingress=({"CPU": 1}, [replica(ReplicaState.RUNNING, pid=12)]))
    got = find_pending(d, {"CPU": 2.0}, {"CPU": 1.0}, [{"CPU": 2.0}], now=NOW)
    assert [(p.deployment, p.replicas, p.placeable, p.short, p.needs) for p in got] == [
        ("ConceptSegmenter", 1, False, True, {"CPU": 1.0, "GPU": 1.0})]
    assert pending_message(got) == "replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0"


def test_more_cpus_than_the_cluster_several_replicas_and_enum_states():
    d = details(Big=({"CPU": 4}, [replica(ReplicaState.STARTING), replica(ReplicaState.STARTING, 5)]))
    assert message(d, {"CPU": 2.0}) == "replicas pending: Big (2 replicas) needs 4 CPUs, cluster has 2"


def test_no_node_large_enough_although_the_cluster_is():
    d = details(Big=({"CPU": 4}, [replica()]))
    assert message(d, {"CPU": 6.0}, {"CPU": 6.0}, [{"CPU": 2.0}, {"CPU": 3.0}, {"CPU": 1.0}]) == (
        "replicas pending: Big needs 4 CPUs, no node has that many (largest: 3, cluster: 6)")


def test_not_enough_free_resources_and_several_shortfalls():
    d = details(ClickSegmenter=({"CPU": 1, "GPU": 0.5, "memory": 2 * 2**30}, [replica()]))
    got = find_pending(d, {"CPU": 2.0, "GPU": 1.0, "memory": 8 * 2**30},
                       {"CPU": 0.5, "GPU": 1.0, "memory": 2**30}, now=NOW)
    assert got[0].placeable and got[0].short  # it would fit an empty cluster: something else holds the resources
    assert pending_message(got) == ("replicas pending: ClickSegmenter needs 1 CPU, cluster has 0.5 free of 2, and "
                                    "2 GiB memory, cluster has 1 GiB free of 8 GiB")


def test_a_fitting_replica_waits_for_its_worker_only_after_min_age():
    d = details(JobWorker=({"CPU": 0.5}, [replica(age_s=3)]), Huge=({"GPU": 2}, [replica(age_s=1)]))
    # young and fitting: hidden (its lease may already hold the free CPUs); never-fitting: reported at once
    assert message(d, {"CPU": 2.0}, {"CPU": 0.0}, min_age_s=10) == "replicas pending: Huge needs 2 GPUs, cluster has 0"
    got = find_pending(d, {"CPU": 2.0}, {"CPU": 2.0}, now=NOW, min_age_s=0)
    assert [(p.deployment, p.placeable, p.short) for p in got] == [("Huge", False, True), ("JobWorker", True, False)]
    assert pending_message(got) == (
        "replicas pending: Huge needs 2 GPUs, cluster has 0; JobWorker not placed yet after 3 s "
        "(needs 0.5 CPUs; cluster has 2 of 2 CPU free)")


def test_placed_replicas_loading_their_model_and_running_ones_are_not_pending():
    d = details(ConceptSegmenter=({"GPU": 1}, [replica("STARTING", age_s=600, pid=77)]),
                Sam3Ingress=({"CPU": 1}, [replica("RUNNING", pid=12)]), Stopping=({"CPU": 1}, [replica("STOPPING")]),
                Empty=({"CPU": 1}, []))
    assert find_pending(d, {"CPU": 1.0}, {"CPU": 0.0}, now=NOW) == []
    assert pending_message([]) == ""


def test_app_filter_and_names_across_applications():
    d = details(A=({"GPU": 1}, [replica()]))
    d["applications"]["other"] = {"deployments": {"B": {"required_resources": {"CPU": 64}, "replicas": [replica()]}}}
    assert message(d, {"CPU": 16.0}, app_name="other") == "replicas pending: B needs 64 CPUs, cluster has 16"
    assert message(d, {"CPU": 16.0}) == ("replicas pending: other/B needs 64 CPUs, cluster has 16; "
                                         "sam3/A needs 1 GPU, cluster has 0")


def test_resource_units():
    assert [amount("CPU", 1), amount("CPU", 0.25), amount("GPU", 2), amount("memory", 3 * 2**30),
            amount("accelerator_type:A10G", 0.001)] == [
        "1 CPU", "0.25 CPUs", "2 GPUs", "3 GiB memory", "0.001 accelerator_type:A10G"]


def _pending(short: bool, placeable: bool, oldest_s: float = 100.0):
    from serve_app.cluster.pending import PendingDeployment

    return PendingDeployment(app="sam3", deployment="X", replicas=1, oldest_s=oldest_s, needs={"CPU": 1.0},
                             placeable=placeable, short=short, message="X needs 1 CPU, cluster has 0 free of 2")


@pytest.mark.parametrize("status, pending, kw, raised", [
    ("RUNNING", [], {}, None),
    ("DEPLOY_FAILED", [], {}, "DeployFailed"),
    # short of resources for longer than pending_timeout_s
    ("DEPLOYING", [_pending(short=True, placeable=True)], {"pending_timeout_s": 60}, "ReplicasPending"),
    ("DEPLOYING", [_pending(short=True, placeable=True, oldest_s=5)], {"pending_timeout_s": 60, "timeout_s": 0},
     "NotRunning"),
    # more than the cluster has: unplaceable_timeout_s decides, sooner
    ("DEPLOYING", [_pending(short=True, placeable=False, oldest_s=5)],
     {"pending_timeout_s": 60, "unplaceable_timeout_s": 2}, "ReplicasPending"),
    # resources free, the worker is just slow to start: only timeout_s ends the wait
    ("DEPLOYING", [_pending(short=False, placeable=True, oldest_s=500)], {"pending_timeout_s": 60, "timeout_s": 0},
     "NotRunning"),
])
def test_wait_running_decisions(monkeypatch, status, pending, kw, raised):
    from serve_app.cluster import local

    monkeypatch.setattr(local, "app_status", lambda app: (status, "boom" if status == "DEPLOY_FAILED" else ""))
    monkeypatch.setattr(local, "read_pending", lambda app, min_age_s: pending)
    heard: list[str] = []
    if raised is None:
        local.wait_running("sam3", on_pending=heard.append, **kw)
        return
    with pytest.raises(local.NotRunning) as err:
        local.wait_running("sam3", poll_s=0, on_pending=heard.append, **kw)
    assert type(err.value).__name__ == raised
    if pending:
        assert heard == ["replicas pending: X needs 1 CPU, cluster has 0 free of 2"]
        assert "replicas pending: X needs 1 CPU" in str(err.value) and err.value.pending == pending


def test_sam3_serve_run_exits_2_with_the_message_when_replicas_stay_pending(monkeypatch, capsys):
    """The CLI's wiring, without Ray: the bounded wait raising ReplicasPending ends `sam3-serve run` with exit
    status 2 and the message, and Serve/Ray are shut down (a real run: tests/integration/test_serve_run.py)."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_private

    from serve_app import cli
    from serve_app.cluster import local
    from tests.conftest import REPO

    calls: list[str] = []

    class FakeClient:
        def deploy_apps(self, config, _blocking=False):
            calls.append("deploy " + ",".join(a.name for a in config.applications))

    def wait_running(app_name, *, pending_timeout_s, on_pending, **kw):
        calls.append(f"wait {app_name} {pending_timeout_s}")
        on_pending("replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0")
        raise local.ReplicasPending("replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("serve.shutdown"))
    monkeypatch.setattr(serve_private, "serve_start", lambda **kw: FakeClient())
    monkeypatch.setattr(local, "wait_running", wait_running)
    code = cli.main(["run", "--config", str(REPO / "serve_config.yaml"), "--model-id", "/nowhere",
                     "--port", "8123", "--pending-timeout", "7"])
    err = capsys.readouterr().err
    assert code == 2
    assert calls == ["deploy sam3", "wait sam3 7.0", "serve.shutdown", "ray.shutdown"]
    assert "sam3-serve run: replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0" in err


@pytest.mark.parametrize("flag, expect", [("0", None), ("30", 30.0)])
def test_sam3_serve_run_pending_timeout_flag(monkeypatch, flag, expect):
    from serve_app import cli
    from tests.conftest import REPO

    seen = {}
    monkeypatch.setattr(cli, "_serve_run", lambda config, timeout: seen.update(t=timeout, port=config[
        "http_options"]["port"]) or 0)
    assert cli.main(["run", "--config", str(REPO / "serve_config.yaml"), "--port", "8124",
                     "--pending-timeout", flag]) == 0
    assert seen == {"t": expect, "port": 8124}
