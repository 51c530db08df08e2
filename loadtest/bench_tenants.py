"""Tenant isolation benchmark: does one tenant saturating its quota leave another tenant's latency alone?

    python loadtest/bench_tenants.py --model tiny     # -> loadtest/results/tenants-tiny-cpu/result.json + plot.png
    SAM3_API_KEY=<quiet key> python loadtest/bench_tenants.py --url https://sam3.example --noisy-key <key> \
        --out /tmp/tenants/result.json                # a running service: phases alone + noisy_limited(_polite)

A benchmark, not a test: it prints a table and writes JSON (+ plot.png next to a result.json, else a PNG of the
same name) when matplotlib is installed. Without --url it starts its own local Ray + Serve app (build_app,
file:// storage in a temp dir, real HTTP on 127.0.0.1, every replica a fraction of a CPU so it all fits on 2
cores) in auth.mode api_keys with four tenants, each with a fresh random key:
- quiet: no limits (the tenant whose latency is measured);
- quiet-limited: generous limits it never reaches, so every request passes the QuotaKeeper (its overhead);
- noisy: tight limits (--noisy-rps requests/s, burst --noisy-burst, --noisy-inflight model requests at once);
- noisy-unlimited: no limits (what the quota protects against).

One request = POST /v1/pcs/image, a small multipart JPEG (--width x --height) and --prompts text prompt(s).
Phases; in each, quiet sends sequential requests (one at a time) and its latencies are recorded; --rounds
rounds of all phases in turn (so a shared machine's drift spreads over every phase), --requests per phase
in all:
- alone: quiet alone, its requests interleaved with quiet-limited's (the same number): the quota check's cost
  per request is quiet-limited p50 - quiet p50 (and the median of the paired differences); the same before
  it with --cheap-requests GETs of a route that does not exist (auth + the quota check + a 404: no work to
  hide the check's cost in);
- noisy_limited: while `noisy` runs --noisy-clients concurrent clients (another process) sending the same
  request as fast as they can, a 429 answered at once by the next request: they are refused most of the time;
  noisy's answers are counted by status, error.code and error.limit, with the Retry-After values seen;
- noisy_limited_polite: the same, but each noisy client waits Retry-After after a 429 (a well-behaved client);
- noisy_unlimited: the same hammering by `noisy-unlimited` (no limits): the contrast;
- noisy_invalid_key (local app only; --skip-invalid): the same hammering with a key that is not configured:
  every answer a 401 from the auth middleware, no QuotaKeeper call: the cheapest refusal there is, for
  comparison with noisy_limited's 429s (auth + one keeper call).
Against --url, the phases whose keys are given run: alone (--quiet-key / $SAM3_API_KEY; overhead with
--quiet-limited-key), noisy_limited and noisy_limited_polite (--noisy-key, a tenant the service limits),
noisy_unlimited (--noisy-unlimited-key). GET /v1/quotas of each key is recorded (its tenant and
limits). On one small machine the noisy clients, the Serve proxy and the ingress share the CPUs with quiet's
requests: a refusal still costs a trip through the proxy and the ingress, and this shows what that costs.

Every wait is bounded (--deploy-timeout, HTTP timeouts); a bad key or an app that does not deploy ends the
run with a message and exit status 2.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import (
    API_KEY_ENV,
    TEXTS,
    VIDEO_IDLE,
    DeployError,
    add_api_key_arg,
    app_cpus,
    auth_headers,
    base_parser,
    deploy_or_fail,
    free_port,
    jpeg,
    key_sha256,
    pct,
    pyplot,
    setup,
    start_ray,
    stop_ray,
    summary,
    write_result,
)

ROUTE = "/v1/pcs/image"
GENEROUS = {"requests_per_s": 10000.0, "burst": 10000, "max_inflight_model_requests": 1000}


class BenchError(RuntimeError):
    """The benchmark cannot go on (the app did not deploy, a key is refused): exit 2."""


# ----------------------------------------------------------------------------------------------- requests


class Payload:
    """The one request every client sends: multipart JPEG + prompts."""

    def __init__(self, width: int, height: int, prompts: int):
        self.image = jpeg(0, width, height)
        self.prompts = json.dumps([{"text": TEXTS[k % len(TEXTS)]} for k in range(prompts)])

    def post(self, session, url: str, timeout: float):
        return session.post(url, files={"image": ("x.jpg", self.image, "image/jpeg")},
                            data={"prompts": self.prompts}, timeout=(10, timeout))


def outcome(r) -> tuple[str, int | None]:
    """('200' | '<status> <error.code>[/<error.limit>]', Retry-After seconds or None) of one answer."""
    if r.status_code == 200:
        return "200", None
    try:
        error = r.json().get("error", {})
        label = f"{r.status_code} {error.get('code', '?')}" + (f"/{error['limit']}" if error.get("limit") else "")
    except ValueError:
        label = f"{r.status_code} (no JSON body)"
    retry = r.headers.get("Retry-After")
    return label, int(retry) if retry is not None and retry.isdigit() else None


def noisy_process(url: str, key: str, clients: int, payload: Payload, polite: bool, timeout: float,
                  ready, stop, results) -> None:
    """`clients` threads POSTing `payload` as `key` as fast as they can until `stop` is set (a 429 is followed
    by the next request at once, or after its Retry-After when `polite`); puts the counts on `results`."""
    import requests

    lock = threading.Lock()
    counts: Counter[str] = Counter()
    retry_after: Counter[int] = Counter()
    ok_ms: list[float] = []
    refused_ms: list[float] = []

    def loop() -> None:
        with requests.Session() as s:
            s.headers.update(auth_headers(key))
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    r = payload.post(s, url, timeout)
                except requests.RequestException as exc:
                    with lock:
                        counts[f"error {type(exc).__name__}"] += 1
                    stop.wait(0.1)
                    continue
                ms = (time.perf_counter() - t) * 1e3
                label, retry = outcome(r)
                with lock:
                    counts[label] += 1
                    (ok_ms if label == "200" else refused_ms).append(ms)
                    if retry is not None:
                        retry_after[retry] += 1
                if polite and r.status_code in (429, 503):
                    stop.wait(retry if retry is not None else 1.0)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    ready.set()
    for th in threads:
        th.join(timeout + 15)
    elapsed = time.perf_counter() - t0
    results.put({"clients": clients, "polite": polite, "elapsed_s": elapsed, "counts": dict(counts),
                 "requests": sum(counts.values()), "requests_per_s": sum(counts.values()) / elapsed,
                 "ok_per_s": counts["200"] / elapsed, "retry_after_s": {str(k): v for k, v in sorted(retry_after.items())},
                 "ok_latency": summary(ok_ms) if ok_ms else None,
                 "refused_latency": summary(refused_ms) if refused_ms else None})


class Noisy:
    """The noisy clients in a process of their own (their request loop must not share this process's GIL with
    quiet's timed requests). Started as a context manager: ready when its threads run."""

    def __init__(self, url: str, key: str, clients: int, payload: Payload, polite: bool, timeout: float):
        ctx = mp.get_context("spawn")  # never fork a process that runs Ray
        self.ready, self.stop, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=noisy_process, daemon=True, args=(
            url, key, clients, payload, polite, timeout, self.ready, self.stop, self.results))
        self.timeout = timeout
        self.result: dict | None = None

    def __enter__(self) -> Noisy:
        self.proc.start()
        if not self.ready.wait(60):
            self.proc.kill()
            raise BenchError("the noisy clients' process did not start within 60 s")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        try:
            self.result = self.results.get(timeout=self.timeout + 30)
        except Exception:  # queue.Empty: it hung; the result says so
            self.result = None
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def quiet_series(url: str, keys: dict[str, str], n: int, payload: Payload, timeout: float) -> dict[str, dict]:
    """n sequential POSTs of `payload` per key of `keys` {label: key}, interleaved (a, b, a, b, ...): per label
    {"ms": latency of each request (None where it was not a 200), "counts": outcomes}."""
    return _interleaved(keys, n, lambda s: payload.post(s, url, timeout), 200, lambda r: outcome(r)[0])


CHEAP_PATH = "/v1/bench-tenants/no-such-route"  # authenticated, passes the quota middleware, then a 404


def cheap_series(base: str, keys: dict[str, str], n: int, timeout: float) -> dict[str, dict]:
    """Like quiet_series with GET CHEAP_PATH (no model work, no storage: auth + the quota check + a 404): every
    answer's latency counts when it is the expected 404."""
    return _interleaved(keys, n, lambda s: s.get(base + CHEAP_PATH, timeout=(10, timeout)), 404,
                        lambda r: str(r.status_code))


def _interleaved(keys: dict[str, str], n: int, send: Callable[[Any], Any], expected: int,
                 label_of: Callable[[Any], str]) -> dict[str, dict]:
    """n rounds of `send(session)` for each key in turn (one requests.Session per key, its auth headers set):
    per label {"ms": each latency (None unless the status was `expected`), "counts": label_of(response) or
    "error <exception>" for a transport error (counted, not fatal: the table shows it)}."""
    import requests

    sessions = {label: requests.Session() for label in keys}
    for label, key in keys.items():
        sessions[label].headers.update(auth_headers(key))
    out: dict[str, dict] = {label: {"ms": [], "counts": Counter()} for label in keys}
    try:
        for _ in range(n):
            for label in keys:
                t = time.perf_counter()
                try:
                    r = send(sessions[label])
                except requests.RequestException as exc:
                    out[label]["counts"][f"error {type(exc).__name__}"] += 1
                    out[label]["ms"].append(None)
                    continue
                ms = (time.perf_counter() - t) * 1e3
                out[label]["counts"][label_of(r)] += 1
                out[label]["ms"].append(ms if r.status_code == expected else None)
    finally:
        for s in sessions.values():
            s.close()
    return out


def merged_series(parts: list[dict]) -> dict:
    """quiet_series results of one label over the rounds: summary of the 200s' latencies, every answer's
    outcome, each round's p50, and the latencies (None = not a 200) in order."""
    ms = [x for part in parts for x in part["ms"]]
    ok = [x for x in ms if x is not None]
    counts: Counter[str] = Counter()
    for part in parts:
        counts.update(part["counts"])
    nothing = {"n": 0, "p50_ms": math.nan, "p95_ms": math.nan, "p99_ms": math.nan, "mean_ms": math.nan}
    rounds = [pct([x for x in part["ms"] if x is not None], 50) for part in parts]
    return {**(summary(ok) if ok else nothing), "counts": dict(counts), "round_p50_ms": rounds,
            "latencies_ms": [None if x is None else round(x, 2) for x in ms]}


def merged_noisy(parts: list[dict]) -> dict:
    """The noisy process's reports of one phase over the rounds, added up."""
    counts: Counter[str] = Counter()
    retry: Counter[str] = Counter()
    for part in parts:
        counts.update(part["counts"])
        retry.update(part["retry_after_s"])
    elapsed = sum(part["elapsed_s"] for part in parts)
    total = sum(counts.values())
    return {"clients": parts[0]["clients"], "polite": parts[0]["polite"], "elapsed_s": elapsed,
            "counts": dict(counts), "requests": total, "requests_per_s": total / elapsed,
            "ok_per_s": counts["200"] / elapsed, "retry_after_s": dict(sorted(retry.items())), "rounds": parts}


def check_key(base: str, label: str, key: str) -> dict:
    """GET /v1/quotas as `key`: its tenant and limits (raises BenchError when the key is refused)."""
    import requests

    r = requests.get(base + "/v1/quotas", headers=auth_headers(key), timeout=(10, 30))
    if r.status_code != 200:
        raise BenchError(f"{label} key: GET /v1/quotas answered HTTP {r.status_code} {r.text[:300]}")
    view = r.json()
    return {"tenant": view["tenant"], "limits": view["limits"]}


# ----------------------------------------------------------------------------------------------- served app


class LocalApp:
    """A local Ray + Serve sam3 app in auth.mode api_keys (four tenants, random keys, file:// storage)."""

    def __init__(self, model_dir: str, args, num_gpus: float):
        self.args = args
        self.store_dir = tempfile.mkdtemp(prefix="bench-tenants-store-")
        self.tmp: str | None = None
        self.keys = {label: secrets.token_urlsafe(24) for label in
                     ("quiet", "quiet-limited", "noisy", "noisy-unlimited")}
        self.noisy_limits = {"requests_per_s": args.noisy_rps, "burst": args.noisy_burst,
                             "max_inflight_model_requests": args.noisy_inflight}
        self.app_args: dict[str, Any] = {
            "model": {"model_id": model_dir},
            "concept": {"replica": {"num_cpus": 0.5, "num_gpus": num_gpus, "max_ongoing_requests": 32}},
            "click": {"replica": {"num_cpus": 0.25, "num_gpus": 0}},  # idle here
            "jobs": {"worker": {"num_cpus": 0.25}},
            "ingress": {"replica": {"num_cpus": 0.5, "max_ongoing_requests": 64}},
            "video": VIDEO_IDLE,
            "auth": {"mode": "api_keys",
                     "keys": [{"key_sha256": key_sha256(key), "tenant": label, "name": f"bench-{label}"}
                              for label, key in self.keys.items()],
                     "tenant_quotas": {"noisy": self.noisy_limits, "quiet-limited": GENEROUS}},
        }
        self.num_cpus = app_cpus({**self.app_args, "storage": {"uri": f"file://{self.store_dir}"}}) + 1  # + keeper
        self.plan = {"logical_cpus": self.num_cpus, "replica_cpus": {"ingress": 0.5, "concept": 0.5, "click": 0.25,
                     "job_worker": 0.25, "session_manager": 0, "quota_keeper": 0.1},
                     "storage": "file:// (local disk)", "tenant_quotas": self.app_args["auth"]["tenant_quotas"]}

    def start(self) -> str:
        from serve_app.app import build_app

        port = free_port()
        try:
            self.tmp = start_ray(self.num_cpus, port,
                                 num_gpus=None if self.app_args["concept"]["replica"]["num_gpus"] else 0)
        except Exception as exc:  # an overloaded machine: Ray's node did not come up in time
            raise BenchError(f"local Ray did not start: {exc}") from exc
        base = f"http://127.0.0.1:{port}"
        self.app_args["storage"] = {"uri": f"file://{self.store_dir}", "public_base_url": base}
        try:
            deploy_or_fail(build_app(self.app_args), name="sam3", route_prefix="/",
                           timeout_s=self.args.deploy_timeout)
        except DeployError as exc:
            raise BenchError(str(exc)) from exc
        return base

    def stop(self) -> None:
        try:
            stop_ray(self.tmp)
        finally:
            shutil.rmtree(self.store_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- phases


def run_phases(base: str, keys: dict[str, str | None], args, payload: Payload) -> dict[str, dict]:
    """--rounds rounds of every phase in turn (so the drift of a shared machine spreads over all phases), each
    with --requests / --rounds quiet requests; results merged per phase."""
    url = base + ROUTE
    per_round, timeout = math.ceil(args.requests / args.rounds), args.http_timeout
    quiet = {"quiet": keys["quiet"]}
    alone_keys = {**quiet, **({"quiet-limited": keys["quiet-limited"]} if keys.get("quiet-limited") else {})}
    hammer = [(phase, label, polite) for phase, label, polite in (
        ("noisy_limited", "noisy", False), ("noisy_limited_polite", "noisy", True),
        ("noisy_unlimited", "noisy-unlimited", False), ("noisy_invalid_key", "invalid", False)) if keys.get(label) and not (polite and args.skip_polite)]
    raw: dict[str, dict[str, list]] = {"alone": {label: [] for label in alone_keys},
                                       "cheap": {label: [] for label in alone_keys}}
    for phase, *_ in hammer:
        raw[phase] = {"quiet": [], "noisy": []}

    # warm-up: every key's first requests (connections, lazy imports, the keeper's first call)
    for label, key in keys.items():
        if key is not None:
            quiet_series(url, {label: key}, args.warmup, payload, timeout)
    for rnd in range(args.rounds):
        time.sleep(max(1.0, args.noisy_burst / args.noisy_rps))  # the last noisy requests drain, its bucket refills
        if len(alone_keys) > 1:  # the quota check's cost on a route with no work (before the concept series)
            cheap = cheap_series(base, alone_keys, args.cheap_requests // args.rounds, timeout)
            for label in alone_keys:
                raw["cheap"][label].append(cheap[label])
        series = quiet_series(url, alone_keys, per_round, payload, timeout)
        for label in alone_keys:
            raw["alone"][label].append(series[label])
        line = [f"round {rnd + 1}/{args.rounds}: quiet p50 alone {pct([x for x in series['quiet']['ms'] if x], 50):.0f}"]
        for phase, label, polite in hammer:
            with Noisy(url, keys[label], args.noisy_clients, payload, polite, timeout) as noisy:
                time.sleep(args.ramp_s)
                series = quiet_series(url, quiet, per_round, payload, timeout)
            if noisy.result is None:
                raise BenchError(f"{phase}: the noisy clients did not report (hung past the HTTP timeout)")
            raw[phase]["quiet"].append(series["quiet"])
            raw[phase]["noisy"].append(noisy.result)
            line.append(f"{phase} {pct([x for x in series['quiet']['ms'] if x], 50):.0f} "
                        f"({noisy.result['requests_per_s']:.0f} noisy req/s, {noisy.result['ok_per_s']:.1f} 200/s)")
        print(", ".join(line) + " ms", flush=True)
    out: dict[str, dict] = {"alone": {"quiet": merged_series(raw["alone"]["quiet"])}}
    if "quiet-limited" in alone_keys:
        out["alone"]["quiet_limited"] = merged_series(raw["alone"]["quiet-limited"])
        out["alone"]["cheap_route"] = {"path": f"GET {CHEAP_PATH}", "quiet": merged_series(raw["cheap"]["quiet"]),
                                       "quiet_limited": merged_series(raw["cheap"]["quiet-limited"])}
    for phase, label, _ in hammer:
        out[phase] = {"quiet": merged_series(raw[phase]["quiet"]), "noisy_tenant": label,
                      "noisy": merged_noisy(raw[phase]["noisy"])}
    return out


def paired(q: dict, ql: dict) -> dict:
    """quiet-limited vs quiet of one interleaved series (merged_series of each)."""
    pairs = [b - a for a, b in zip(q["latencies_ms"], ql["latencies_ms"], strict=True)
             if a is not None and b is not None]
    return {"quiet_p50_ms": q["p50_ms"], "quiet_limited_p50_ms": ql["p50_ms"],
            "p50_difference_ms": ql["p50_ms"] - q["p50_ms"], "mean_difference_ms": ql["mean_ms"] - q["mean_ms"],
            "median_paired_difference_ms": float(statistics.median(pairs)) if pairs else float("nan"),
            "pairs": len(pairs)}


def quota_overhead(alone: dict) -> dict | None:
    """What passing the QuotaKeeper costs a request: quiet-limited (every request asks the keeper) vs quiet (no
    limits: no call) in the same interleaved series, on the concept route and on a route with no work."""
    if "quiet_limited" not in alone:
        return None
    cheap = alone["cheap_route"]
    return {"concept": paired(alone["quiet"], alone["quiet_limited"]),
            "cheap_route": {"path": cheap["path"], **paired(cheap["quiet"], cheap["quiet_limited"])}}


# ----------------------------------------------------------------------------------------------- output


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    import numpy as np

    phases = result["phases"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    series = [(f"quiet, {name}", row["quiet"]) for name, row in phases.items()]
    if "quiet_limited" in phases.get("alone", {}):
        series.insert(1, ("quiet-limited, alone (keeper call)", phases["alone"]["quiet_limited"]))
    for label, row in series:
        xs = np.sort(np.asarray([x for x in row["latencies_ms"] if x is not None]))
        if len(xs):
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post",
                    label=f"{label} (p50 {row['p50_ms']:.0f}, p99 {row['p99_ms']:.0f} ms)")
    ax.set_xlim(left=0)
    ax.set_xlabel("latency of quiet's POST /v1/pcs/image, ms")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"quiet tenant: {result['requests_per_phase']} sequential requests per phase, "
                 f"{result['rounds']} rounds (ECDF)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    noisy = [(name, row["noisy"]) for name, row in phases.items() if row.get("noisy")]
    labels = sorted({k for _, nz in noisy for k in nz["counts"]}, key=lambda k: (k != "200", k))
    width = 0.8 / max(1, len(labels))
    for i, k in enumerate(labels):
        vals = [nz["counts"].get(k, 0) / nz["elapsed_s"] for _, nz in noisy]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(noisy))]
        ax.bar(xs, vals, width=width, label=k)
        for x, v in zip(xs, vals, strict=True):
            if v:
                ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(noisy)), [f"{name}\n({nz['clients']} clients)" for name, nz in noisy], fontsize=8)
    ax.set_ylabel("noisy answers per second")
    ax.set_title("the noisy tenant's answers by outcome")
    ax.legend(fontsize=7)
    fig.suptitle(f"tenant isolation — {result['model']} on {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_table(result: dict) -> None:
    print(f"--- quiet tenant, {result['requests_per_phase']} sequential POST {ROUTE} per phase in "
          f"{result['rounds']} rounds ({result['image']}, {result['prompts_per_image']} prompt(s)); noisy: "
          f"{result['noisy_clients']} clients", flush=True)
    print(f"  {'phase':22s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'x alone':>7s} {'p50 per round':>18s}  "
          "noisy: req/s, 200/s, answers, Retry-After {s: count}", flush=True)
    base = result["phases"]["alone"]["quiet"]["p50_ms"]
    rows = [(name, row["quiet"], row.get("noisy"), row.get("noisy_tenant")) for name, row in result["phases"].items()]
    if "quiet_limited" in result["phases"]["alone"]:
        rows.insert(1, ("alone (quiet-limited)", result["phases"]["alone"]["quiet_limited"], None, None))
    for name, q, nz, tenant in rows:
        extra = ""
        if nz:
            extra = (f"  {tenant}: {nz['requests_per_s']:.1f}, {nz['ok_per_s']:.2f}, {nz['counts']}, "
                     f"{nz['retry_after_s'] or '-'}")
        bad = {k: v for k, v in q["counts"].items() if k != "200"}
        rounds = "/".join(f"{x:.0f}" for x in q["round_p50_ms"])
        print(f"  {name:22s} {q['p50_ms']:7.1f} {q['p95_ms']:7.1f} {q['p99_ms']:7.1f} {q['p50_ms'] / base:7.2f} "
              f"{rounds:>18s}{extra}{'  quiet refused: ' + str(bad) if bad else ''}", flush=True)
    o = result.get("quota_check_overhead")
    if o:
        for name, row in o.items():
            print(f"  quota check, {row.get('path', 'POST ' + ROUTE)} (alone, interleaved): quiet-limited p50 "
                  f"{row['quiet_limited_p50_ms']:.2f} ms - quiet p50 {row['quiet_p50_ms']:.2f} ms = "
                  f"{row['p50_difference_ms']:+.2f} ms; median paired difference "
                  f"{row['median_paired_difference_ms']:+.2f} ms ({row['pairs']} pairs)", flush=True)


def out_plot_path(out: str) -> Path:
    path = Path(out)
    return path.with_name("plot.png") if path.name == "result.json" else path.with_suffix(".png")


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/tenants-tiny-cpu/result.json")
    parser.add_argument("--url", help="benchmark this running service (phases whose keys are given) instead of "
                        "starting Ray + Serve here")
    add_api_key_arg(parser, "--quiet-key", "--api-key", help=f"--url: the quiet tenant's key (no limits, or "
                    f"ones it does not reach); default ${API_KEY_ENV}")
    add_api_key_arg(parser, "--noisy-key", env=None, help="--url: a key of a tenant the service limits "
                    "(phases noisy_limited, noisy_limited_polite)")
    add_api_key_arg(parser, "--quiet-limited-key", env=None, help="--url: a key of a tenant with limits it "
                    "never reaches (the quota check's overhead in phase alone)")
    add_api_key_arg(parser, "--noisy-unlimited-key", env=None, help="--url: a key of a tenant without limits "
                    "(phase noisy_unlimited)")
    parser.add_argument("--requests", type=int, default=120, help="quiet's sequential requests per phase (all "
                        "rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all phases in turn")
    parser.add_argument("--cheap-requests", type=int, default=300, help="interleaved pairs of GET requests on a "
                        "route with no work (the quota check's cost), all rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per key first")
    parser.add_argument("--noisy-clients", type=int, default=4, help="concurrent noisy clients")
    parser.add_argument("--ramp-s", type=float, default=1.0, help="noisy runs this long before quiet starts")
    parser.add_argument("--noisy-rps", type=float, default=2.0, help="local app: noisy's requests_per_s")
    parser.add_argument("--noisy-burst", type=int, default=2, help="local app: noisy's burst")
    parser.add_argument("--noisy-inflight", type=int, default=1, help="local app: noisy's "
                        "max_inflight_model_requests")
    parser.add_argument("--skip-polite", action="store_true", help="no noisy_limited_polite phase")
    parser.add_argument("--skip-invalid", action="store_true", help="local app: no noisy_invalid_key phase")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--prompts", type=int, default=1, help="text prompts per request")
    parser.add_argument("--deploy-timeout", type=float, default=300.0, help="seconds for the app to be RUNNING")
    parser.add_argument("--http-timeout", type=float, default=60.0, help="read timeout of one HTTP call")
    args = parser.parse_args()
    if args.skip_served:
        parser.error("--skip-served: everything bench_tenants measures is served")
    if args.requests < 2 or args.rounds < 1 or args.noisy_clients < 1 or args.width < 16 or args.height < 16:
        parser.error("--requests >= 2, --noisy-clients >= 1, --width/--height >= 16")
    if args.url and not args.quiet_key:
        parser.error(f"--url needs the quiet tenant's key: --quiet-key or ${API_KEY_ENV}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.monotonic()
    if args.url and args.model_dir is None:
        args.model_dir = "(the service's)"  # setup() must not build a checkpoint nobody uses
    model_dir, cuda, header = setup(args)  # builds the checkpoint otherwise (removed at exit)
    payload = Payload(args.width, args.height, args.prompts)
    result: dict[str, Any] = {
        **header, "target": args.url or "local Ray + Serve (started here)", "route": f"POST {ROUTE}",
        "image": f"{args.width}x{args.height} JPEG ({len(payload.image)} bytes)", "prompts_per_image": args.prompts,
        "requests_per_phase": math.ceil(args.requests / args.rounds) * args.rounds, "rounds": args.rounds,
        "noisy_clients": args.noisy_clients, "ramp_s": args.ramp_s,
        "loadavg_start": os.getloadavg()}
    app = LocalApp(model_dir, args, 1 if cuda else 0) if args.url is None else None
    try:
        try:
            if app is not None:
                t0 = time.monotonic()
                base = app.start()
                result["plan"] = app.plan
                result["deploy_s"] = time.monotonic() - t0
                print(f"app up in {result['deploy_s']:.1f} s", flush=True)
                keys: dict[str, str | None] = dict(app.keys)
                result["tenants"] = {label: check_key(base, label, key) for label, key in keys.items()}
                if not args.skip_invalid:
                    keys["invalid"] = secrets.token_urlsafe(24)  # not configured: 401
            else:
                base = args.url.rstrip("/")
                keys = {"quiet": args.quiet_key, "quiet-limited": args.quiet_limited_key, "noisy": args.noisy_key,
                        "noisy-unlimited": args.noisy_unlimited_key}
                result["tenants"] = {label: check_key(base, label, key) for label, key in keys.items() if key}
            for label in ("noisy", "quiet-limited"):
                view = result["tenants"].get(label)
                if view and not any(v is not None for v in view["limits"].values()):
                    print(f"warning: the {label} key's tenant {view['tenant']} has no limits", file=sys.stderr)
            result["phases"] = run_phases(base, keys, args, payload)
        finally:
            if app is not None:
                app.stop()
    except BenchError as exc:
        print(f"bench_tenants: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    result["quota_check_overhead"] = quota_overhead(result["phases"]["alone"])
    result["wall_s"] = time.monotonic() - t_start
    result["loadavg_end"] = os.getloadavg()
    print_table(result)
    print(f"total {result['wall_s']:.0f} s", flush=True)
    write_result(result, args.out, lambda r, _png: plot(r, out_plot_path(args.out)))


if __name__ == "__main__":
    main()
