"""serve_app.cluster: the state mapping on recorded KubeRay objects, the Kubernetes client against a fake API
server on 127.0.0.1, GET /v1/cluster and `sam3-serve cluster-status`."""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from serve_app.cluster import client as cluster_client
from serve_app.cluster.status import ClusterStatus, compute_status, pod_spec_gpus

DATA = pathlib.Path(__file__).parent / "data" / "cluster_status"
CASES = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(DATA.glob("*.yaml"))}
NS = "sam3"
NAME = "sam3-sam3-serve"


def status_of(case: dict) -> ClusterStatus:
    return compute_status(
        case["rayservice"], case["active_cluster"], case["pending_cluster"], case["pods"], case["serve_details"]
    )


# ------------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_objects_map_to_the_expected_state(name):
    case = CASES[name]
    expect = case["expect"]
    status = status_of(case)
    assert status.state == expect["state"], status.reason
    for needle in expect["reason_contains"]:
        assert needle in status.reason, (needle, status.reason)
    for key in ("gpu_workers", "serve_replicas"):
        got = getattr(status, key).model_dump()
        assert {k: got[k] for k in expect.get(key, {})} == expect.get(key, {}), key
    for key in ("ray_cluster", "pending_ray_cluster"):
        if key in expect:
            assert getattr(status, key) == expect[key], key
    assert status.rayservice == NAME and status.namespace == NS
    assert status.is_ready is (expect["state"] == "ready")
    json.loads(status.model_dump_json())  # the HTTP/CLI payload serialises


def test_every_state_has_a_recorded_case():
    assert {c["expect"]["state"] for c in CASES.values()} == {"warming_up", "ready", "draining", "off", "failed"}


def test_ready_reports_applications_and_replicas_per_deployment():
    status = status_of(CASES["ready"])
    app = status.applications["sam3"]
    assert app.status == "RUNNING"
    concept = app.deployments["ConceptSegmenter"]
    assert (concept.status, concept.replicas_running, concept.replicas_target, concept.num_gpus) == ("HEALTHY", 2, 2, 1.0)
    assert app.deployments["Sam3Ingress"].num_gpus == 0.0
    assert status.conditions == {"Ready": "True (NonZeroServeEndpoints)", "UpgradeInProgress": "False (NoPendingCluster)"}


def test_ready_gpu_workers_with_zero_replicas_are_draining_to_off():
    case = copy.deepcopy(CASES["ready"])
    for dep in case["serve_details"]["applications"]["sam3"]["deployments"].values():
        if dep["deployment_config"]["ray_actor_options"]["num_gpus"]:
            dep["target_num_replicas"], dep["replicas"] = 0, []
    status = status_of(case)
    assert status.state == "draining" and "GPU replicas scaled to zero" in status.reason


def test_pending_gpu_pod_next_to_a_ready_one_is_still_ready():
    case = copy.deepcopy(CASES["ready"])
    gpu_pod = next(p for p in case["pods"] if p["metadata"]["labels"]["ray.io/group"] == "gpu")
    extra = copy.deepcopy(gpu_pod)
    extra["metadata"]["name"] += "-new"
    extra["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
    case["pods"].append(extra)
    status = status_of(case)
    assert status.state == "ready" and status.gpu_workers.pending == 1 and status.gpu_workers.ready == 2


def test_cluster_without_gpu_group_is_ready_not_off():
    case = copy.deepcopy(CASES["off_scaled_to_zero"])
    groups = case["active_cluster"]["spec"]["workerGroupSpecs"]
    case["active_cluster"]["spec"]["workerGroupSpecs"] = [g for g in groups if g["groupName"] != "gpu"]
    status = status_of(case)
    assert status.state == "ready" and "no GPU worker group" in status.reason


def test_deprecated_service_status_is_used_without_conditions():
    case = copy.deepcopy(CASES["ready_without_serve_details"])
    case["rayservice"]["status"]["conditions"] = []
    assert status_of(case).state == "ready"
    case["rayservice"]["status"].pop("serviceStatus")
    assert status_of(case).state == "warming_up"


def test_crash_looping_head_fails_an_unready_service():
    case = copy.deepcopy(CASES["warming_up_first_start"])
    head = next(p for p in case["pods"] if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    head["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}
    status = status_of(case)
    assert status.state == "failed" and "CrashLoopBackOff" in status.reason


def test_long_tracebacks_are_shortened_keeping_the_error():
    case = copy.deepcopy(CASES["failed_deploy"])
    app = case["rayservice"]["status"]["pendingServiceStatus"]["applicationStatuses"]["sam3"]
    app["message"] = "Traceback (most recent call last):\n" + "  frame\n" * 500 + "RuntimeError: the real cause"
    status = status_of(case)
    assert status.state == "failed" and len(status.reason) < 600 and status.reason.endswith("RuntimeError: the real cause")


def test_gpu_detection_covers_vendor_resources():
    assert pod_spec_gpus({"containers": [{"resources": {"limits": {"amd.com/gpu": "2"}}}]}) == 2
    assert pod_spec_gpus({"containers": [{"resources": {"requests": {"cpu": "4"}}}]}) == 0
    assert pod_spec_gpus(None) == 0


# ------------------------------------------------------------------------------------------- client


class FakeKubeAPI(ThreadingHTTPServer):
    """Answers the few Kubernetes API GETs the client makes from an in-memory store; records requests."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, dict] = {}
        self.errors: dict[str, int] = {}
        self.requests: list[str] = []
        self.pods: list[dict] = []

    def load(self, case: dict) -> None:
        rs = case["rayservice"]
        self.objects[f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{rs['metadata']['name']}"] = rs
        for key in ("active_cluster", "pending_cluster"):
            if case[key]:
                self.objects[f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/{case[key]['metadata']['name']}"] = case[key]
        self.pods = case["pods"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeKubeAPI

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        parsed = urllib.parse.urlparse(self.path)
        self.server.requests.append(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        if parsed.path in self.server.errors:
            code = self.server.errors[parsed.path]
            return self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                     "reason": {403: "Forbidden", 404: "NotFound"}.get(code, "InternalError")})
        if parsed.path == f"/apis/ray.io/v1/namespaces/{NS}/rayservices":
            selector = query.get("labelSelector", [""])[0]
            items = [o for o in self.server.objects.values() if o["kind"] == "RayService"
                     and selector == "app.kubernetes.io/name=sam3-serve"
                     and o["metadata"]["labels"].get("app.kubernetes.io/name") == "sam3-serve"]
            return self._send(200, {"apiVersion": "ray.io/v1", "kind": "RayServiceList", "metadata": {}, "items": items})
        if parsed.path == f"/api/v1/namespaces/{NS}/pods":
            selector = query.get("labelSelector", [""])[0]
            names = set(selector.split("(", 1)[1].rstrip(")").split(",")) if "(" in selector else set()
            items = [p for p in self.server.pods if p["metadata"]["labels"]["ray.io/cluster"] in names]
            return self._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        obj = self.server.objects.get(parsed.path)
        if obj is None:
            return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"})
        return self._send(200, obj)


@pytest.fixture
def fake_api():
    server = FakeKubeAPI()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def kubeconfig(fake_api, tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("SAM3_RAYSERVICE_NAME", raising=False)
    monkeypatch.setattr(cluster_client, "SA_NAMESPACE_FILE", tmp_path / "no-such-namespace-file")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": fake_api.url}}],
        "users": [{"name": "me", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "me", "namespace": NS}}],
    }))
    return str(path)


def test_client_reads_rayservice_clusters_and_pods(fake_api, kubeconfig):
    fake_api.load(CASES["draining_upgrade"])
    status = cluster_client.get_cluster_status(name=NAME, kubeconfig=kubeconfig)
    assert status.state == "draining", status.reason
    assert status.namespace == NS, "namespace from the kubeconfig context"
    assert status.gpu_workers.ready == 1 and status.pending_ray_cluster == "sam3-sam3-serve-p4m9t"
    pod_queries = [r for r in fake_api.requests if r.startswith(f"/api/v1/namespaces/{NS}/pods")]
    selector = urllib.parse.parse_qs(urllib.parse.urlparse(pod_queries[0]).query)["labelSelector"][0]
    assert selector == "ray.io/cluster in (sam3-sam3-serve-p4m9t,sam3-sam3-serve-x7k2q)"


def test_client_finds_the_only_sam3_rayservice_without_a_name(fake_api, kubeconfig):
    fake_api.load(CASES["ready_without_serve_details"])
    status = cluster_client.get_cluster_status(kubeconfig=kubeconfig)
    assert (status.state, status.rayservice) == ("ready", NAME)


def test_client_uses_the_env_name(fake_api, kubeconfig, monkeypatch):
    fake_api.load(CASES["off_scaled_to_zero"])
    monkeypatch.setenv("SAM3_RAYSERVICE_NAME", "other")
    status = cluster_client.get_cluster_status(kubeconfig=kubeconfig)
    assert status.state == "unknown" and "RayService sam3/other not found" in status.reason


def test_forbidden_becomes_unknown_with_an_rbac_hint(fake_api, kubeconfig):
    fake_api.load(CASES["ready"])
    fake_api.errors[f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}"] = 403
    status = cluster_client.get_cluster_status(name=NAME, kubeconfig=kubeconfig)
    assert status.state == "unknown" and "forbidden" in status.reason and "rbac" in status.reason


def test_pod_list_errors_become_unknown(fake_api, kubeconfig):
    fake_api.load(CASES["ready"])
    fake_api.errors[f"/api/v1/namespaces/{NS}/pods"] = 500
    status = cluster_client.get_cluster_status(name=NAME, kubeconfig=kubeconfig)
    assert status.state == "unknown" and "500" in status.reason


def test_unreachable_api_becomes_unknown(kubeconfig, fake_api):
    fake_api.shutdown()
    fake_api.server_close()
    status = cluster_client.get_cluster_status(name=NAME, kubeconfig=kubeconfig)
    assert status.state == "unknown" and "cannot reach the Kubernetes API" in status.reason


def test_outside_kubernetes_is_local(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert cluster_client.get_cluster_status(use_kubeconfig=False).state == "local"
    assert cluster_client.get_cluster_status().state == "local"
    explicit = cluster_client.get_cluster_status(kubeconfig=str(tmp_path / "absent"))
    assert explicit.state == "unknown" and "does not exist" in explicit.reason


def test_http_endpoint_ignores_a_developers_kubeconfig(kubeconfig, fake_api, monkeypatch):
    fake_api.load(CASES["ready"])
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    assert cluster_client.get_cluster_status(use_kubeconfig=False).state == "local"
    assert fake_api.requests == []


def test_namespace_resolution(monkeypatch, tmp_path):
    sa_file = tmp_path / "namespace"
    sa_file.write_text("from-sa\n")
    monkeypatch.setattr(cluster_client, "SA_NAMESPACE_FILE", sa_file)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert cluster_client.resolve_namespace(None, "ctx") == "from-sa"
    monkeypatch.setenv("POD_NAMESPACE", "from-env")
    assert cluster_client.resolve_namespace(None, "ctx") == "from-env"
    assert cluster_client.resolve_namespace("explicit", "ctx") == "explicit"
    monkeypatch.delenv("POD_NAMESPACE")
    sa_file.unlink()
    assert cluster_client.resolve_namespace(None, "ctx") == "ctx"
    assert cluster_client.resolve_namespace(None, None) == "default"


def test_unexpected_errors_never_escape(monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(cluster_client, "_load_config", boom)
    status = cluster_client.get_cluster_status()
    assert status.state == "unknown" and "boom" in status.reason


# ------------------------------------------------------------------------------------------- HTTP + CLI


def test_get_v1_cluster(monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve_app.ingress.routers import cluster as cluster_router
    from serve_app.ingress.routers.cluster import router

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(cluster_router, "CACHE_TTL_S", 0.0)
    monkeypatch.setattr(cluster_router, "_cache", None)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as http:
        resp = http.get("/v1/cluster")
        assert resp.status_code == 200
        assert resp.json()["state"] == "local"
        monkeypatch.setattr(cluster_client, "_load_config", lambda *a, **k: 1 / 0)
        resp = http.get("/v1/cluster")
        assert resp.status_code == 200 and resp.json()["state"] == "unknown"
        monkeypatch.setattr(cluster_router, "CACHE_TTL_S", 60.0)
        monkeypatch.setattr(cluster_router, "_cache", None)
        calls = []
        monkeypatch.setattr(cluster_router, "_read_status", lambda: calls.append(1) or ClusterStatus(state="off", reason="x"))
        first, second = http.get("/v1/cluster").json(), http.get("/v1/cluster").json()
        assert first == second and first["state"] == "off" and len(calls) == 1, "answers are cached for CACHE_TTL_S"
        schema = http.get("/openapi.json").json()
        assert "/v1/cluster" in schema["paths"] and "ClusterStatus" in schema["components"]["schemas"]


@pytest.mark.parametrize("case, code", [("ready", 0), ("warming_up_cold_start", 1), ("failed_unhealthy", 1)])
def test_cli_cluster_status_exit_code(fake_api, kubeconfig, capsys, case, code):
    from serve_app.cli import main

    fake_api.load(CASES[case])
    rc = main(["cluster-status", "--kubeconfig", kubeconfig, "-n", NS, "--name", NAME])
    out = json.loads(capsys.readouterr().out)
    assert rc == code and out["state"] == CASES[case]["expect"]["state"]
    assert out["rayservice"] == NAME


def test_cli_reads_serve_details_from_a_dashboard_url(fake_api, kubeconfig, capsys):
    """--dashboard-url (e.g. a port-forward) adds Serve replica counts; served here by the fake API too."""
    from serve_app.cli import main

    case = CASES["ready"]
    fake_api.load(case)
    fake_api.objects["/api/serve/applications/"] = case["serve_details"]
    rc = main(["cluster-status", "--kubeconfig", kubeconfig, "--name", NAME, "--dashboard-url", fake_api.url])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["serve_replicas"]["running"] == 3


def test_importing_the_package_is_cheap():
    code = (
        "import sys, serve_app.cluster, serve_app.cluster.status, serve_app.ingress.routers.cluster, serve_app.cli\n"
        "heavy = [m for m in ('kubernetes', 'ray', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=pathlib.Path(__file__).parents[2])
