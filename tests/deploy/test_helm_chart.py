"""helm/sam3-serve: lint, render, validate every object, and assert what the chart promises."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from tests.deploy import checks, kube
from tests.deploy.conftest import CHART, CI_VALUES, NAMESPACE, RELEASE, run
from tests.deploy.values_schema import VALUES_SCHEMA, app_schema

VALUE_SETS = ("default", "ci")


# ------------------------------------------------------------------------------------------- lint / render


@pytest.mark.parametrize("values", [(), (CI_VALUES,)], ids=VALUE_SETS)
def test_helm_lint_strict(helm_bin, values):
    cmd = [helm_bin, "lint", "--strict", str(CHART), "--kube-version", kube.KUBE_VERSION]
    for f in values:
        cmd += ["-f", str(f)]
    proc = run(cmd)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_rendered_objects(rendered):
    kinds = lambda docs: sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)  # noqa: E731
    assert kinds(rendered["default"]) == sorted(
        [
            "NetworkPolicy/sam3-sam3-serve",
            "NetworkPolicy/sam3-sam3-serve-default-deny",
            "NetworkPolicy/sam3-sam3-serve-egress",
            "NetworkPolicy/sam3-sam3-serve-egress-hub",
            "NetworkPolicy/sam3-sam3-serve-egress-kube-api",
            "NetworkPolicy/sam3-sam3-serve-egress-storage",
            "NetworkPolicy/sam3-sam3-serve-test",
            "PodDisruptionBudget/sam3-sam3-serve-cpu-workers",
            "PodDisruptionBudget/sam3-sam3-serve-gpu-workers",
            "PodDisruptionBudget/sam3-sam3-serve-head",
            "Pod/sam3-sam3-serve-test-healthz",
            "RayService/sam3-sam3-serve",
            "Role/sam3-sam3-serve-status-reader",
            "RoleBinding/sam3-sam3-serve-status-reader",
            "ServiceAccount/sam3-sam3-serve",
        ]
    )
    assert kinds(rendered["ci"]) == sorted(
        [
            "Ingress/sam3-ci",
            "NetworkPolicy/sam3-ci",
            "NetworkPolicy/sam3-ci-default-deny",
            "NetworkPolicy/sam3-ci-egress",
            "NetworkPolicy/sam3-ci-egress-hub",
            "NetworkPolicy/sam3-ci-egress-kube-api",
            "NetworkPolicy/sam3-ci-egress-storage",
            "NetworkPolicy/sam3-ci-test",
            "Pod/sam3-ci-test-healthz",
            "PodDisruptionBudget/sam3-ci-cpu-workers",
            "PodDisruptionBudget/sam3-ci-gpu-workers",
            "PodDisruptionBudget/sam3-ci-head",
            "PodMonitor/sam3-ci",
            "RayService/sam3-ci",
            "Role/sam3-ci-status-reader",
            "RoleBinding/sam3-ci-status-reader",
            "Secret/sam3-ci-credentials",
            "Service/sam3-ci-metrics",
            "ServiceAccount/sam3-ci",
            "ServiceMonitor/sam3-ci",
        ]
    )


@pytest.mark.parametrize("values", VALUE_SETS)
def test_core_objects_pass_kubernetes_validate_strict(rendered, values):
    core = [d for d in rendered[values] if kube.is_core(d)]
    assert len(core) >= 6
    errors = {f"{d['kind']}/{d['metadata']['name']}": kube.validate_core(d) for d in core}
    assert not any(errors.values()), errors


def test_kubernetes_validate_catches_a_bad_core_object(rendered):
    np = copy.deepcopy(next(d for d in kube.by_kind(rendered["default"], "NetworkPolicy")
                            if d["metadata"]["name"] == "sam3-sam3-serve"))
    np["spec"]["ingres"] = np["spec"].pop("ingress")
    assert any("ingres" in e for e in kube.validate_core(np))


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rayservice_matches_kuberay_crds(rendered, crds, values):
    rs = kube.one(rendered[values], "RayService")
    assert kube.validate_custom_resource(rs) == []
    assert kube.validate_custom_resource(kube.embedded_raycluster(rs)) == []
    assert kube.kuberay_semantic_errors(rs) == []


# ------------------------------------------------------------------------------------------- RayService content


def test_rayservice_invariants(rendered):
    for values in VALUE_SETS:
        checks.check_rayservice(kube.one(rendered[values], "RayService"))


def test_default_rayservice_shape(rendered):
    rs = kube.one(rendered["default"], "RayService")
    spec = rs["spec"]
    cluster = spec["rayClusterConfig"]
    assert rs["metadata"]["name"] == "sam3-sam3-serve"
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 300
    assert cluster["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True
    assert cluster["autoscalerOptions"]["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "autoscaler-sa-token", "mountPath": kube.SA_TOKEN_DIR, "readOnly": True},
    ]
    assert cluster["authOptions"] == {"mode": "token"}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == ["cpu", "gpu"]
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"]) == (1, 4)
    gpu = groups["gpu"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)
    assert gpu["rayStartParams"] == {"num-cpus": "1"}
    assert "idleTimeoutSeconds" not in gpu
    ray = gpu["template"]["spec"]["containers"][0]
    assert ray["resources"]["limits"] == {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": 1}
    assert ray["resources"]["requests"] == {"cpu": "6", "memory": "48Gi", "nvidia.com/gpu": 1}
    assert gpu["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    volumes = {v["name"]: v for v in gpu["template"]["spec"]["volumes"]}
    assert volumes["hf-cache"] == {"name": "hf-cache", "emptyDir": {"sizeLimit": "40Gi"}}
    assert spec["serveService"]["metadata"]["name"] == "sam3-sam3-serve-serve-svc"
    env = {e["name"] for e in ray["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"}, "no credentials configured"


def test_ci_values_reach_the_rayservice(rendered):
    rs = kube.one(rendered["ci"], "RayService")
    assert rs["metadata"]["annotations"] == {"ray.io/initializing-timeout": "45m"}
    gpu = kube.worker_group(rs, "gpu")
    assert gpu["idleTimeoutSeconds"] == 60 and gpu["maxReplicas"] == 2
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert {v["name"]: v for v in pod["volumes"]}["hf-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    ray = pod["containers"][0]
    assert ray["image"] == "registry.example.com/ml/sam3-serve:0.1.0-ci"
    env = {e["name"]: e for e in ray["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "sam3-ci-credentials",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert env["RAY_USAGE_STATS_ENABLED"] == {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert head["metadata"]["labels"]["team"] == "vision"
    assert head["spec"]["nodeSelector"] == {"node-pool": "system"}
    assert rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["upscalingMode"] == "Aggressive"
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["concept"]["replica"]["autoscaling"]["min_replicas"] == 0, "ci exercises scale-to-zero"
    assert args["auth"]["mode"] == "api_keys" and args["auth"]["keys_file"].endswith("/keys.yaml")
    assert args["auth"]["quotas"] == {"requests_per_s": 20, "burst": 40, "max_concurrent_jobs": 10}
    assert args["auth"]["tenant_quotas"] == {"acme": {"requests_per_s": 100}}
    assert args["storage"] == {
        "uri": "s3://sam3-ci-artifacts/serve",
        "endpoint_url": "http://minio.minio.svc:9000",
        "region": "us-east-1",
        "presign_expiry_s": 900,
        "max_upload_bytes": 1073741824,
        "allowed_url_buckets": [],
    }


def test_serve_config_mirrors_serve_config_yaml(rendered):
    """Same application block as serve_config.yaml; every args section there exists in the chart values."""
    local = yaml.safe_load((kube.REPO_ROOT / "serve_config.yaml").read_text())
    chart = yaml.safe_load(kube.one(rendered["default"], "RayService")["spec"]["serveConfigV2"])
    assert set(local) <= set(chart), f"serve_config.yaml top-level keys missing in serveConfigV2: {set(local) - set(chart)}"
    lapp, capp = local["applications"][0], chart["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert capp[key] == lapp[key], key
    assert set(lapp) == set(capp)
    assert set(lapp["args"]) <= set(capp["args"]), set(lapp["args"]) - set(capp["args"])
    assert chart["http_options"]["port"] == local["http_options"]["port"] == 8000
    assert chart["proxy_location"] == local["proxy_location"]


def test_serve_config_rejects_keys_ray_would_ignore():
    from ray.serve.schema import ServeDeploySchema

    cfg = {"applications": [{"name": "a", "import_path": "x:y", "imports_path": "x"}], "http_options": {"prot": 1}}
    errs = checks.unknown_serve_keys(ServeDeploySchema, cfg)
    assert errs == ["applications[0].imports_path: not a ServeApplicationSchema field",
                    "http_options.prot: not a HTTPOptionsSchema field"]


def test_app_values_are_validated_by_appconfig(helm_template):
    """A value AppConfig rejects (semantic rule, not expressible in JSON schema) fails the rendered args check."""
    proc = helm_template(sets=("app.concept.replica.max_ongoing_requests=4",))
    assert proc.returncode == 0, proc.stderr  # the schema allows it ...
    rs = kube.one(kube.load_docs(proc.stdout), "RayService")
    with pytest.raises(Exception, match="max_ongoing_requests"):  # ... AppConfig does not (and neither will build_app)
        checks.check_serve_config(rs["spec"]["serveConfigV2"])


# ------------------------------------------------------------------------------------------- schema / values


@pytest.mark.parametrize(
    "bad_set, complaint",
    [
        ("gpuWorker.minReplicas=1", "gpuWorker"),
        ("gpuWorkers.minReplica=1", "minReplica"),
        ("app.concept.replica.num_gpu=1", "num_gpu"),
        ("app.storage.uri_=s3://x/y", "uri_"),
        ("rayService.upgradeStrategy=BlueGreen", "upgradeStrategy"),
        ("containerSecurityContext.readOnlyRootFileSystem=true", "readOnlyRootFileSystem"),
    ],
)
def test_values_schema_rejects_misspelled_keys(helm_template, bad_set, complaint):
    proc = helm_template(sets=(bad_set,))
    assert proc.returncode != 0, f"{bad_set} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert complaint in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "bad_set, message",
    [
        ("app.concept.replica.num_gpus=auto", "num_gpus must be explicit"),
        ("gpuWorkers.minReplicas=5", "gpuWorkers.minReplicas (5) must be <= gpuWorkers.maxReplicas (4)"),
        ("rayService.upgradeStrategy=NewClusterWithIncrementalUpgrade", "needs rayService.clusterUpgradeOptions"),
        ("gpuWorkers.idleTimeoutSeconds=60,autoscaler.version=v1", "needs autoscaler.enabled=true and autoscaler.version=v2"),
    ],
)
def test_chart_refuses_inconsistent_values(helm_template, bad_set, message):
    proc = helm_template(sets=(bad_set,))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_values_schema_app_matches_appconfig():
    committed = json.loads(VALUES_SCHEMA.read_text())["properties"]["app"]
    assert committed == app_schema(), (
        "helm/sam3-serve/values.schema.json `app` is out of date with serve_app.config.AppConfig: "
        "run `python -m tests.deploy.values_schema`"
    )


def test_values_schema_is_closed_everywhere():
    """additionalProperties false on every object schema with properties (a typo anywhere is an error)."""
    schema = json.loads(VALUES_SCHEMA.read_text())
    open_paths = []

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_paths.append(path or "<root>")
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(schema, "")
    assert open_paths == []


# Children of these keys are documented by the parent's `# --` comment (free-form k8s objects, examples).
_DOC_EXEMPT_PARENTS = {
    "resources", "requests", "limits", "podSecurityContext", "containerSecurityContext", "capabilities",
    "seccompProfile", "loggingConfig", "rayStartParams", "autoscaling", "replica", "batching", "podLabels",
}


def test_every_value_is_documented():
    """Every key in values.yaml has a `# --` comment (helm-docs), except inside lists and free-form objects."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z0-9_./\"-]+):( |$)", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key = len(m.group(1)), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m.group(2):  # "- key:" starts a list item: its keys are part of the documented list value
            stack.append((indent, "[]"))
            indent += 2
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if "[]" in parents or (any(p in _DOC_EXEMPT_PARENTS for p in parents) and parents[:1] != ["app"]):
            continue
        j = i - 1
        block = []
        while j >= 0 and lines[j].strip().startswith("#"):
            block.append(lines[j].strip())
            j -= 1
        if not any(c.startswith("# --") for c in block):
            undocumented.append(".".join(parents + [key]))
    assert undocumented == []


# ------------------------------------------------------------------------------------------- other objects


def test_rbac_is_read_only_and_bound_to_the_pods_service_account(rendered):
    docs = rendered["default"]
    role = kube.one(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("ray.io",), ("rayservices", "rayclusters")): {"get", "list", "watch"},
        (("",), ("pods",)): {"get", "list", "watch"},
    }
    binding = kube.one(docs, "RoleBinding")
    sa = kube.one(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    rs = kube.one(docs, "RayService")
    templates = kube.pod_templates(rs)
    assert {t["spec"]["serviceAccountName"] for n, t in templates.items() if n != "head"} == {sa}
    # The head runs under the account KubeRay creates per RayCluster (it binds the autoscaler's Role there).
    assert "serviceAccountName" not in templates["head"]["spec"]
    assert kube.one(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_head_service_account_can_be_set(helm_template):
    proc = helm_template(sets=("head.serviceAccountName=ray-head",))
    assert proc.returncode == 0, proc.stderr
    rs = kube.one(kube.load_docs(proc.stdout), "RayService")
    assert kube.pod_templates(rs)["head"]["spec"]["serviceAccountName"] == "ray-head"
    checks.check_rayservice(rs)


def test_rbac_and_service_account_can_be_turned_off(helm_template):
    proc = helm_template(sets=("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=existing-sa"))
    assert proc.returncode == 0, proc.stderr
    docs = kube.load_docs(proc.stdout)
    assert not kube.by_kind(docs, "Role") and not kube.by_kind(docs, "ServiceAccount")
    rs = kube.one(docs, "RayService")
    templates = kube.pod_templates(rs)
    assert {t["spec"]["serviceAccountName"] for n, t in templates.items() if n != "head"} == {"existing-sa"}
    assert "serviceAccountName" not in templates["head"]["spec"]


def test_service_account_annotations_for_workload_identity(rendered):
    sa = kube.one(rendered["ci"], "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/sam3-serve"}


def test_secret_holds_only_inline_credentials(rendered):
    secret = kube.one(rendered["ci"], "Secret")
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "ci-access-key", "AWS_SECRET_ACCESS_KEY": "ci-secret-key"}
    assert not kube.by_kind(rendered["default"], "Secret")


def test_existing_secret_is_referenced_not_created(helm_template):
    proc = helm_template(sets=("s3.existingSecret=my-s3", "huggingface.existingSecret=my-s3"))
    docs = kube.load_docs(proc.stdout)
    assert not kube.by_kind(docs, "Secret")
    ray = kube.worker_group(kube.one(docs, "RayService"), "gpu")["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in ray["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
    assert refs == {"AWS_ACCESS_KEY_ID": "my-s3", "AWS_SECRET_ACCESS_KEY": "my-s3", "HF_TOKEN": "my-s3"}


def test_ingress_routes_to_the_kuberay_serve_service(rendered):
    rs = kube.one(rendered["ci"], "RayService")
    ing = kube.one(rendered["ci"], "Ingress")
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "sam3.ci.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": rs["spec"]["serveService"]["metadata"]["name"], "port": {"number": 8000}}
    assert ing["spec"]["tls"] == [{"secretName": "sam3-ci-tls", "hosts": ["sam3.ci.example.com"]}]


def test_monitoring_scrapes_the_ray_metrics_port(rendered):
    docs = rendered["ci"]
    pm = kube.one(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["selector"]["matchLabels"]["ray.io/is-ray-node"] == "yes"
    assert [(e["port"], e["path"]) for e in pm["spec"]["podMetricsEndpoints"]] == [("metrics", "/metrics")]
    svc = kube.one(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["targetPort"] == "metrics"
    sm = kube.one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    rs = kube.one(docs, "RayService")
    for name, t in kube.pod_templates(rs).items():
        ports = {p["name"]: p["containerPort"] for p in t["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080 and ports["serve"] == 8000, name
        assert svc["spec"]["selector"].items() <= t["metadata"]["labels"].items() | {("ray.io/is-ray-node", "yes")}


def test_read_only_root_can_be_turned_off(helm_template):
    proc = helm_template(sets=("containerSecurityContext.readOnlyRootFilesystem=false",))
    rs = kube.one(kube.load_docs(proc.stdout), "RayService")
    for t in kube.pod_templates(rs).values():
        assert t["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False


def test_pod_templates_do_not_change_with_the_chart_version(helm_bin, tmp_path):
    """A chart version bump alone must not make KubeRay build a new cluster (2x GPUs during the switch)."""
    import shutil

    copy_dir = tmp_path / "sam3-serve"
    shutil.copytree(CHART, copy_dir)
    chart_yaml = copy_dir / "Chart.yaml"
    chart_yaml.write_text(re.sub(r"(?m)^version: .*$", "version: 9.9.9", chart_yaml.read_text()))
    out = []
    for chart in (CHART, copy_dir):
        proc = run([helm_bin, "template", RELEASE, str(chart), "--set", "image.tag=1.0.0"])
        out.append(kube.one(kube.load_docs(proc.stdout), "RayService")["spec"]["rayClusterConfig"])
    assert out[0] == out[1]


def test_notes_render(helm_bin, tmp_path):
    """NOTES.txt rendered offline: `helm install --dry-run` needs a cluster, so render it through tpl."""
    import shutil

    chart = tmp_path / "sam3-serve"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    proc = run([helm_bin, "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--show-only",
                "templates/zz-notes.yaml", "--set", "app.concept.replica.autoscaling.min_replicas=0"])
    notes = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "WARNING: app.storage.uri is still the placeholder" in notes
    assert "facebook/sam3 is gated" in notes
    assert "Scale-to-zero is on" in notes
    assert "sam3-serve cluster-status -n sam3 --name sam3-sam3-serve" in notes
    assert "port-forward svc/sam3-sam3-serve-serve-svc 8000:8000" in notes
    assert "twice the GPUs" in notes
    assert "export RAY_AUTH_TOKEN=$(kubectl -n sam3 get secret $RC -o jsonpath='{.data.auth_token}' | base64 -d)" in notes
    assert "get rayservice sam3-sam3-serve -o jsonpath='{.status.activeServiceStatus.rayClusterName}'" in notes
    proc = run([helm_bin, "template", RELEASE, str(chart), "-f", str(CI_VALUES), "--show-only", "templates/zz-notes.yaml"])
    ci_notes = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "WARNING" not in ci_notes and "https://sam3.ci.example.com/docs" in ci_notes
    assert "get secret ray-token -o jsonpath" in ci_notes
    proc = run([helm_bin, "template", RELEASE, str(chart), "--show-only", "templates/zz-notes.yaml",
                "--set", "rayAuth.enabled=false"])
    assert "RAY_AUTH_TOKEN" not in yaml.safe_load(proc.stdout)["data"]["notes"]
    proc = run([helm_bin, "template", RELEASE, str(chart), "--show-only", "templates/zz-notes.yaml",
                "--set", "app.ingress.model_timeout_s=300"])
    assert "app.ingress.model_timeout_s (300) >= serve.requestTimeoutS (120)" in yaml.safe_load(proc.stdout)["data"]["notes"]
