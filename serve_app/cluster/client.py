"""Read the deployment's RayService, RayClusters and pods from the Kubernetes API; never raise.

Configuration, in order: in-cluster (the pod's service account), else a kubeconfig (explicit path,
$KUBECONFIG or ~/.kube/config) when `use_kubeconfig` is true, else ClusterStatus(state="local").
Namespace: argument, $POD_NAMESPACE, the service-account namespace file, the kubeconfig context's
namespace, "default". RayService name: argument, $SAM3_RAYSERVICE_NAME, else the only RayService labelled
app.kubernetes.io/name=sam3-serve in the namespace.

Every failure (RBAC, network, missing objects, bad kubeconfig) becomes state "unknown" with a reason. The
`kubernetes` package is imported only when a status is requested.

Needed RBAC (the Helm chart grants exactly this): get/list on rayservices.ray.io, rayclusters.ray.io and
pods in the namespace. Replica counts come from the Ray dashboard's Serve API on the RayService head
Service (<name>-head-svc:8265) when it is reachable from here (in-cluster), else they are null.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import urllib.request
from typing import TYPE_CHECKING, Any, cast

from serve_app.cluster.status import ClusterStatus, compute_status

if TYPE_CHECKING:
    import urllib3

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
APP_LABEL = "app.kubernetes.io/name=sam3-serve"
API_TIMEOUT_S = 5.0
DASHBOARD_TIMEOUT_S = 2.0


class _NoKubernetes(Exception):
    """No in-cluster config and no usable kubeconfig."""


def _load_config(kubeconfig: str | None, use_kubeconfig: bool) -> tuple[Any, str | None, str]:
    """Return (ApiClient, kubeconfig context namespace or None, how) or raise _NoKubernetes."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if not kubeconfig:
        try:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg), None, "in-cluster"
        except ConfigException:
            pass
    if not (use_kubeconfig or kubeconfig):
        raise _NoKubernetes("not running in a Kubernetes pod")
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
        pathlib.Path.home() / ".kube" / "config"
    )
    if not pathlib.Path(path).is_file():
        where = "kubeconfig" if kubeconfig else "not running in a Kubernetes pod and no kubeconfig"
        raise _NoKubernetes(f"{where} at {path}" + (" does not exist" if kubeconfig else ""))
    try:
        cfg = client.Configuration()
        config.load_kube_config(config_file=path, client_configuration=cfg)
        _, active = config.list_kube_config_contexts(config_file=path)
        ns = ((active or {}).get("context") or {}).get("namespace")
        return client.ApiClient(cfg), ns, f"kubeconfig {path}"
    except ConfigException as exc:
        raise _NoKubernetes(f"kubeconfig {path} unusable: {exc}") from exc


def resolve_namespace(explicit: str | None = None, kube_context_ns: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        ns = SA_NAMESPACE_FILE.read_text().strip()
        if ns:
            return ns
    except OSError:
        pass
    return kube_context_ns or "default"


def _api_error(exc: Exception, what: str) -> str:
    status = getattr(exc, "status", None)
    if status == 403:
        return f"forbidden to read {what}: grant get/list on rayservices, rayclusters and pods (chart rbac.create)"
    if status == 404:
        return f"{what} not found"
    if status is not None:
        return f"Kubernetes API error {status} reading {what}: {getattr(exc, 'reason', '')}".strip()
    return f"cannot reach the Kubernetes API reading {what}: {type(exc).__name__}: {exc}"


def _fetch_serve_details(name: str, namespace: str, dashboard_url: str | None) -> dict | None:
    url = (dashboard_url or f"http://{name}-head-svc.{namespace}.svc:8265").rstrip("/")
    req = urllib.request.Request(f"{url}/api/serve/applications/", headers={"Accept": "application/json"})
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=DASHBOARD_TIMEOUT_S) as resp:  # noqa: S310 (fixed scheme)
            return json.loads(resp.read().decode())
    except Exception as exc:  # replica counts are optional
        log.debug("Serve details unavailable from %s: %s", url, exc)
        return None


def get_cluster_status(
    namespace: str | None = None,
    name: str | None = None,
    kubeconfig: str | None = None,
    *,
    use_kubeconfig: bool = True,
    dashboard_url: str | None = None,
    fetch_serve_details: bool | None = None,
) -> ClusterStatus:
    """Status of the sam3-serve RayService. Never raises; see the module docstring.

    `use_kubeconfig=False` (the HTTP endpoint) answers "local" outside a pod instead of reading whatever
    cluster the developer's kubeconfig points at. `fetch_serve_details` defaults to True in-cluster or
    when `dashboard_url` is given.
    """
    try:
        try:
            api_client, ctx_ns, how = _load_config(kubeconfig, use_kubeconfig)
        except _NoKubernetes as exc:
            if kubeconfig:  # asked for a specific cluster: failing to reach it is not "local"
                return ClusterStatus(state="unknown", reason=str(exc))
            return ClusterStatus(state="local", reason=f"{exc}; serving outside Kubernetes")
        except Exception as exc:  # kubernetes not installed, broken config...
            return ClusterStatus(state="unknown", reason=f"cannot configure the Kubernetes client: {exc}")
        ns = resolve_namespace(namespace, ctx_ns)
        with api_client:
            fetched = _fetch_objects(api_client, ns, name or os.environ.get("SAM3_RAYSERVICE_NAME"))
        if isinstance(fetched, ClusterStatus):
            return fetched
        rs, active, pending, pods = fetched
        details = None
        if fetch_serve_details is None:
            fetch_serve_details = how == "in-cluster" or dashboard_url is not None
        if fetch_serve_details:
            details = _fetch_serve_details(rs["metadata"]["name"], ns, dashboard_url)
        return compute_status(rs, active, pending, pods, details, namespace=ns)
    except Exception as exc:  # never let GET /v1/cluster 500
        log.exception("cluster status failed")
        return ClusterStatus(state="unknown", reason=f"cluster status failed: {type(exc).__name__}: {exc}")


_Obj = dict[str, Any]


def _json_body(body: object) -> _Obj:
    """CustomObjectsApi returns the decoded JSON body (a dict) but annotates its methods `-> object`."""
    return cast(_Obj, body)


def _fetch_objects(
    api_client: Any, ns: str, name: str | None
) -> tuple[_Obj, _Obj | None, _Obj | None, list[_Obj]] | ClusterStatus:
    """(RayService, active RayCluster, pending RayCluster, pods) or a ClusterStatus("unknown") on errors."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    if not name:
        try:
            listed = custom.list_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, ns, "rayservices", label_selector=APP_LABEL, _request_timeout=API_TIMEOUT_S
            )
            found: list[_Obj] = _json_body(listed).get("items", [])
        except Exception as exc:
            return ClusterStatus(state="unknown", reason=_api_error(exc, f"rayservices in {ns}"), namespace=ns)
        if len(found) != 1:
            found_names = ", ".join(sorted(i["metadata"]["name"] for i in found)) or "none"
            return ClusterStatus(
                state="unknown",
                reason=f"set SAM3_RAYSERVICE_NAME or --name: {len(found)} sam3-serve RayServices in {ns} ({found_names})",
                namespace=ns,
            )
        name = found[0]["metadata"]["name"]
    try:
        rs = _json_body(
            custom.get_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, ns, "rayservices", name, _request_timeout=API_TIMEOUT_S
            )
        )
    except Exception as exc:
        return ClusterStatus(
            state="unknown", reason=_api_error(exc, f"RayService {ns}/{name}"), namespace=ns, rayservice=name
        )

    st = rs.get("status") or {}
    names = {
        "active": (st.get("activeServiceStatus") or {}).get("rayClusterName"),
        "pending": (st.get("pendingServiceStatus") or {}).get("rayClusterName"),
    }
    clusters: dict[str, _Obj | None] = {}
    for role, cname in names.items():
        clusters[role] = None
        if not cname:
            continue
        try:
            clusters[role] = _json_body(
                custom.get_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, ns, "rayclusters", cname, _request_timeout=API_TIMEOUT_S
                )
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 404:  # a cluster being deleted may vanish: not an error
                return ClusterStatus(
                    state="unknown", reason=_api_error(exc, f"RayCluster {ns}/{cname}"), namespace=ns, rayservice=name
                )
    pods: list[_Obj] = []
    cluster_names = sorted({n for n in names.values() if n})
    if cluster_names:
        try:
            # Raw JSON: the same dicts `kubectl get -o json` shows, no typed round trip. With
            # _preload_content=False the client returns the urllib3 response, not the annotated V1PodList.
            resp = cast(
                "urllib3.HTTPResponse",
                core.list_namespaced_pod(
                    ns,
                    label_selector=f"ray.io/cluster in ({','.join(cluster_names)})",
                    _request_timeout=API_TIMEOUT_S,
                    _preload_content=False,
                ),
            )
            pods = json.loads(resp.data).get("items", [])
        except Exception as exc:
            return ClusterStatus(
                state="unknown", reason=_api_error(exc, f"pods in {ns}"), namespace=ns, rayservice=name
            )
    return rs, clusters["active"], clusters["pending"], pods
