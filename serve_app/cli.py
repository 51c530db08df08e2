"""`sam3-serve` command line. Subcommands:

  sam3-serve cluster-status [-n NAMESPACE] [--name RAYSERVICE] [--kubeconfig PATH] [--dashboard-url URL]
      Print the deployment state as JSON; exit 0 when ready, 1 otherwise.

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-serve", description="sam3-serve tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
