"""helm/sam3-serve cluster security (issue 14 item 5): NetworkPolicies (default deny + explicit allows, the
dashboard only from the KubeRay operator), Ray token auth, service-account tokens and Secrets only where they
are used, one PodDisruptionBudget per Ray group. The k8s/ manifests are checked against the same rules in
test_k8s_manifests.py."""

from __future__ import annotations

import pytest

from tests.deploy import checks, kube

AWS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRETS = ("s3.existingSecret=s3-creds", "huggingface.existingSecret=hf-creds", "auth.mode=api_keys",
           "auth.existingSecret=api-keys")


def _render(helm_template, *sets: str) -> list[dict]:
    proc = helm_template(sets=sets)
    assert proc.returncode == 0, proc.stderr
    return kube.load_docs(proc.stdout)


def _test_pod(docs: list[dict]) -> dict[str, dict]:
    pod = kube.one(docs, "Pod")
    assert pod["spec"]["automountServiceAccountToken"] is False
    return {"helm-test": pod["metadata"]["labels"]}


def _np(docs: list[dict], suffix: str) -> dict | None:
    found = [d for d in kube.by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith(suffix)]
    assert len(found) <= 1
    return found[0] if found else None


# ------------------------------------------------------------------------------------------- service-account token


@pytest.mark.parametrize("values", ["default", "ci"])
def test_service_account_token_only_where_the_kubernetes_api_is_used(rendered, values):
    docs = rendered[values]
    rs = kube.one(docs, "RayService")
    # head: only the autoscaler sidecar (it scales the RayCluster); cpu: the ingress (GET /v1/cluster); gpu: none
    assert checks.service_account_tokens(rs) == {"head": ["container:autoscaler"], "cpu": ["container:ray"], "gpu": []}
    templates = kube.pod_templates(rs)
    assert templates["head"]["spec"]["automountServiceAccountToken"] is False
    assert templates["cpu"]["spec"]["automountServiceAccountToken"] is True
    assert templates["gpu"]["spec"]["automountServiceAccountToken"] is False
    token = {v["name"]: v for v in templates["head"]["spec"]["volumes"]}["autoscaler-sa-token"]["projected"]
    kinds = [next(iter(s)) for s in token["sources"]]
    assert kinds == ["serviceAccountToken", "configMap", "downwardAPI"], "token, ca.crt and namespace, like automount"
    assert kube.one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    # KubeRay binds the autoscaler Role (patch pods / the RayCluster) to the head's account: not the workers'
    assert "serviceAccountName" not in templates["head"]["spec"]


def test_service_account_token_can_be_dropped(helm_template):
    docs = _render(helm_template, "cpuWorkers.automountServiceAccountToken=false")
    rs = kube.one(docs, "RayService")
    assert checks.service_account_tokens(rs) == {"head": ["container:autoscaler"], "cpu": [], "gpu": []}
    api = _np(docs, "-egress-kube-api")["spec"]["podSelector"]["matchExpressions"]
    assert api == [{"key": "ray.io/group", "operator": "In", "values": ["headgroup"]}]

    docs = _render(helm_template, "autoscaler.enabled=false")
    rs = kube.one(docs, "RayService")
    assert checks.service_account_tokens(rs) == {"head": [], "cpu": ["container:ray"], "gpu": []}
    assert "autoscaler-sa-token" not in {v["name"] for v in kube.pod_templates(rs)["head"]["spec"]["volumes"]}
    api = _np(docs, "-egress-kube-api")["spec"]["podSelector"]["matchExpressions"]
    assert api == [{"key": "ray.io/group", "operator": "In", "values": ["cpu"]}]

    docs = _render(helm_template, "autoscaler.enabled=false", "cpuWorkers.automountServiceAccountToken=false")
    assert _np(docs, "-egress-kube-api") is None, "no pod holds a token: no API egress"


def test_token_check_catches_an_automounted_pod(rendered):
    import copy

    rs = copy.deepcopy(kube.one(rendered["default"], "RayService"))
    kube.pod_templates(rs)["gpu"]["spec"]["automountServiceAccountToken"] = True
    assert checks.service_account_tokens(rs)["gpu"] == ["container:ray"]
    del kube.pod_templates(rs)["gpu"]["spec"]["automountServiceAccountToken"]
    with pytest.raises(AssertionError, match="must be explicit"):
        checks.service_account_tokens(rs)


# ------------------------------------------------------------------------------------------- Ray token auth


def test_ray_token_auth_is_on_by_default(rendered, crds):
    for values, expected in (("default", {"mode": "token"}), ("ci", {"mode": "token", "secretName": "ray-token"})):
        rs = kube.one(rendered[values], "RayService")
        assert rs["spec"]["rayClusterConfig"]["authOptions"] == expected, values
        assert kube.validate_custom_resource(rs) == []
        assert kube.kuberay_semantic_errors(rs) == []


def test_ray_token_auth_can_be_turned_off(helm_template, crds):
    rs = kube.one(_render(helm_template, "rayAuth.enabled=false"), "RayService")
    assert "authOptions" not in rs["spec"]["rayClusterConfig"]
    assert kube.validate_custom_resource(rs) == []


def test_ray_token_auth_needs_ray_2_52(helm_template):
    rs = kube.one(_render(helm_template, "rayVersion=2.51.0"), "RayService")
    assert kube.kuberay_semantic_errors(rs) == ["authOptions.mode token needs rayVersion >= 2.52.0, got '2.51.0'"]


# ------------------------------------------------------------------------------------------- Secrets


def test_secrets_reach_only_the_containers_that_use_them(helm_template):
    rs = kube.one(_render(helm_template, *SECRETS), "RayService")
    aws = {"AWS_ACCESS_KEY_ID=s3-creds/AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY=s3-creds/AWS_SECRET_ACCESS_KEY"}
    assert checks.secret_uses(rs) == {
        # the head runs none of our replicas: no credentials, not even in the autoscaler sidecar
        "head": {"container:ray": set(), "container:autoscaler": set()},
        # ingress, JobWorker, SessionManager: S3; the ingress: the API key hashes
        "cpu": {"container:ray": aws | {"mount=api-keys"}},
        # model replicas and video session actors: S3 (session checkpoints) and the HF token (weights)
        "gpu": {"container:ray": aws | {"HF_TOKEN=hf-creds/HF_TOKEN"}},
    }


def test_inline_credentials_follow_the_same_placement(rendered):
    rs = kube.one(rendered["ci"], "RayService")
    names = {g: {u.split("=")[0] for c in cs.values() for u in c} for g, cs in checks.secret_uses(rs).items()}
    assert names == {"head": set(), "cpu": AWS | {"mount"}, "gpu": AWS | {"HF_TOKEN"}}


def test_hf_token_reaches_the_cpu_group_when_a_model_runs_there(helm_template):
    docs = _render(helm_template, *SECRETS, "app.concept.replica.num_gpus=0")
    rs = kube.one(docs, "RayService")
    uses = checks.secret_uses(rs)
    assert "HF_TOKEN=hf-creds/HF_TOKEN" in uses["cpu"]["container:ray"]
    assert not any("HF_TOKEN" in u for c in uses["head"].values() for u in c)
    hub = _np(docs, "-egress-hub")["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert hub == ["gpu", "cpu"]


def test_secret_check_sees_every_container(rendered):
    """secret_uses also walks init containers, envFrom and the autoscaler options: a leak there is caught."""
    import copy

    rs = copy.deepcopy(kube.one(rendered["default"], "RayService"))
    cluster = rs["spec"]["rayClusterConfig"]
    cluster["autoscalerOptions"]["envFrom"] = [{"secretRef": {"name": "s3-creds"}}]
    kube.pod_templates(rs)["gpu"]["spec"]["initContainers"] = [
        {"name": "fetch", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}]}]
    uses = checks.secret_uses(rs)
    assert uses["head"]["container:autoscaler"] == {"envFrom=s3-creds"}
    assert uses["gpu"]["init:fetch"] == {"T=hf/t"}


# ------------------------------------------------------------------------------------------- NetworkPolicies


def test_network_policies_default(rendered):
    docs = rendered["default"]
    rs = kube.one(docs, "RayService")
    checks.check_default_lockdown(docs, rs, instance="sam3", model_groups={"gpu"}, extra_pods=_test_pod(docs))


def test_network_policies_follow_the_values(rendered):
    docs = rendered["ci"]
    rs = kube.one(docs, "RayService")
    nps = kube.by_kind(docs, "NetworkPolicy")
    ray = checks.ray_pods_peer("sam3")  # the release name (fullnameOverride renames objects, not the instance)
    pods = {g: kube.kuberay_pod_labels(rs, g) for g in kube.pod_templates(rs)}
    rules = {g: (checks.policy_rules(nps, labels, "Ingress"), checks.policy_rules(nps, labels, "Egress"))
             for g, labels in pods.items()}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator",
                                                "app.kubernetes.io/name": "kuberay"}}}  # the kustomize install's labels
    assert checks.peers_on(rules["head"][0], 8265) == [ray, operator, {"ipBlock": {"cidr": "10.0.0.2/32"}}]
    minio = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}
    api = {"ipBlock": {"cidr": "10.0.0.2/32"}}
    metadata = {"ipBlock": {"cidr": "169.254.169.254/32"}}
    for g in ("cpu", "gpu"):
        assert checks.peers_on(rules[g][1], 9000) == [ray, minio], g
    assert checks.peers_on(rules["head"][1], 9000) == [ray]
    assert checks.peers_on(rules["head"][1], 443) == [ray, api]
    assert checks.peers_on(rules["cpu"][1], 443) == [ray, api]
    assert checks.peers_on(rules["gpu"][1], 443) == [ray, checks.PUBLIC_INTERNET[0]], "gpu: the Hub only"
    assert checks.peers_on(rules["gpu"][1], 80) == [ray, metadata], "egress.extra applies to every Ray pod"
    serve = checks.peers_on(rules["cpu"][0], 8000)
    test_pod = kube.one(docs, "Pod")["metadata"]["labels"]
    assert None not in serve and any(checks.peer_selects_pod(p, test_pod) for p in serve), "helm test reaches serve"
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} in serve
    assert checks.peers_on(rules["cpu"][0], 8080) == [ray, checks.MONITORING_PEER]


@pytest.mark.parametrize("sets", [("huggingface.offline=true",), ("app.model.model_id=/models/sam3",)],
                         ids=["offline", "local-model"])
def test_no_hub_egress_without_downloads(helm_template, sets):
    docs = _render(helm_template, *sets)
    assert _np(docs, "-egress-hub") is None
    rs = kube.one(docs, "RayService")
    gpu = kube.kuberay_pod_labels(rs, "gpu")
    egress = checks.policy_rules(kube.by_kind(docs, "NetworkPolicy"), gpu, "Egress")
    assert [r for r in egress if r == (checks.PUBLIC_INTERNET, checks.TCP_443)] == [(checks.PUBLIC_INTERNET, checks.TCP_443)]


def test_lockdown_check_fails_on_an_open_policy(rendered):
    """check_default_lockdown can fail: an allow-all egress rule, or the dashboard open to a namespace."""
    import copy

    docs = copy.deepcopy(rendered["default"])
    rs = kube.one(docs, "RayService")
    _np(docs, "-egress")["spec"]["egress"].append({"ports": [{"port": 80, "protocol": "TCP"}]})
    with pytest.raises(AssertionError, match="allows every destination"):
        checks.check_default_lockdown(docs, rs, instance="sam3", model_groups={"gpu"})
    docs = copy.deepcopy(rendered["default"])
    main = next(d for d in kube.by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "sam3-sam3-serve")
    del main["spec"]["ingress"][1]["from"][0]["podSelector"]  # every pod of the operator's namespace
    with pytest.raises(AssertionError, match="dashboard peers"):
        checks.check_default_lockdown(docs, rs, instance="sam3", model_groups={"gpu"})


def test_network_policies_can_be_turned_off(helm_template):
    docs = _render(helm_template, "networkPolicy.enabled=false", "podDisruptionBudget.enabled=false")
    assert not kube.by_kind(docs, "NetworkPolicy") and not kube.by_kind(docs, "PodDisruptionBudget")


# ------------------------------------------------------------------------------------------- PodDisruptionBudgets


def test_one_pdb_per_group(rendered):
    rs = kube.one(rendered["default"], "RayService")
    specs = checks.check_pdbs(rendered["default"], rs)
    assert {g: s.get("maxUnavailable") for g, s in specs.items()} == {"head": 1, "cpu": 1, "gpu": 1}
    test_pod = kube.one(rendered["default"], "Pod")["metadata"]["labels"]
    assert not any(kube.selector_matches(p["spec"]["selector"], test_pod)
                   for p in kube.by_kind(rendered["default"], "PodDisruptionBudget"))

    rs = kube.one(rendered["ci"], "RayService")
    specs = checks.check_pdbs(rendered["ci"], rs)
    assert specs["head"]["maxUnavailable"] == 0
    assert specs["cpu"]["minAvailable"] == 1 and "maxUnavailable" not in specs["cpu"]
    assert specs["gpu"]["maxUnavailable"] == "50%"


def test_pdbs_follow_renamed_groups(helm_template):
    docs = _render(helm_template, "cpuWorkers.groupName=cpu-pool", "gpuWorkers.groupName=l4")
    rs = kube.one(docs, "RayService")
    assert set(checks.check_pdbs(docs, rs)) == {"head", "cpu-pool", "l4"}
    hub = _np(docs, "-egress-hub")["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert hub == ["l4"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (("podDisruptionBudget.gpuWorkers.maxUnavailable=null",), "podDisruptionBudget.gpuWorkers needs minAvailable or maxUnavailable"),
        (("cpuWorkers.groupName=headgroup",), 'worker group names must not be "headgroup"'),
        (("gpuWorkers.groupName=cpu",), "cpuWorkers.groupName and gpuWorkers.groupName must differ"),
    ],
)
def test_chart_refuses_ambiguous_selectors(helm_template, sets, message):
    proc = helm_template(sets=sets)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "sets",
    [
        ("autoscaler.enabled=false", "cpuWorkers.automountServiceAccountToken=false"),
        ("huggingface.offline=true", "rayAuth.enabled=false", "head.serviceAccountName=ray-head"),
        ("app.concept.replica.num_gpus=0", "networkPolicy.serveFrom[0].namespaceSelector.matchLabels.team=web",
         "podDisruptionBudget.head.minAvailable=1"),
    ],
    ids=["no-tokens", "offline-no-ray-auth", "models-on-cpu"],
)
def test_security_variants_stay_valid(helm_template, crds, sets):
    docs = _render(helm_template, *sets)
    errors = {f"{d['kind']}/{d['metadata']['name']}": kube.validate_core(d) for d in docs if kube.is_core(d)}
    assert not any(errors.values()), errors
    rs = kube.one(docs, "RayService")
    assert kube.validate_custom_resource(rs) == [] and kube.kuberay_semantic_errors(rs) == []
    checks.check_pdbs(docs, rs)
