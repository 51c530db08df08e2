"""Content checks shared by the Helm chart and k8s/ manifest tests.

Each function returns the parsed thing it checked (so tests can assert more) and raises AssertionError with
the offending path otherwise.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from tests.deploy import kube

RAY_CONTAINER_ENV = {"POD_NAMESPACE", "SAM3_RAYSERVICE_NAME", "HF_HOME"}


def _model_of(annotation: Any):
    """The pydantic model inside X, Optional[X] or list[X], else None."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found[0] is not None:
            return found[0], found[1] or typing.get_origin(annotation) is list
    return None, False


def unknown_serve_keys(model: Any, data: Any, path: str = "") -> list[str]:
    """Keys Ray Serve's schema would silently ignore (it does not forbid extras). `args` is AppConfig's job."""
    if not isinstance(data, dict):
        return []
    errs = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        field = model.model_fields.get(key)
        if field is None:
            errs.append(f"{where}: not a {model.__name__} field")
            continue
        if key in ("args", "runtime_env"):
            continue
        sub, is_list = _model_of(field.annotation)
        if sub is None:
            continue
        items = value if (is_list and isinstance(value, list)) else [value]
        for i, item in enumerate(items):
            errs += unknown_serve_keys(sub, item, f"{where}[{i}]" if is_list else where)
    return errs


def check_serve_config(text: str) -> dict:
    """serveConfigV2: valid Ray Serve config, no unknown keys, the sam3 app whose args validate as AppConfig."""
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import AppConfig

    cfg = yaml.safe_load(text)
    assert isinstance(cfg, dict), f"serveConfigV2 is not a mapping: {text[:200]!r}"
    ServeDeploySchema.model_validate(cfg)
    errs = unknown_serve_keys(ServeDeploySchema, cfg)
    assert not errs, f"serveConfigV2 has keys Ray Serve ignores: {errs}"
    assert len(cfg["applications"]) == 1, cfg["applications"]
    app = cfg["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app"
    assert "runtime_env" not in app, "production installs nothing at runtime: no runtime_env"
    assert cfg["http_options"]["port"] == 8000 and cfg["http_options"]["host"] == "0.0.0.0", cfg["http_options"]
    AppConfig.model_validate(app["args"])
    return cfg


def _env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def check_rayservice(rs: dict, *, gpu_group: str | None = "gpu", gpus_per_pod: int = 1) -> dict:
    """Invariants of every sam3-serve RayService (chart or plain manifests). Returns the serve config."""
    spec = rs["spec"]
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", head["rayStartParams"]
    assert spec.get("excludeHeadPodFromServeSvc") is True
    assert cluster.get("enableInTreeAutoscaling") is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] >= 0
    assert spec["upgradeStrategy"]["type"] in ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
    ports = {p["name"] for p in spec["serveService"]["spec"]["ports"]}
    assert "serve" in ports, "KubeRay only routes the serve Service through a port named 'serve'"

    for name, template in kube.pod_templates(rs).items():
        pod_spec = template["spec"]
        ray = pod_spec["containers"][0]
        where = f"{name} pod"
        assert RAY_CONTAINER_ENV <= _env_names(ray), f"{where}: env {sorted(_env_names(ray))}"
        env = {e["name"]: e for e in ray["env"]}
        assert env["SAM3_RAYSERVICE_NAME"]["value"] == rs["metadata"]["name"], where
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", where
        psc, csc = pod_spec.get("securityContext", {}), ray.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser", 1000) != 0, f"{where}: {psc}"
        assert csc.get("allowPrivilegeEscalation") is False, f"{where}: {csc}"
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: {csc}"
        assert csc.get("privileged") in (None, False), where
        mounts = {m["mountPath"] for m in ray.get("volumeMounts", [])}
        if csc.get("readOnlyRootFilesystem"):
            assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp (Ray session dir)"
            assert "/home/ray/.cache" in mounts, f"{where}: read-only root needs writable caches"
        if name == "head":
            # KubeRay binds the autoscaler's Role (patch pods, the RayCluster) to the head's ServiceAccount:
            # the head must not share the workers' account.
            workers = {t["spec"].get("serviceAccountName") for n, t in kube.pod_templates(rs).items() if n != "head"}
            assert pod_spec.get("serviceAccountName") not in workers, f"{where}: shares the workers' ServiceAccount"
        else:
            assert pod_spec.get("serviceAccountName"), where
        assert isinstance(pod_spec.get("automountServiceAccountToken"), bool), f"{where}: automount must be explicit"
        labels = template["metadata"]["labels"]
        assert not any(k in labels for k in ("helm.sh/chart", "app.kubernetes.io/version")), (
            f"{where}: version labels in the pod template make every chart bump a new RayCluster"
        )
        gpus = {
            section: (ray.get("resources", {}).get(section) or {}).get("nvidia.com/gpu")
            for section in ("requests", "limits")
        }
        if name == gpu_group:
            assert gpus == {"requests": gpus_per_pod, "limits": gpus_per_pod}, f"{where}: {gpus}"
            assert "/home/ray/.cache/huggingface" in mounts, f"{where}: HF cache mount"
        else:
            assert gpus == {"requests": None, "limits": None}, f"{where} must not request GPUs: {gpus}"

    cfg = check_serve_config(spec["serveConfigV2"])
    if gpu_group:
        group = kube.worker_group(rs, gpu_group)
        assert group["minReplicas"] >= 0 and group["maxReplicas"] >= max(1, group["minReplicas"])
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), tolerations
        concept = cfg["applications"][0]["args"]["concept"]["replica"]
        assert concept["num_gpus"] == gpus_per_pod, "num_gpus must be explicit on Kubernetes"
        click = cfg["applications"][0]["args"].get("click", {}).get("replica", {})
        assert click.get("num_gpus") == gpus_per_pod, "click.replica.num_gpus must be explicit on Kubernetes"
        actor = cfg["applications"][0]["args"].get("video", {}).get("actor", {})
        share = actor.get("num_gpus")
        assert isinstance(share, (int, float)) and 0 < share <= gpus_per_pod, (
            f"video.actor.num_gpus must be an explicit GPU share on Kubernetes, got {share!r}")
        assert "replicas" not in group, "the autoscaler owns `replicas`; re-applying it would fight the autoscaler"
    return cfg


# ------------------------------------------------------------------------------------------- cluster security

SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"}


def secret_uses(rs: dict) -> dict[str, dict[str, set[str]]]:
    """{group: {container: {...}}} for every container KubeRay runs from the RayService (head, each worker
    group; containers, init containers, the autoscaler sidecar): `ENV=secret/key` for secretKeyRef env,
    `envFrom=secret` and `mount=secret` for Secrets reached through envFrom or a mounted secret/projected
    volume. Containers that reach no Secret map to an empty set."""
    out: dict[str, dict[str, set[str]]] = {}
    for group, template in kube.pod_templates(rs).items():
        volumes = {}
        for v in template["spec"].get("volumes", []):
            names = []
            if "secret" in v:
                names.append(v["secret"]["secretName"])
            for src in (v.get("projected") or {}).get("sources", []):
                if "secret" in src:
                    names.append(src["secret"]["name"])
            volumes[v["name"]] = names
        out[group] = {}
        for cname, c in kube.pod_containers(rs, group).items():
            uses = set()
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    uses.add(f"{e['name']}={ref['name']}/{ref['key']}")
            for ef in c.get("envFrom") or []:
                if "secretRef" in ef:
                    uses.add(f"envFrom={ef['secretRef']['name']}")
            for m in c.get("volumeMounts") or []:
                uses.update(f"mount={s}" for s in volumes.get(m["name"], []))
            out[group][cname] = uses
    return out


def service_account_tokens(rs: dict) -> dict[str, list[str]]:
    """{group: containers that get a service-account token}: all of them when the pod template sets
    automountServiceAccountToken true, else those mounting a projected serviceAccountToken volume. The field
    must be explicit on every pod template (otherwise the ServiceAccount's default, usually true, applies)."""
    out = {}
    for group, template in kube.pod_templates(rs).items():
        spec = template["spec"]
        automount = spec.get("automountServiceAccountToken")
        assert isinstance(automount, bool), f"{group}: automountServiceAccountToken must be explicit, got {automount!r}"
        token_volumes = {
            v["name"] for v in spec.get("volumes", [])
            if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", []))
        }
        containers = kube.pod_containers(rs, group)
        if automount:
            out[group] = sorted(containers)
            continue
        with_token = []
        for cname, c in containers.items():
            mounts = c.get("volumeMounts") or []
            if any(m["name"] in token_volumes for m in mounts):
                with_token.append(cname)
            else:
                assert not any(m["mountPath"].rstrip("/") == kube.SA_TOKEN_DIR for m in mounts), (group, cname, mounts)
        out[group] = sorted(with_token)
    return out


def _selected(policies: list[dict], labels: dict[str, str], direction: str) -> list[dict]:
    return [p for p in policies
            if direction in p["spec"].get("policyTypes", []) and kube.selector_matches(p["spec"]["podSelector"], labels)]


def policy_rules(policies: list[dict], labels: dict[str, str], direction: str) -> list[tuple[list | None, list | None]]:
    """The (peers, ports) rules that apply to a pod with `labels` in `direction` ("Ingress"/"Egress"), from
    every NetworkPolicy selecting it; None = any peer / any port. An empty list with a selecting policy = deny."""
    key, peer_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    rules = []
    for p in _selected(policies, labels, direction):
        for rule in p["spec"].get(key) or []:
            rules.append((rule.get(peer_key), rule.get("ports")))
    return rules


def is_isolated(policies: list[dict], labels: dict[str, str], direction: str) -> bool:
    return bool(_selected(policies, labels, direction))


def _port_matches(entry: dict, port: int, protocol: str) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    p = entry.get("port")
    if p is None:
        return True
    if not isinstance(p, int):
        return False
    return p == port or (entry.get("endPort") is not None and p <= port <= entry["endPort"])


def peers_on(rules: list[tuple[list | None, list | None]], port: int, protocol: str = "TCP") -> list[dict | None]:
    """Peers that rules admit on `port`; None in the result = any peer."""
    out: list[dict | None] = []
    for peers, ports in rules:
        if ports is None or any(_port_matches(e, port, protocol) for e in ports):
            out.extend(peers if peers else [None])
    return out


def peer_selects_pod(peer: dict | None, labels: dict[str, str], same_namespace: bool = True) -> bool:
    """Whether a NetworkPolicyPeer admits a pod with `labels` in the policy's own namespace."""
    if peer is None:
        return True
    if "ipBlock" in peer or "namespaceSelector" in peer:
        return False  # ipBlock: pod IPs are not meant to be matched by CIDR; namespaceSelector: other namespaces only in our tests
    return same_namespace and kube.selector_matches(peer.get("podSelector"), labels)


# The NetworkPolicy peers and ports of the chart's default values (and of k8s/, which mirrors them).
PRIVATE_AND_LINK_LOCAL = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"]
PUBLIC_INTERNET = [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_AND_LINK_LOCAL}}]
DEFAULT_OPERATOR_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}},
}
KUBE_DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
MONITORING_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
TCP_443 = [{"port": 443, "protocol": "TCP"}]
KUBE_API_PORTS = [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]


def ray_pods_peer(instance: str) -> dict:
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sam3-serve", "app.kubernetes.io/instance": instance,
                                            "ray.io/is-ray-node": "yes"}}}


def check_default_lockdown(docs: list[dict], rs: dict, *, instance: str, model_groups: set[str],
                           extra_pods: dict[str, dict] | None = None) -> dict[str, dict]:
    """NetworkPolicies of the default configuration: every pod isolated both ways by a default-deny policy,
    then DNS for all, the RayCluster's own pods to each other, S3 from the workers, the Kubernetes API from
    the head and the CPU workers (the pods holding a token), the Hub from `model_groups`, the dashboard
    only from the Ray pods and the KubeRay operator pods, metrics only from `monitoring`. Returns
    {pod: labels} of the pods it checked (`extra_pods`: more pods of the release, e.g. the helm test pod,
    which must be isolated and may only reach DNS and the serve port)."""
    nps = kube.by_kind(docs, "NetworkPolicy")
    ray = ray_pods_peer(instance)
    pods = {g: kube.kuberay_pod_labels(rs, g) for g in kube.pod_templates(rs)}
    all_pods = {**pods, **(extra_pods or {})}

    deny = [p for p in nps if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert len(deny) == 1, [p["metadata"]["name"] for p in nps]
    for name, labels in all_pods.items():
        assert kube.selector_matches(deny[0]["spec"]["podSelector"], labels), f"default deny misses the {name} pod"
        egress = policy_rules(nps, labels, "Egress")
        assert all(to for to, _ in egress), f"{name}: an egress rule allows every destination: {egress}"
        assert all(ports for to, ports in egress if any("ipBlock" in p for p in to)), f"{name}: ipBlock without ports"
        for proto in ("UDP", "TCP"):
            assert KUBE_DNS_PEER in peers_on(egress, 53, proto), f"{name}: no DNS over {proto}"

    for name, labels in pods.items():
        egress, ingress = policy_rules(nps, labels, "Egress"), policy_rules(nps, labels, "Ingress")
        assert ([ray], None) in egress and ([ray], None) in ingress, f"{name}: Ray pods must reach each other"
        assert ((PUBLIC_INTERNET, TCP_443) in egress) == (name != "head"), f"{name}: S3 egress"
        api = ([{"ipBlock": {"cidr": "0.0.0.0/0"}}], KUBE_API_PORTS)
        assert (api in egress) == (name in ("head", "cpu")), f"{name}: Kubernetes API egress"
        hub = [r for r in egress if r == (PUBLIC_INTERNET, TCP_443)]
        assert len(hub) == (name != "head") + (name in model_groups), f"{name}: S3 + Hub egress rules {hub}"
        # on 443: S3 / the Hub (public addresses only: no IMDS, no private services), the API server, the Ray pods
        allowed_443 = [ray, PUBLIC_INTERNET[0]] + ([api[0][0]] if name in ("head", "cpu") else [])
        assert all(p in allowed_443 for p in peers_on(egress, 443)), f"{name}: {peers_on(egress, 443)}"
        assert peers_on(egress, 80) == [ray], f"{name}: plain HTTP (e.g. instance metadata) must be closed"
        # the dashboard: only the Ray pods and the operator pods (namespace AND pod labels in one peer)
        assert peers_on(ingress, 8265) == [ray, DEFAULT_OPERATOR_PEER], f"{name}: dashboard peers"
        assert peers_on(ingress, 8080) == [ray, MONITORING_PEER], f"{name}: metrics peers"
        assert None in peers_on(ingress, 8000), f"{name}: the serve port is open to clients by default"
        assert peers_on(ingress, 6379) == [ray], f"{name}: GCS only from the Ray pods"
    for name, labels in (extra_pods or {}).items():
        egress = policy_rules(nps, labels, "Egress")
        assert policy_rules(nps, labels, "Ingress") == [], f"{name}: no ingress"
        assert peers_on(egress, 8000) == [ray] and peers_on(egress, 443) == [], f"{name}: {egress}"
    return all_pods


def check_pdbs(docs: list[dict], rs: dict) -> dict[str, dict]:
    """One PodDisruptionBudget per Ray group, selecting exactly that group's pods (as KubeRay labels them).
    Returns {group: PDB spec}."""
    pdbs = kube.by_kind(docs, "PodDisruptionBudget")
    groups = list(kube.pod_templates(rs))
    assert len(pdbs) == len(groups), [p["metadata"]["name"] for p in pdbs]
    out = {}
    for group in groups:
        labels = kube.kuberay_pod_labels(rs, group)
        other = kube.kuberay_pod_labels(rs, group, cluster_suffix="fghij")  # the next cluster of an upgrade
        matching = [p for p in pdbs if kube.selector_matches(p["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{group}: {len(matching)} PDBs select its pods"
        assert kube.selector_matches(matching[0]["spec"]["selector"], other)
        spec = matching[0]["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), spec
        assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", spec
        out[group] = spec
    assert len({id(s) for s in out.values()}) == len(groups), "a PDB spans several groups"
    return out
