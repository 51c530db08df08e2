"""k8s/: the kustomize base (CPU-only) and GPU overlay render, validate, and match the chart's promises."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy import checks, kube

BUILDS = {"base": "k8s/base", "gpu": "k8s/overlays/gpu"}


@pytest.fixture(scope="module")
def built(kustomize_build) -> dict[str, list[dict]]:
    return {name: kustomize_build(path) for name, path in BUILDS.items()}


def test_objects(built):
    kinds = {name: sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs) for name, docs in built.items()}
    expected = sorted(
        [
            "NetworkPolicy/sam3-serve",
            "NetworkPolicy/sam3-serve-default-deny",
            "NetworkPolicy/sam3-serve-egress",
            "NetworkPolicy/sam3-serve-egress-hub",
            "NetworkPolicy/sam3-serve-egress-kube-api",
            "NetworkPolicy/sam3-serve-egress-storage",
            "PodDisruptionBudget/sam3-serve-cpu-workers",
            "PodDisruptionBudget/sam3-serve-head",
            "RayService/sam3-serve",
            "Role/sam3-serve-status-reader",
            "RoleBinding/sam3-serve-status-reader",
            "ServiceAccount/sam3-serve",
        ]
    )
    assert kinds == {"base": expected, "gpu": sorted(expected + ["PodDisruptionBudget/sam3-serve-gpu-workers"])}, (
        "the serve-config ConfigMap must stay local (not applied)")
    assert {d["metadata"].get("namespace") for d in built["gpu"]} == {"sam3"}


@pytest.mark.parametrize("name", BUILDS)
def test_core_objects_pass_kubernetes_validate_strict(built, name):
    errors = {f"{d['kind']}/{d['metadata']['name']}": kube.validate_core(d) for d in built[name] if kube.is_core(d)}
    assert len(errors) == {"base": 11, "gpu": 12}[name] and not any(errors.values()), errors


@pytest.mark.parametrize("name", BUILDS)
def test_rayservice_matches_kuberay_crds(built, crds, name):
    rs = kube.one(built[name], "RayService")
    assert kube.validate_custom_resource(rs) == []
    assert kube.validate_custom_resource(kube.embedded_raycluster(rs)) == []
    assert kube.kuberay_semantic_errors(rs) == []


def test_base_is_cpu_only(built):
    rs = kube.one(built["base"], "RayService")
    cfg = checks.check_rayservice(rs, gpu_group=None)
    assert [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["cpu"]
    assert cfg["applications"][0]["args"]["concept"]["replica"]["num_gpus"] == 0


def test_gpu_overlay_adds_the_gpu_pool_and_gpu_serve_config(built):
    rs = kube.one(built["gpu"], "RayService")
    cfg = checks.check_rayservice(rs, gpu_group="gpu", gpus_per_pod=1)
    gpu = kube.worker_group(rs, "gpu")
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)
    assert gpu["template"]["spec"]["nodeSelector"] == {"sam3-serve/pool": "gpu"}
    assert cfg["applications"][0]["args"]["concept"]["replica"]["num_gpus"] == 1
    assert kube.one(built["gpu"], "RoleBinding")["subjects"][0]["namespace"] == "sam3"


def test_gpu_overlay_matches_the_chart_defaults(built, rendered):
    """Plain manifests and chart describe the same deployment: compare the parts that matter."""
    ours = kube.one(built["gpu"], "RayService")
    chart = kube.one(rendered["default"], "RayService")
    ours_cfg, chart_cfg = (yaml.safe_load(r["spec"]["serveConfigV2"]) for r in (ours, chart))
    from serve_app.config import AppConfig

    effective = lambda cfg: AppConfig.model_validate(cfg["applications"][0]["args"]).model_dump()  # noqa: E731
    assert effective(ours_cfg) == effective(chart_cfg)
    assert {k: v for k, v in ours_cfg.items() if k != "applications"} == {
        k: v for k, v in chart_cfg.items() if k != "applications"
    }

    def shape(rs):
        cluster = rs["spec"]["rayClusterConfig"]
        groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
        out = {"autoscaler": {k: v for k, v in cluster["autoscalerOptions"].items()}, "auth": cluster.get("authOptions")}
        for name, g in groups.items():
            spec = g["template"]["spec"]
            c = spec["containers"][0]
            out[name] = {
                "rayStartParams": g["rayStartParams"],
                "replicas": (g.get("minReplicas"), g.get("maxReplicas")),
                "podSecurityContext": spec["securityContext"],
                "securityContext": c["securityContext"],
                "resources": c["resources"],
                "ports": c["ports"],
                "mounts": c["volumeMounts"],
                "volumes": spec["volumes"],
                "env": sorted(e["name"] for e in c["env"] if e["name"] not in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
                "tolerations": spec.get("tolerations"),
                "automountServiceAccountToken": spec.get("automountServiceAccountToken"),
                "ownServiceAccount": "serviceAccountName" in spec,
            }
        return out

    assert shape(ours) == shape(chart)
    for key in ("upgradeStrategy", "rayClusterDeletionDelaySeconds", "excludeHeadPodFromServeSvc"):
        assert ours["spec"][key] == chart["spec"][key], key


def _normalized(docs: list[dict], kind: str, prefix: str, instance: str) -> dict[str, dict]:
    """{name suffix: spec} of `kind` with the release's instance label value replaced, to compare chart and k8s/."""
    import json

    out = {}
    for d in kube.by_kind(docs, kind):
        suffix = d["metadata"]["name"][len(prefix):]
        out[suffix] = json.loads(json.dumps(d["spec"]).replace(f'"app.kubernetes.io/instance": "{instance}"',
                                                               '"app.kubernetes.io/instance": "RELEASE"'))
    return out


@pytest.mark.parametrize("kind", ["NetworkPolicy", "PodDisruptionBudget"])
def test_gpu_overlay_policies_match_the_chart_defaults(built, rendered, kind):
    ours = _normalized(built["gpu"], kind, "sam3-serve", "sam3-serve")
    chart = _normalized(rendered["default"], kind, "sam3-sam3-serve", "sam3")
    chart.pop("-test", None)  # the chart's `helm test` pod has its own policy
    assert ours == chart


@pytest.mark.parametrize("name", BUILDS)
def test_cluster_lockdown(built, name):
    """The chart's rules (test_cluster_security.py), on the plain manifests: default deny + allows, the dashboard
    only from the operator pods, one PDB per group, Ray token auth, tokens and Secrets only where used."""
    docs = built[name]
    rs = kube.one(docs, "RayService")
    models = {"base": {"cpu"}, "gpu": {"gpu"}}[name]
    checks.check_default_lockdown(docs, rs, instance="sam3-serve", model_groups=models)
    checks.check_pdbs(docs, rs)
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    tokens = {"head": ["container:autoscaler"], "cpu": ["container:ray"]}
    if name == "gpu":
        tokens["gpu"] = []
    assert checks.service_account_tokens(rs) == tokens
    assert kube.one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    uses = {g: {u.split("=")[0] for c in cs.values() for u in c} for g, cs in checks.secret_uses(rs).items()}
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    expected = {"head": set(), "cpu": aws | {"HF_TOKEN"}} if name == "base" else {"head": set(), "cpu": aws, "gpu": aws | {"HF_TOKEN"}}
    assert uses == expected


def test_credentials_are_optional_secret_refs(built):
    rs = kube.one(built["gpu"], "RayService")
    wanted = {"head": (), "cpu": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
              "gpu": ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for name, t in kube.pod_templates(rs).items():
        env = {e["name"]: e for e in t["spec"]["containers"][0]["env"]}
        assert set(env) & checks.SECRET_ENV == set(wanted[name]), name
        for var in wanted[name]:
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "sam3-serve-credentials", "key": var, "optional": True}, (name, var)


def test_extras_podmonitor():
    pm = yaml.safe_load((kube.REPO_ROOT / "k8s" / "extras" / "podmonitor.yaml").read_text())
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"]["ray.io/is-ray-node"] == "yes"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_readme_documents_operator_and_gpu_pool():
    text = (kube.REPO_ROOT / "k8s" / "README.md").read_text()
    for needle in ("1.7.0", "kubectl apply -k k8s/overlays/gpu", "sam3-serve/pool=gpu", "nvidia.com/gpu", "taint",
                   "sam3-serve-credentials"):
        assert needle in text, needle
