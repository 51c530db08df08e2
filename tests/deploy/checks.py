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
        assert pod_spec.get("serviceAccountName"), where
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
