"""`sam3-serve` command line. Subcommands:

  sam3-serve run [--model-id ID_OR_DIR] [--storage-uri URI] [--config serve_config.yaml] [--host H] [--port P]
                 [--pending-timeout SECONDS]
      `serve run` on the config file with the model id / storage / HTTP address overridden (local development),
      run in this process; replicas Ray cannot place end it after --pending-timeout (exit 2, with what they
      need vs what the cluster has), a failed deployment at once (exit 1). A model that cannot be loaded (no
      Hub, gated repo without HF_TOKEN, unknown id, not a SAM 3 checkpoint, transformers too old) or storage
      that cannot be written at start ends it with ONE line, its cause and the fix (exit 1), not the
      tracebacks; storage found unusable once the service runs is printed as a warning (it keeps serving, 503s
      where storage is needed). Ctrl-C stops it (exit 0).

  sam3-serve cluster-status [-n NAMESPACE] [--name RAYSERVICE] [--kubeconfig PATH] [--dashboard-url URL]
      Print the deployment state as JSON; exit 0 when ready, 1 otherwise.

  sam3-serve hash-key [--key KEY | --generate]
      The SHA-256 (hex) of an API key, for auth.keys[].key_sha256: the key is read from stdin (its first line;
      surrounding whitespace is not part of it) or --key. --generate makes a new random key and prints it on a line
      `key: ...` and its hash on `key_sha256: ...` (give the key to the client, configure only the hash).

Add a subcommand: write `_cmd_x(args) -> int` and register it in `build_parser` with
`sub.add_parser(...).set_defaults(func=_cmd_x)`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _cmd_cluster_status(args: argparse.Namespace) -> int:
    from serve_app.cluster.client import get_cluster_status

    status = get_cluster_status(
        namespace=args.namespace,
        name=args.name,
        kubeconfig=args.kubeconfig,
        dashboard_url=args.dashboard_url,
    )
    print(status.model_dump_json(indent=2))
    return 0 if status.state == "ready" else 1


def hash_key(key: str) -> str:
    """The auth.keys[].key_sha256 of `key`: SHA-256 of its UTF-8 bytes, lowercase hex (what the ingress compares)."""
    import hashlib

    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _cmd_hash_key(args: argparse.Namespace) -> int:
    import secrets

    if args.generate:
        key = secrets.token_urlsafe(32)
        print(f"key: {key}")
        print(f"key_sha256: {hash_key(key)}")
        return 0
    if args.key is not None:
        key = args.key
    elif sys.stdin.isatty():  # typed by hand: not echoed
        import getpass

        key = getpass.getpass("API key: ")
    else:
        key = sys.stdin.readline()
    key = key.strip()  # surrounding whitespace is never part of a key (the ingress strips it from headers too)
    if not key:
        print("sam3-serve hash-key: no key given (stdin was empty); pass one on stdin or with --key, or use "
              "--generate", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    import yaml

    config = yaml.safe_load(open(args.config))
    http = config.setdefault("http_options", {})
    http.update({k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    for app in config["applications"]:
        app_args = app.setdefault("args", {})
        if args.model_id:
            app_args.setdefault("model", {})["model_id"] = args.model_id
        storage = app_args.setdefault("storage", {})
        if args.storage_uri:
            storage["uri"] = args.storage_uri
        if args.port is not None:  # file:// presigned URLs point at this service's own address
            host = http.get("host", "127.0.0.1")
            storage["public_base_url"] = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{args.port}"
    fd, path = tempfile.mkstemp(prefix="sam3-serve-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"serve run {path}  (model_id={args.model_id or 'from config'})", flush=True)
    pending_timeout = args.pending_timeout if args.pending_timeout > 0 else None
    return _serve_run(config, pending_timeout)


def _serve_run(config: dict, pending_timeout_s: float | None) -> int:
    """What `serve run CONFIG` does (Ray, Serve with the config's HTTP/proxy options, the config's
    applications deployed by the controller), but the wait for the applications is bounded: replicas that
    Ray cannot place for `pending_timeout_s` end the command (exit 2) with `replicas pending: X needs 1 GPU,
    cluster has 0`; DEPLOY_FAILED ends it with exit 1. Then it serves until Ctrl-C (exit 0), like `serve run`."""
    import time

    import ray
    from ray import serve
    from ray.serve._private import api as serve_private
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    from serve_app.cluster.local import DeployFailed, NotRunning, quiet_known_tracebacks, wait_running

    schema = ServeDeploySchema.model_validate(config)
    if "." not in sys.path:  # as `serve run` (--app-dir .): import paths resolve from the working directory
        sys.path.insert(0, ".")
    if not ray.is_initialized():
        ray.init(namespace=SERVE_NAMESPACE)  # RAY_ADDRESS joins a running cluster, else a local one starts
    quiet_known_tracebacks()  # a known startup failure: its one line, not the pages of traceback around it
    try:
        client = serve_private.serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
            grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
            controller_options=schema.controller_options,
        )
        client.deploy_apps(schema, _blocking=False)
        print("Submitted deploy config; waiting for the applications"
              + (f" (replicas pending for {pending_timeout_s:g} s end the run)" if pending_timeout_s else ""),
              flush=True)
        for app in schema.applications:
            wait_running(app.name, pending_timeout_s=pending_timeout_s,
                         on_pending=lambda msg: print(msg, file=sys.stderr, flush=True))
        http = schema.http_options
        print(f"ready: http://{http.host}:{http.port}  (Ctrl-C stops)", flush=True)
        warning = _storage_warning(http.host, http.port)
        if warning:
            print(f"sam3-serve run: warning: {warning}", file=sys.stderr, flush=True)
        while True:
            time.sleep(10)
    except KeyboardInterrupt:
        print("Got KeyboardInterrupt, shutting down...", flush=True)
        return 0
    except NotRunning as exc:
        if isinstance(exc, DeployFailed) and exc.lines:  # known causes: the line(s) with cause and fix, as logged
            print("\n".join(exc.lines), file=sys.stderr, flush=True)
        else:
            print(f"sam3-serve run: {exc}", file=sys.stderr, flush=True)
        return 1 if isinstance(exc, DeployFailed) else 2
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _storage_warning(host: str, port: int, wait_s: float = 15.0) -> str:
    """The `storage` reason of GET /readyz on this service (its one line with cause and fix) when a test write
    to the storage fails, else "" (storage works, or no answer within `wait_s`)."""
    import json
    import time
    import urllib.error
    import urllib.request

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}/readyz"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # /readyz may wait ~5 s for storage
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:  # 503: models not ready; the body still says how storage is
            body = json.loads(err.read() or b"{}")
        except (OSError, ValueError):  # the proxy not routing yet
            body = {}
        storage = body.get("storage") or {}
        if storage.get("state") == "failed":
            return str(storage.get("reason", ""))
        if storage.get("state") == "ok":
            return ""
        time.sleep(1.0)
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-serve", description="sam3-serve tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="serve run serve_config.yaml with the model id / address overridden.")
    r.add_argument("--model-id", help="Hub id or local checkpoint directory (default: the config's).")
    r.add_argument("--storage-uri", help="file:///abs/dir or s3://bucket/prefix (default: the config's).")
    r.add_argument("--config", default="serve_config.yaml", help="Ray Serve config file.")
    r.add_argument("--host", help="HTTP host (default: the config's).")
    r.add_argument("--port", type=int, help="HTTP port (default: the config's).")
    r.add_argument("--pending-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="Exit (status 2) with 'replicas pending: X needs 1 GPU, cluster has 0' when replicas "
                   "cannot be placed for this long; 0 waits forever (default: 120). A replica that is placed and "
                   "loading its model is not pending.")
    r.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "cluster-status",
        help="State of the Kubernetes deployment (warming_up|ready|draining|off|failed) as JSON.",
        description="Read the RayService, its RayClusters and pods and print the deployment state as JSON. "
        "Uses the in-cluster service account, else the kubeconfig. Exit code 0 when ready, 1 otherwise.",
    )
    p.add_argument("-n", "--namespace", help="Namespace (default: $POD_NAMESPACE, then the kubeconfig context's).")
    p.add_argument(
        "--name",
        help="RayService name (default: $SAM3_RAYSERVICE_NAME, else the only sam3-serve RayService in the namespace).",
    )
    p.add_argument("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config).")
    p.add_argument(
        "--dashboard-url",
        help="Ray dashboard URL for Serve replica counts, e.g. http://127.0.0.1:8265 after "
        "`kubectl port-forward svc/<name>-head-svc 8265` (default: only in-cluster).",
    )
    p.set_defaults(func=_cmd_cluster_status)

    h = sub.add_parser(
        "hash-key",
        help="SHA-256 of an API key for auth.keys (or --generate a new key and its hash).",
        description="Print the SHA-256 (64 lowercase hex digits) of an API key, the value of auth.keys[].key_sha256. "
        "The key is read from stdin (first line) unless --key is given; --generate prints a new random key "
        "(`key: ...`) and its hash (`key_sha256: ...`). Only the hash goes into the config or the Secret.",
    )
    which = h.add_mutually_exclusive_group()
    which.add_argument("--key", help="The key (default: read from stdin; prefer stdin: arguments end up in shell "
                       "history and process lists).")
    which.add_argument("--generate", action="store_true",
                       help="Make a new random key (secrets.token_urlsafe(32)) and print it with its hash.")
    h.set_defaults(func=_cmd_hash_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
