"""Which Serve replicas wait for resources, and what they need vs what the Ray cluster has.

Pure functions over plain data, no Ray, no I/O: Serve's instance details (the JSON of Ray's
`ServeInstanceDetails`: the Serve controller's `get_serve_instance_details()`, or the dashboard's
`GET /api/serve/applications/`) plus the cluster's total / free resources (`ray.cluster_resources()`,
`ray.available_resources()`) and each alive node's total (`ray.nodes()[i]["Resources"]`).
`serve_app.cluster.local` reads those from the live Ray; `GET /readyz`, `sam3-serve run` and the
benchmarks (loadtest/bench_common.py) all report through `pending_message`, so every place says the same:

    replicas pending: ConceptSegmenter needs 1 GPU, cluster has 0

A replica is *pending* when Serve started it (state STARTING, UPDATING or RECOVERING) but Ray has not placed
its actor yet: no pid in the details (Serve fills pid/node_id only once the actor's worker runs). A replica
that is placed and still loading its model is not pending, however long that takes.

Per pending deployment, each resource of one replica (`required_resources`; 0s ignored) is compared with,
in order: the cluster's total (`needs 1 GPU, cluster has 0`: never placeable without a new node), the
largest node (`no node has that many`), what is free now (`cluster has 0 free of 2`). A replica that fits
everywhere is just not placed yet (`X not placed yet after 12 s`, e.g. its worker is starting). Ray
subtracts a lease from the free resources as soon as it grants it, before the worker runs, so a replica
whose worker is starting looks short of free resources: `min_age_s` hides pending replicas younger than
that unless they cannot fit the cluster at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

# Replica states in which Serve is trying to start (or restart) an actor.
STARTING_STATES = frozenset({"STARTING", "UPDATING", "RECOVERING"})
SETTLE_S = 10.0  # how long a fitting replica may wait for its worker before it counts as pending (see above)
_BYTES = frozenset({"memory", "object_store_memory"})


class PendingDeployment(BaseModel):
    """One deployment with replicas Ray has not placed, and why."""

    app: str
    deployment: str
    replicas: int = Field(description="Replicas waiting for a placement.")
    oldest_s: float = Field(description="Seconds the longest-waiting of them has waited.")
    needs: dict[str, float] = Field(description="Resources one replica needs (nonzero only).")
    placeable: bool = Field(description="False when one replica needs more than the cluster (or any node) has.")
    short: bool = Field(description="A resource one replica needs is missing or not free (False: everything it "
                                    "needs is free, its worker is just not up yet).")
    message: str = Field(description="`X needs 1 GPU, cluster has 0`: what one replica needs vs what there is.")


def _value(v: Any) -> str:
    """An enum (Serve's own details) or its string value (the REST JSON) as the plain string."""
    return str(getattr(v, "value", v))


def _num(x: float) -> str:
    if math.isclose(x, round(x), abs_tol=1e-9):
        return str(int(round(x)))
    return f"{x:.3g}"


def amount(resource: str, x: float) -> str:
    """`1 GPU`, `4 CPUs`, `2 GiB memory`, `0.5 accelerator_type:A10G`."""
    if resource in _BYTES:
        return f"{_num(x / 2**30)} GiB {resource.replace('_', ' ')}"
    if resource in ("CPU", "GPU", "TPU"):
        return f"{_num(x)} {resource}" + ("" if math.isclose(x, 1.0) else "s")
    return f"{_num(x)} {resource}"


def _has(resource: str, x: float) -> str:
    """What the cluster has of `resource`, in the unit of `amount` without repeating the resource name."""
    return _num(x / 2**30) + " GiB" if resource in _BYTES else _num(x)


def _shortfalls(needs: Mapping[str, float], total: Mapping[str, float], available: Mapping[str, float] | None,
                nodes: list[Mapping[str, float]] | None) -> tuple[list[str], bool]:
    """(`needs 1 GPU, cluster has 0`-style pieces for the resources that do not fit, placeable)."""
    pieces: list[str] = []
    placeable = True
    for res, need in needs.items():
        have = float(total.get(res, 0.0))
        largest = max((float(n.get(res, 0.0)) for n in nodes), default=0.0) if nodes else have
        if need > have + 1e-9:
            pieces.append(f"{amount(res, need)}, cluster has {_has(res, have)}")
            placeable = False
        elif need > largest + 1e-9:
            pieces.append(f"{amount(res, need)}, no node has that many (largest: {_has(res, largest)}, "
                          f"cluster: {_has(res, have)})")
            placeable = False
        elif available is not None and need > float(available.get(res, 0.0)) + 1e-9:
            pieces.append(f"{amount(res, need)}, cluster has {_has(res, float(available.get(res, 0.0)))} free "
                          f"of {_has(res, have)}")
    return pieces, placeable


def _free_note(needs: Mapping[str, float], total: Mapping[str, float], available: Mapping[str, float] | None) -> str:
    """`; cluster has 12 of 16 CPU free` for each resource needed, "" without `available`."""
    if available is None or not needs:
        return ""
    return "; cluster has " + ", ".join(
        f"{_has(r, float(available.get(r, 0.0)))} of {_has(r, float(total.get(r, 0.0)))} {r} free" for r in needs)


def find_pending(
    serve_details: Mapping[str, Any],
    total: Mapping[str, float],
    available: Mapping[str, float] | None = None,
    nodes: Iterable[Mapping[str, float]] | None = None,
    *,
    app_name: str | None = None,
    now: float | None = None,
    min_age_s: float = 0.0,
) -> list[PendingDeployment]:
    """Deployments (of `app_name`, or of every application) with replicas Ray has not placed; see the module
    docstring. `nodes`: each alive node's total resources (None: only the cluster total is checked)."""
    now = time.time() if now is None else now
    node_list = [n for n in nodes] if nodes is not None else None
    out: list[PendingDeployment] = []
    for aname, app in sorted((serve_details.get("applications") or {}).items()):
        if app_name is not None and aname != app_name:
            continue
        for dname, dep in sorted(((app or {}).get("deployments") or {}).items()):
            waiting = [r for r in dep.get("replicas") or []
                       if _value(r.get("state")) in STARTING_STATES and not r.get("pid")]
            if not waiting:
                continue
            ages = [max(0.0, now - float(r.get("start_time_s") or now)) for r in waiting]
            needs = {k: float(v) for k, v in (dep.get("required_resources") or {}).items() if v}
            pieces, placeable = _shortfalls(needs, total, available, node_list)
            if placeable and max(ages) < min_age_s:
                continue
            count = f" ({len(waiting)} replicas)" if len(waiting) > 1 else ""
            if pieces:
                message = f"{dname}{count} needs " + ", and ".join(pieces)
            else:
                message = (f"{dname}{count} not placed yet after {max(ages):.0f} s (needs "
                           f"{', '.join(amount(r, v) for r, v in needs.items()) or 'no resources'}"
                           + _free_note(needs, total, available) + ")")
            out.append(PendingDeployment(app=aname, deployment=dname, replicas=len(waiting), oldest_s=max(ages),
                                         needs=needs, placeable=placeable, short=bool(pieces), message=message))
    return out


def pending_message(pending: Iterable[PendingDeployment]) -> str:
    """`replicas pending: A needs 1 GPU, cluster has 0; B needs 4 CPUs, cluster has 2`, or "" when none.
    Deployments are named `app/deployment` when they come from more than one application."""
    items = list(pending)
    if not items:
        return ""
    several_apps = len({p.app for p in items}) > 1
    return "replicas pending: " + "; ".join((f"{p.app}/" if several_apps else "") + p.message for p in items)
