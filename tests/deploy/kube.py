"""Offline Kubernetes manifest validation for the deploy tests.

- Core objects: `kubernetes-validate --strict` schemas (unknown fields rejected) for KUBE_VERSION.
- RayService / RayCluster: the `openAPIV3Schema` of the KubeRay v1.7.0 CRDs in ../shared/kuberay, turned into
  a strict JSON schema: objects with `properties` reject unknown fields (the API server would silently prune
  them, which hides typos), `x-kubernetes-int-or-string` accepts both, `x-kubernetes-preserve-unknown-fields`
  keeps objects open, `nullable` allows null. CEL rules (`x-kubernetes-validations`) are not evaluated.
- A few of KubeRay's own webhook/controller checks (ray-operator/controllers/ray/utils/validation.go) that the
  CRD schema does not express.
"""

from __future__ import annotations

import copy
import functools
import os
import pathlib
import re
from typing import Any, Iterable

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.33.0"
CRD_DIR = pathlib.Path(os.environ.get("KUBERAY_CRD_DIR", REPO_ROOT.parent / "shared" / "kuberay"))
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
PROMETHEUS_KINDS = {"PodMonitor", "ServiceMonitor"}

_OBJECT_META_KEYS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences",
                     "uid", "generation", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "managedFields"}
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def crds_available() -> bool:
    return all((CRD_DIR / f).is_file() for f in CRD_FILES.values())


def strict_schema(node: Any) -> Any:
    """CRD openAPIV3Schema -> JSON schema with unknown-field rejection and k8s extensions mapped."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.lru_cache(maxsize=None)
def _crd_validator(kind: str):
    import jsonschema

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB each
    doc = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
    version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1")
    schema = strict_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # Top-level metadata is validated as ObjectMeta by the API server, not by the CRD schema.
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _metadata_errors(obj: dict) -> list[str]:
    meta = obj.get("metadata") or {}
    errs = [f"metadata.{k}: unknown ObjectMeta field" for k in meta if k not in _OBJECT_META_KEYS]
    for section in ("labels", "annotations"):
        for k, v in (meta.get(section) or {}).items():
            if not isinstance(v, str):
                errs.append(f"metadata.{section}.{k}: value {v!r} is not a string")
    if not meta.get("name"):
        errs.append("metadata.name is required")
    return errs


def validate_custom_resource(obj: dict) -> list[str]:
    """Errors of a RayService/RayCluster against the KubeRay v1.7.0 CRD (strict). Empty list = valid."""
    kind = obj.get("kind")
    if kind not in CRD_FILES:
        raise ValueError(f"no CRD for kind {kind!r}")
    if obj.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {obj.get('apiVersion')!r} is not ray.io/v1"]
    errs = _metadata_errors(obj)
    for e in sorted(_crd_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path)
        errs.append(f"{path or '<root>'}: {e.message}")
    return errs


def embedded_raycluster(rayservice: dict) -> dict:
    """The RayService's rayClusterConfig as the RayCluster KubeRay creates from it."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": f"{rayservice['metadata']['name']}-abcde", "namespace": "default"},
        "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"]),
    }


def kuberay_semantic_errors(rayservice: dict) -> list[str]:
    """A subset of KubeRay's Go validation (validation.go) the CRD schema cannot express."""
    errs = []
    name = rayservice["metadata"]["name"]
    if len(name) > 47:
        errs.append(f"RayService name {name!r} longer than 47 characters")
    if not _DNS1035.match(name):
        errs.append(f"RayService name {name!r} is not a DNS-1035 label")
    spec = rayservice["spec"]
    upgrade = (spec.get("upgradeStrategy") or {}).get("type")
    if upgrade not in (None, "NewCluster", "NewClusterWithIncrementalUpgrade", "None"):
        errs.append(f"upgradeStrategy.type {upgrade!r} invalid")
    cluster = spec["rayClusterConfig"]
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    v2 = ((cluster.get("autoscalerOptions") or {}).get("version")) == "v2"
    if upgrade == "NewClusterWithIncrementalUpgrade" and not autoscaling:
        errs.append("NewClusterWithIncrementalUpgrade needs enableInTreeAutoscaling")
    auth = cluster.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = tuple(int(x) for x in re.findall(r"\d+", str(cluster.get("rayVersion", "")))[:3])
        if version < (2, 52, 0):
            errs.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got {cluster.get('rayVersion')!r}")
    if auth.get("enableK8sTokenAuth"):
        errs.append("authOptions.enableK8sTokenAuth is not supported for RayService")
    if auth.get("enableK8sTokenAuth") and auth.get("mode") != "token":
        errs.append("authOptions.enableK8sTokenAuth needs mode token")
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    names = [n for n, _ in groups[1:]]
    if len(names) != len(set(names)):
        errs.append(f"duplicate worker group names {names}")
    for gname, g in groups:
        params = g.get("rayStartParams") or {}
        if "labels" in params:
            errs.append(f"{gname}: rayStartParams['labels'] not supported")
        if g.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errs.append(f"{gname}: resources set in both rayStartParams and Resources")
        containers = g["template"]["spec"].get("containers") or []
        if not containers:
            errs.append(f"{gname}: no containers")
        restart = g["template"]["spec"].get("restartPolicy")
        if v2 and restart not in (None, "Never"):
            errs.append(f"{gname}: restartPolicy must be Never/unset with autoscaler v2")
        if gname != "head":
            lo, hi = g.get("minReplicas"), g.get("maxReplicas")
            if lo is not None and hi is not None and lo > hi:
                errs.append(f"{gname}: minReplicas {lo} > maxReplicas {hi}")
            if g.get("idleTimeoutSeconds") is not None and not (autoscaling and v2):
                errs.append(f"{gname}: idleTimeoutSeconds needs autoscaler v2")
    return errs


def validate_core(obj: dict) -> list[str]:
    """kubernetes-validate --strict for a core object. Empty list = valid."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}"]
    return []


def is_core(obj: dict) -> bool:
    return obj.get("kind") not in set(CRD_FILES) | PROMETHEUS_KINDS


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def by_kind(docs: Iterable[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Iterable[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_templates(rayservice: dict) -> dict[str, dict]:
    """{"head": template, "<groupName>": template, ...}"""
    cluster = rayservice["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    for g in cluster.get("workerGroupSpecs", []):
        out[g["groupName"]] = g["template"]
    return out


def worker_group(rayservice: dict, name: str) -> dict:
    groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])}
    assert name in groups, f"no worker group {name!r} in {sorted(groups)}"
    return groups[name]


# ------------------------------------------------------------------------------------------- what KubeRay adds

HEAD_GROUP_LABEL = "headgroup"  # KubeRay's ray.io/group value on the head pod (utils.RayNodeHeadGroupLabelValue)
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def kuberay_pod_labels(rayservice: dict, group: str, cluster_suffix: str = "abcde") -> dict[str, str]:
    """Labels of a pod KubeRay creates for `group` ("head" or a worker group name): its labelPod() defaults,
    overridden by the template's labels except ray.io/node-type, ray.io/group and ray.io/cluster."""
    template = pod_templates(rayservice)[group]
    cluster = f"{rayservice['metadata']['name']}-{cluster_suffix}"
    node_type = "head" if group == "head" else "worker"
    fixed = {
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": HEAD_GROUP_LABEL if group == "head" else group,
    }
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    labels.update((template.get("metadata") or {}).get("labels") or {})
    labels.update(fixed)
    return labels


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_containers(rayservice: dict, group: str) -> dict[str, dict]:
    """Every container of a group's pods as KubeRay runs them: the template's containers and init containers,
    plus, on the head with in-tree autoscaling, the autoscaler sidecar built from autoscalerOptions (its env,
    envFrom and volumeMounts; KubeRay adds only non-secret env of its own besides the Ray auth token)."""
    spec = pod_templates(rayservice)[group]["spec"]
    out = {f"container:{c['name']}": c for c in spec.get("containers", [])}
    out.update({f"init:{c['name']}": c for c in spec.get("initContainers", [])})
    cluster = rayservice["spec"]["rayClusterConfig"]
    if group == "head" and cluster.get("enableInTreeAutoscaling"):
        opts = cluster.get("autoscalerOptions") or {}
        out["container:autoscaler"] = {
            "name": "autoscaler",
            "env": opts.get("env") or [],
            "envFrom": opts.get("envFrom") or [],
            "volumeMounts": opts.get("volumeMounts") or [],
        }
    return out
