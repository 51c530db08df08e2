"""The CRD validator in tests/deploy/kube.py: it must reject what the API server would drop or refuse,
and accept the recorded KubeRay objects the status tests use."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from tests.deploy import kube
from tests.deploy.conftest import require_crds

STATUS_FIXTURES = sorted((kube.REPO_ROOT / "tests" / "unit" / "data" / "cluster_status").glob("*.yaml"))


@pytest.fixture(scope="module")
def rayservice(rendered, crds) -> dict:
    return copy.deepcopy(kube.one(rendered["default"], "RayService"))


def test_strict_schema_maps_kubernetes_extensions():
    schema = kube.strict_schema(
        {
            "type": "object",
            "properties": {
                "q": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
                "maybe": {"type": "string", "nullable": True},
            },
        }
    )
    import jsonschema

    v = jsonschema.Draft7Validator(schema)
    assert not list(v.iter_errors({"q": "1Gi", "port": 8000, "free": {"a": 1, "b": 2}, "maybe": None}))
    assert not list(v.iter_errors({"q": 2, "port": "http"}))
    errors = [e.message for e in v.iter_errors({"q": 1.5, "port": [1], "extra": 1})]
    assert any("'extra' was unexpected" in e for e in errors)
    assert len(errors) == 3


def test_rejects_unknown_field_at_any_depth(rayservice):
    bad = copy.deepcopy(rayservice)
    bad["spec"]["serveConfigv2"] = bad["spec"].pop("serveConfigV2")
    gpu = kube.worker_group(bad, "gpu")
    gpu["minReplica"] = 0
    gpu["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    errors = kube.validate_custom_resource(bad)
    assert any("'serveConfigv2' was unexpected" in e for e in errors), errors
    assert any(e.startswith("spec.rayClusterConfig.workerGroupSpecs.1:") and "'minReplica'" in e for e in errors)
    assert any("securityContext" in e and "'readOnlyRootFileSystem'" in e for e in errors), errors


def test_rejects_wrong_types_and_missing_required(rayservice):
    bad = copy.deepcopy(rayservice)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    bad["spec"]["rayClusterConfig"]["autoscalerOptions"]["upscalingMode"] = "Turbo"
    del kube.worker_group(bad, "cpu")["groupName"]
    errors = kube.validate_custom_resource(bad)
    assert any("num-cpus: 0 is not of type 'string'" in e for e in errors), errors
    assert any("'Turbo' is not one of" in e for e in errors), errors
    assert any("'groupName' is a required property" in e for e in errors), errors


def test_rejects_bad_metadata_and_api_version(rayservice):
    bad = copy.deepcopy(rayservice)
    bad["metadata"]["label"] = {"a": "b"}
    bad["metadata"]["labels"]["n"] = 1
    assert kube.validate_custom_resource(bad) == [
        "metadata.label: unknown ObjectMeta field",
        "metadata.labels.n: value 1 is not a string",
    ]
    bad["apiVersion"] = "ray.io/v1alpha1"
    assert kube.validate_custom_resource(bad) == ["apiVersion 'ray.io/v1alpha1' is not ray.io/v1"]


def test_embedded_cluster_is_checked_against_the_raycluster_crd(rayservice):
    cluster = kube.embedded_raycluster(rayservice)
    assert kube.validate_custom_resource(cluster) == []
    cluster["spec"]["workerGroupSpecs"][0]["numOfHost"] = 1
    assert any("'numOfHost' was unexpected" in e for e in kube.validate_custom_resource(cluster))


def test_kuberay_semantic_rules(rayservice):
    bad = copy.deepcopy(rayservice)
    bad["metadata"]["name"] = "x" * 48
    bad["spec"]["upgradeStrategy"]["type"] = "BlueGreen"
    gpu = kube.worker_group(bad, "gpu")
    gpu["minReplicas"], gpu["maxReplicas"] = 3, 2
    gpu["rayStartParams"]["labels"] = "a=b"
    errors = kube.kuberay_semantic_errors(bad)
    assert errors == [
        f"RayService name {'x' * 48!r} longer than 47 characters",
        "upgradeStrategy.type 'BlueGreen' invalid",
        "gpu: rayStartParams['labels'] not supported",
        "gpu: minReplicas 3 > maxReplicas 2",
    ]


@pytest.mark.parametrize("path", STATUS_FIXTURES, ids=[p.stem for p in STATUS_FIXTURES])
def test_recorded_status_objects_match_the_crds(crds, path: pathlib.Path):
    """The recorded objects the status mapping is tested on are real KubeRay v1.7 / Kubernetes shapes."""
    case = yaml.safe_load(path.read_text())
    assert kube.validate_custom_resource(case["rayservice"]) == []
    for key in ("active_cluster", "pending_cluster"):
        if case[key]:
            assert kube.validate_custom_resource(case[key]) == [], key
    for pod in case["pods"]:
        assert kube.validate_core(pod) == [], pod["metadata"]["name"]


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_crds_fail_under_ci(monkeypatch, tmp_path, ci):
    """CI must run the CRD checks: without the CRDs it fails instead of skipping."""
    monkeypatch.setattr(kube, "CRD_DIR", tmp_path)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="KubeRay v1.7.0 CRDs not found") as failed:
        require_crds()
    assert str(tmp_path) in str(failed.value) and "KUBERAY_CRD_DIR" in str(failed.value)


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_missing_crds_skip_outside_ci(monkeypatch, tmp_path, ci):
    monkeypatch.setattr(kube, "CRD_DIR", tmp_path)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="KubeRay v1.7.0 CRDs not found"):
        require_crds()


def test_present_crds_are_returned(monkeypatch, tmp_path):
    for name in kube.CRD_FILES.values():
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(kube, "CRD_DIR", tmp_path)
    monkeypatch.setenv("CI", "true")
    assert require_crds() == tmp_path
