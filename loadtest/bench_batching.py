"""Batching policy A/B: concept throughput and the batch-size curve with `batching.eager_when_idle` on and off.

    python loadtest/bench_batching.py --model tiny --out loadtest/results/batching-tiny-cpu/batching.json

One local Ray, two copies of the sam3 app that differ only in that knob: "eager" at /eager (the default: a
request that finds its replica idle runs at once as a batch of one) and "wait" at /wait (every request goes
through the @serve.batch queue and the first of a batch waits `batch_wait_timeout_s` for company). For each
client count C (--clients) and round (--rounds), each variant in turn (the order alternates by round) gets C
concurrent HTTP clients sending `POST /v1/pcs/image` (multipart 1024x768 JPEG, --prompts text prompts) for
C x --per-client requests; the other app is idle meanwhile. Per phase: requests/s, p50/p95 latency, the mean
and the histogram of `batch_size` (each answer says the size of the batch it ran in). The summary takes the
median over rounds. Interleaving makes the two variants see the same machine load; single phases on a shared
box still move +-20%.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import (
    TEXTS,
    VIDEO_IDLE,
    app_cpus,
    base_parser,
    deploy_or_fail,
    free_port,
    jpeg,
    pyplot,
    setup,
    start_ray,
    stop_ray,
    summary,
    write_result,
)

VARIANTS = {"eager": True, "wait": False}  # app name -> batching.eager_when_idle


def app_args(model_dir: str, eager: bool, num_gpus: float) -> dict:
    return {"model": {"model_id": model_dir},
            "concept": {"replica": {"num_gpus": num_gpus, "num_cpus": 1, "max_ongoing_requests": 32},
                        "batching": {"eager_when_idle": eager}},
            "click": {"replica": {"num_gpus": 0, "num_cpus": 0.1}},
            "video": VIDEO_IDLE}


def run_phase(url: str, images: list[bytes], clients: int, requests_n: int, prompts: int) -> dict:
    """`requests_n` concept requests from `clients` threads (one requests.Session each) against `url`."""
    import threading

    import requests

    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        data = {"prompts": json.dumps([{"text": TEXTS[(i + k) % len(TEXTS)]} for k in range(prompts)])}
        t = time.perf_counter()
        r = session.post(url, files={"image": ("x.jpg", images[i % len(images)], "image/jpeg")}, data=data,
                         timeout=300)
        r.raise_for_status()
        return (time.perf_counter() - t) * 1e3, int(r.json()["batch_size"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests_n)))
    wall = time.perf_counter() - t0
    sizes = [b for _, b in results]
    return {"clients": clients, "requests": requests_n, **summary([lat for lat, _ in results]),
            "requests_per_s": requests_n / wall, "mean_batch_size": statistics.fmean(sizes),
            "batch_size_histogram": {str(k): v for k, v in sorted(Counter(sizes).items())}}


def summarise(phases: list[dict]) -> list[dict]:
    """Median over rounds per (variant, clients)."""
    rows = []
    for variant in VARIANTS:
        for clients in sorted({p["clients"] for p in phases}):
            mine = [p for p in phases if p["variant"] == variant and p["clients"] == clients]
            rows.append({"variant": variant, "clients": clients, "rounds": len(mine),
                         "requests_per_s": statistics.median(p["requests_per_s"] for p in mine),
                         "p50_ms": statistics.median(p["p50_ms"] for p in mine),
                         "p95_ms": statistics.median(p["p95_ms"] for p in mine),
                         "mean_batch_size": statistics.median(p["mean_batch_size"] for p in mine)})
    return rows


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for variant in VARIANTS:
        rows = [r for r in result["summary"] if r["variant"] == variant]
        xs = [r["clients"] for r in rows]
        for ax, key in zip(axes, ("requests_per_s", "mean_batch_size", "p50_ms")):
            ax.plot(xs, [r[key] for r in rows], marker="o", label=f"{variant} (eager_when_idle={VARIANTS[variant]})")
    for ax, label in zip(axes, ("requests/s", "mean batch size", "p50 latency (ms)")):
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"POST /v1/pcs/image, {result['prompts']} prompts: batching policy ({result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/batching.json")
    parser.add_argument("--clients", default="1,2,4,8,16", help="comma-separated client counts")
    parser.add_argument("--per-client", type=int, default=12, help="requests per client per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--deploy-timeout", type=float, default=300.0)
    args = parser.parse_args()
    model_dir, cuda, header = setup(args)
    clients_list = [int(c) for c in args.clients.split(",")]
    num_gpus = 0.5 if cuda else 0.0  # both apps' concept replicas share one GPU
    port = free_port()
    tmp = start_ray(sum(app_cpus(app_args(model_dir, e, num_gpus)) for e in VARIANTS.values()), port,
                    num_gpus=1 if cuda else None)
    images = [jpeg(i) for i in range(8)]
    phases: list[dict] = []
    try:
        from serve_app.app import build_app

        for name, eager in VARIANTS.items():
            deploy_or_fail(build_app(app_args(model_dir, eager, num_gpus)), name=name, route_prefix=f"/{name}",
                           timeout_s=args.deploy_timeout)
        urls = {name: f"http://127.0.0.1:{port}/{name}/v1/pcs/image" for name in VARIANTS}
        for name in VARIANTS:  # warm both (first batches, kernels, connection pools)
            run_phase(urls[name], images, 2, 8, args.prompts)
        for rnd in range(args.rounds):
            order = list(VARIANTS) if rnd % 2 == 0 else list(reversed(VARIANTS))
            for clients in clients_list:
                for name in order:
                    row = {"variant": name, "round": rnd,
                           **run_phase(urls[name], images, clients, clients * args.per_client, args.prompts)}
                    phases.append(row)
                    print(f"round {rnd} {name:5s} c={clients:2d}  {row['requests_per_s']:6.1f} req/s  "
                          f"p50 {row['p50_ms']:7.1f} ms  batch {row['mean_batch_size']:.2f} "
                          f"{row['batch_size_histogram']}", flush=True)
    finally:
        stop_ray(tmp)
    result = {**header, "prompts": args.prompts, "per_client": args.per_client, "rounds": args.rounds,
              "phases": phases, "summary": summarise(phases)}
    print("variant  clients  req/s   p50 ms  mean batch")
    for r in result["summary"]:
        print(f"{r['variant']:7s}  {r['clients']:7d}  {r['requests_per_s']:5.1f}  {r['p50_ms']:7.1f}  "
              f"{r['mean_batch_size']:.2f}")
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
