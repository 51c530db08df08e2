"""The live Ray + Serve this process is connected to, seen through `serve_app.cluster.pending`: which replicas
wait for resources, and a bounded wait for an application to run.

Used by GET /readyz (in the ingress replica), `sam3-serve run` and the benchmarks (loadtest/bench_common.py).
Ray is imported inside the functions, so importing this module costs nothing.

A deployment whose constructor fails for a known reason (a StartupFailure of serve_app.errors: a model that
cannot be loaded, storage that cannot be written) has its one line (`sam3-serve: cannot load the model 'X'
[model_gated]: ... Fix: ...`) inside the traceback Serve keeps as the deployment's status message;
`wait_running` picks it out (`errors.startup_lines`) and `quiet_known_tracebacks` keeps the tracebacks around
it out of this process's copy of the workers' output.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from serve_app.cluster.pending import SETTLE_S, PendingDeployment, find_pending, pending_message
from serve_app.errors import RETRYABLE_STARTUP_CODES, startup_code, startup_lines


class NotRunning(RuntimeError):
    """An application did not reach RUNNING; `pending` lists the deployments waiting for resources."""

    def __init__(self, message: str, pending: list[PendingDeployment] | None = None):
        super().__init__(message)
        self.pending = pending or []


class ReplicasPending(NotRunning):
    """Replicas stayed unplaced (not enough CPUs/GPUs/...) longer than the wait allowed."""


class DeployFailed(NotRunning):
    """Serve gave up on the application (DEPLOY_FAILED: a constructor kept raising, a bad config...), or a
    deployment failed for a known reason retrying cannot fix. `lines`: the startup failure lines found (then
    the message is just those lines, one per line)."""

    def __init__(self, message: str, pending: list[PendingDeployment] | None = None, lines: list[str] | None = None):
        super().__init__(message, pending)
        self.lines = lines or []


def read_pending(app_name: str | None = None, *, min_age_s: float = SETTLE_S) -> list[PendingDeployment]:
    """The deployments of `app_name` (default: every application) whose replicas Ray has not placed, with
    what one replica needs vs what the cluster has. Needs a connected Ray with Serve running."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()  # Serve's controller client: the same details the dashboard serves
    if client is None:
        return []
    details = client.get_serve_details()
    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    return find_pending(details, ray.cluster_resources(), ray.available_resources(), nodes, app_name=app_name,
                        min_age_s=min_age_s)


def app_status(app_name: str) -> tuple[str, str]:
    """(status, message) of one Serve application: RUNNING, DEPLOYING, DEPLOY_FAILED, ... or MISSING. The
    message adds each unhealthy or failed deployment's own message (where a constructor's traceback is), and
    that of any deployment whose message holds a startup failure line (its constructor failed for a known
    reason, while Serve still retries it)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "MISSING", ""
    parts = [app.message] if app.message else []
    for name, dep in app.deployments.items():
        failed = str(getattr(dep.status, "value", dep.status)) in ("UNHEALTHY", "DEPLOY_FAILED")
        if dep.message and (failed or startup_lines(dep.message)):
            parts.append(f"{name}: {dep.message}")
    return str(getattr(app.status, "value", app.status)), "\n".join(parts)


def failure_lines(message: str) -> tuple[list[str], bool]:
    """(the startup failure lines in a status message, whether one of them is for good: a cause that retrying
    cannot fix, such as a gated model without a token or a directory that is not a checkpoint)."""
    lines = startup_lines(message)
    return lines, any(startup_code(line) not in RETRYABLE_STARTUP_CODES for line in lines)


def wait_running(
    app_name: str,
    *,
    pending_timeout_s: float | None = 60.0,
    unplaceable_timeout_s: float | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    on_pending: Callable[[str], None] | None = None,
) -> None:
    """Return once `app_name` is RUNNING. Raise ReplicasPending when replicas short of resources (a CPU/GPU/...
    they need is not free, or not in the cluster) have waited for a placement for `pending_timeout_s` (None:
    wait for them forever), or already after `unplaceable_timeout_s` when one replica needs more than the
    cluster or any node has (a fixed local cluster never heals; an autoscaling one may add a node: None =
    treat them like the others); DeployFailed on DEPLOY_FAILED, or at once when a deployment failed for a known
    reason that retrying cannot fix (its startup failure line: the exception's message is then just the
    line(s)); NotRunning when `timeout_s` (None: no limit) passes first. Replicas whose resources are free but whose worker is not up yet (a loaded machine), and
    replicas placed and loading their model, are bounded by `timeout_s` only. `on_pending(message)` hears
    every new set of pending deployments (`replicas pending: ...`)."""
    t0 = time.monotonic()
    settle = SETTLE_S if pending_timeout_s is None else min(SETTLE_S, pending_timeout_s)
    seen: tuple[str, ...] = ()
    while True:
        status, message = app_status(app_name)
        if status == "RUNNING":
            return
        lines, for_good = failure_lines(message)
        if status == "DEPLOY_FAILED" or for_good:
            if lines:
                raise DeployFailed("\n".join(lines), lines=lines)
            raise DeployFailed(f"application {app_name} failed to deploy: {message}")
        pending = read_pending(app_name, min_age_s=settle) if status != "MISSING" else []
        names = tuple(p.deployment for p in pending)
        if pending and names != seen and on_pending is not None:
            on_pending(pending_message(pending))
        seen = names
        short = [p for p in pending if p.short]
        if short and pending_timeout_s is not None and max(p.oldest_s for p in short) >= pending_timeout_s:
            raise ReplicasPending(pending_message(pending), pending)
        stuck = [p for p in pending if not p.placeable]
        if stuck and unplaceable_timeout_s is not None and max(p.oldest_s for p in stuck) >= unplaceable_timeout_s:
            raise ReplicasPending(pending_message(pending), pending)
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            detail = pending_message(pending) or message or "no replica is waiting for resources"
            raise NotRunning(f"application {app_name} is {status} after {timeout_s:g} s: {detail}", pending)
        time.sleep(poll_s)


# A Serve log record starts with its level and date (`ERROR 2026-01-02 10:11:12,345 controller 123 -- ...`).
_RECORD_START = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d ")
_TRACEBACK = "Traceback (most recent call last)"


def drop_known_tracebacks(lines: list[str]) -> list[str]:
    """`lines` (one batch of a worker's output, as Ray forwards it to the driver) without the tracebacks that end
    in a startup failure line, e.g. the Serve controller's `Exception in Replica(...), the replica will be
    stopped.` record with the pages of traceback of a constructor that failed for a known reason. The line itself
    is logged by the replica (a line of its own, kept) and printed by `sam3-serve run`. A record that starts with
    a log header is dropped whole; without a header, from its first traceback line to the failure line."""
    out: list[str] = []
    record: list[str] = []

    def flush() -> None:
        ends = [i for i, line in enumerate(record)
                if startup_lines(line) and not line.lstrip().startswith("sam3-serve: ")]  # `XError: sam3-serve: ...`
        starts = [i for i, line in enumerate(record) if _TRACEBACK in line]
        if ends and starts and starts[0] < ends[-1]:
            first = 0 if _RECORD_START.match(record[0]) else starts[0]
            out.extend(record[:first] + record[ends[-1] + 1:])
        else:
            out.extend(record)
        record.clear()

    for line in lines:
        if _RECORD_START.match(line):
            flush()
        record.append(line)
    flush()
    return out


def quiet_known_tracebacks() -> bool:
    """Filter this driver's copy of the workers' output (Ray's log_to_driver) through `drop_known_tracebacks`.
    Uses Ray's private handler list (ray._private.ray_logging.global_worker_stdstream_dispatcher, Ray 2.60):
    returns False, changing nothing, when it is not there. Call after ray.init."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    with dispatcher._lock:
        for i, (name, handler) in enumerate(dispatcher.handlers):
            if name != "ray_print_logs" or getattr(handler, "quiet_known_tracebacks", False):
                continue

            def filtered(data: dict, _print: Callable[[dict], None] = handler) -> None:
                lines = data.get("lines") or []
                if any("sam3-serve: cannot " in line for line in lines):
                    data = {**data, "lines": drop_known_tracebacks(lines)}
                    if not data["lines"]:
                        return
                _print(data)

            filtered.quiet_known_tracebacks = True  # type: ignore[attr-defined]
            dispatcher.handlers[i] = (name, filtered)
            return True
    return False
