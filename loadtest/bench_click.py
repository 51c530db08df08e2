"""Click benchmark: latency of POST /v1/pvs/image with a warm embedding cache vs a cold image.

    python loadtest/bench_click.py --model tiny --out loadtest/results/click_tiny_cpu.json
    python loadtest/bench_click.py --model full-random --out loadtest/results/click_full_gpu.json   # on a GPU

A benchmark, not a test: it prints a table and writes JSON (+ a PNG plot next to it when matplotlib is
installed). `tiny` measures serving overhead on CPU; `full-random` builds the real SAM 3 architecture with
random weights (the cost of facebook/sam3) and belongs on a GPU machine.

Sections
- model_only: ClickRunner without Ray/HTTP: vision encoder per image, one click (decoder only) with
  1/4/16 objects, automatic mode (16x16 grid) on a cached embedding.
- served: a local Ray Serve app built by build_app (file:// storage in a temp dir), real HTTP on
  127.0.0.1, 1024x768 JPEGs:
  * warm: clicks on an uploaded image whose embedding is cached (the interactive case);
  * cold: the first click on an image uploaded with precompute=false (miss -> storage read -> decode ->
    resize -> vision encoder -> decoder);
  * upload: POST /v1/images with precompute (store + encode);
  * concurrent: C clients clicking on C different warm images: latency and clicks/s.
  The ClickSegmenter's vision-encoder counter is recorded to show warm clicks never ran the encoder.
  model_work_warm: the replica's own timing of each warm click's decoder (timings_ms.decoder_ms).
- floor: in the same Ray, after the served part: bench_floor.run_floor (the same topology and payloads,
  no model work); its JSON click route is the warm click's floor.
- overhead: (warm click p50 - model-only 1-object click p50) / floor click p50, and warm click p50 - model work.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import (
    VIDEO_IDLE,
    DeployError,
    H,
    W,
    app_cpus,
    base_parser,
    deploy_or_fail,
    free_port,
    jpeg,
    overhead,
    print_overhead,
    pyplot,
    setup,
    start_ray,
    stop_ray,
    summary,
    test_image,
    write_result,
)


def click_body(image_id: str, i: int, objects: int = 1) -> dict:
    rng = np.random.RandomState(i)
    objs = [{"points": [[float(rng.randint(0, W)), float(rng.randint(0, H))]], "point_labels": [1]}
            for _ in range(objects)]
    return {"image_id": image_id, "objects": objs}


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def bench_model(model_dir: str, iters: int, device: str) -> dict:
    import torch

    from serve_app.codecs.image_decode import resize_square
    from serve_app.config import ClickConfig, ModelConfig
    from serve_app.model.click import ClickRunner
    from serve_app.model.types import AutoRequest, ClickObject, ClickRequest

    runner = ClickRunner.from_config(ModelConfig(model_id=model_dir, device=device), ClickConfig(cache_bytes=4 * 1024**3))
    cuda = runner.placement.device.type == "cuda"
    size = runner.info.image_size
    pixels = [resize_square(test_image(seed=i), size) for i in range(iters + 2)]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def encode(i):
        runner.segment_batch([ClickRequest(f"m{i}", (), pixels[i], (H, W))])
        sync()

    timed(encode, 2)
    rows = {"vision_encoder": summary(timed(lambda i: encode(i + 2), iters))}
    print(f"model  vision encoder        p50={rows['vision_encoder']['p50_ms']:8.2f} ms", flush=True)
    for n in (1, 4, 16):
        objs = tuple(ClickObject(np.array([[10.0 + 50 * k, 20.0 + 30 * k]], np.float32), np.array([1]))
                     for k in range(n))

        def click(i, objs=objs):
            runner.segment_batch([ClickRequest("m2", objs)])
            sync()

        timed(click, 3)
        rows[f"click_{n}_objects"] = summary(timed(click, iters * 2))
        print(f"model  click {n:2d} objects      p50={rows[f'click_{n}_objects']['p50_ms']:8.2f} ms", flush=True)

    def auto(i):
        runner.generate_masks(AutoRequest("m2", points_per_side=16, points_per_batch=64, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0))
        sync()

    timed(auto, 1)
    rows["auto_16x16"] = summary(timed(auto, max(3, iters // 4)))
    print(f"model  auto 16x16 grid       p50={rows['auto_16x16']['p50_ms']:8.2f} ms", flush=True)
    rows["embedding_bytes"] = runner.cache.nbytes // max(1, len(runner.cache))
    return rows


def bench_served(model_dir: str, clicks: int, cold: int, num_gpus: float, *, floor_iters: int = 0,
                 deploy_timeout_s: float = 300.0, warm_only: bool = False, routing: str = "consistent_hash",
                 profile_s: float = 0.0, profile_prefix: str = "") -> dict:
    """One local Ray: the sam3 app (build_app, file:// storage) over HTTP, then (floor_iters > 0) the floor app
    of bench_floor.py with the same payloads (its `click` route: JSON in, a small object to the model
    deployment, small JSON out). Fails (DeployError) instead of hanging when a replica cannot be placed.
    warm_only: only the warm clicks (and the floor). profile_s > 0: then py-spy records the ingress and the
    ClickSegmenter replica for that long under 1-client warm clicks (flame graphs + collapsed stacks at
    `profile_prefix`-{Sam3Ingress,ClickSegmenter}.{svg,txt})."""
    import shutil

    import requests
    from ray import serve

    from serve_app.app import build_app

    store = tempfile.mkdtemp(prefix="bench-store-")
    port = free_port()
    # concept + click share one GPU in the benchmark (0.5 each) so a single-GPU machine runs it
    gpu = {"num_gpus": num_gpus / 2, "num_cpus": 1}
    args = {"model": {"model_id": model_dir}, "storage": {"uri": f"file://{store}"},
            "concept": {"replica": {**gpu, "max_ongoing_requests": 32}},
            "click": {"replica": {**gpu, "max_ongoing_requests": 64}, "cache_bytes": 4 * 1024**3,
                      "routing": routing},
            "observability": {"debug_interface": True},  # debug_stats: the vision-encoder counter
            "video": VIDEO_IDLE}
    # logical CPUs for every replica of the app (+2 for the floor app); a 2-core box gets more than its cores
    tmp = start_ray(app_cpus(args) + 2, port)
    try:
        deploy_or_fail(build_app(args), name="sam3", route_prefix="/", timeout_s=deploy_timeout_s)
    except BaseException:
        stop_ray(tmp)
        shutil.rmtree(store, ignore_errors=True)
        raise
    base = f"http://127.0.0.1:{port}"
    handle = serve.get_deployment_handle("ClickSegmenter", app_name="sam3")
    session = requests.Session()

    def upload(seed: int, precompute: bool) -> str:
        r = session.post(base + "/v1/images", files={"file": ("x.jpg", jpeg(seed), "image/jpeg")},
                         params={"precompute": str(precompute).lower()}, timeout=300)
        r.raise_for_status()
        return r.json()["image_id"]

    def click(image_id: str, i: int, objects: int = 1, s=None) -> dict:
        r = (s or session).post(base + "/v1/pvs/image", json=click_body(image_id, i, objects), timeout=300)
        r.raise_for_status()
        return r.json()

    out: dict = {}
    try:
        warm_id = upload(0, True)
        for i in range(5):
            click(warm_id, i)
        before = handle.debug_stats.remote().result()["vision_calls"]
        parts: list[dict] = []
        out["warm_click"] = summary(timed(lambda i: parts.append(click(warm_id, i)["timings_ms"]), clicks))
        # where a warm click's time goes, as the ingress measured it (means, ms); the rest of the HTTP
        # latency is the client, the Serve proxy and the proxy -> ingress hop
        out["warm_click_breakdown_ms"] = {k: statistics.fmean(p.get(k, 0.0) for p in parts) for k in parts[0]}
        # the model work of a warm click, as the replica timed it: the decoder on the cached embedding
        # (vision_ms of a warm click is the cache lookup, ~0.2 ms: not model work)
        out["model_work_warm"] = summary([p.get("decoder_ms", 0.0) for p in parts])
        out["warm_click_4_objects"] = summary(timed(lambda i: click(warm_id, i, 4), clicks // 2))
        out["warm_vision_calls"] = handle.debug_stats.remote().result()["vision_calls"] - before
        print("served warm click breakdown  " + "  ".join(
            f"{k}={v:.1f}" for k, v in out["warm_click_breakdown_ms"].items()), flush=True)
        print(f"served warm click            p50={out['warm_click']['p50_ms']:8.1f} ms  "
              f"p99={out['warm_click']['p99_ms']:8.1f} ms  (vision calls: {out['warm_vision_calls']})", flush=True)
        if profile_s > 0:
            out["profiled_warm_click"] = profile_replicas(tmp, profile_s, profile_prefix,
                                                          lambda i: click(warm_id, i))
        if warm_only:
            return finish_served(out, handle, port, floor_iters)
        cold_ids = [upload(1000 + i, False) for i in range(cold)]
        hits = []

        def first_click(i):
            hits.append(click(cold_ids[i], i)["cache_hit"])

        out["cold_click"] = summary(timed(first_click, cold))
        out["cold_cache_hits"] = sum(hits)
        print(f"served cold click (1st)      p50={out['cold_click']['p50_ms']:8.1f} ms  "
              f"p99={out['cold_click']['p99_ms']:8.1f} ms", flush=True)
        out["upload_precompute"] = summary(timed(lambda i: upload(2000 + i, True), max(3, cold // 2)))
        print(f"served upload + precompute   p50={out['upload_precompute']['p50_ms']:8.1f} ms", flush=True)
        conc_rows = []
        for conc in (1, 2, 4, 8):
            ids = [upload(3000 + k, True) for k in range(conc)]
            n = max(clicks // 2, conc * 8)

            def one(i, ids=ids):
                t = time.perf_counter()
                body = click(ids[i % len(ids)], i, s=requests)
                return (time.perf_counter() - t) * 1e3, body["batch_size"]

            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                res = list(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
            row = {"concurrency": conc, **summary([r[0] for r in res]), "clicks_per_s": n / wall,
                   "mean_batch_size": statistics.fmean(r[1] for r in res)}
            conc_rows.append(row)
            print(f"served c={conc}  p50={row['p50_ms']:7.1f} ms  {row['clicks_per_s']:7.1f} clicks/s  "
                  f"batch={row['mean_batch_size']:.2f}", flush=True)
        out["concurrent_warm_clicks"] = conc_rows
        return finish_served(out, handle, port, floor_iters)
    finally:
        stop_ray(tmp)
        shutil.rmtree(store, ignore_errors=True)


def finish_served(out: dict, handle, port: int, floor_iters: int) -> dict:
    """The replica's counters, then (floor_iters > 0) the floor in the same Ray, the sam3 app deleted first."""
    from ray import serve

    out["replica_stats"] = handle.debug_stats.remote().result()
    if floor_iters > 0:
        from bench_floor import run_floor

        size = handle.info.remote().result().image_size
        serve.delete("sam3")  # the floor runs alone, like the service did
        out["floor"] = run_floor(port, size=size, iters=floor_iters)
    return out


def replica_pids(ray_tmp: str, app: str = "sam3") -> dict[str, int]:
    """PIDs of this Ray's (temp dir `ray_tmp`) Sam3Ingress and ClickSegmenter replicas: worker processes named
    ray::ServeReplica:<app>:<deployment> whose raylet runs from `ray_tmp` (other Rays may run on the box)."""
    import psutil

    pids: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            for name in ("Sam3Ingress", "ClickSegmenter"):
                parent = proc.parent() if f"ServeReplica:{app}:{name}" in cmd else None
                if parent is not None and ray_tmp in " ".join(parent.cmdline()):
                    pids[name] = proc.info["pid"]
        except (psutil.Error, OSError):
            continue
    return pids


def profile_replicas(ray_tmp: str, seconds: float, prefix: str, click) -> dict:
    """py-spy record (200 Hz) of the ingress and the ClickSegmenter while `click(i)` runs for `seconds` at
    1 client; writes `prefix`-<deployment>.svg (flame graph) and .txt (collapsed stacks). Returns the clicks'
    latency summary and the files."""
    import shutil
    import subprocess

    if shutil.which("py-spy") is None:
        print("profile: py-spy is not installed (pip install py-spy), skipped", flush=True)
        return {}
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for name, pid in replica_pids(ray_tmp).items():
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
            path = f"{prefix}-{name}.{ext}"
            files.append(path)
            procs.append(subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "-d", str(int(seconds)),
                                           "-f", fmt, "-o", path, "--nonblocking"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attached
    lat, end, i = [], time.monotonic() + seconds, 0
    while time.monotonic() < end:
        t = time.perf_counter()
        click(i)
        lat.append((time.perf_counter() - t) * 1e3)
        i += 1
    for p in procs:
        p.wait()
    print(f"profile: {len(lat)} warm clicks under py-spy -> {', '.join(files)}", flush=True)
    return {**summary(lat), "files": files}


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    s = result.get("served", {})
    names = [k for k in ("warm_click", "warm_click_4_objects", "cold_click", "upload_precompute") if k in s]
    x = np.arange(len(names))
    for off, q in zip((-0.25, 0, 0.25), ("p50_ms", "p95_ms", "p99_ms")):
        axes[0].bar(x + off, [s[n][q] for n in names], width=0.25, label=q.removesuffix("_ms"))
    axes[0].set_xticks(x, [n.replace("_", "\n") for n in names])
    axes[0].set_ylabel("ms")
    axes[0].set_title("HTTP latency: warm cache vs cold image")
    axes[0].legend()
    rows = s.get("concurrent_warm_clicks", [])
    if rows:
        ax = axes[1]
        ax.plot([r["concurrency"] for r in rows], [r["clicks_per_s"] for r in rows], "o-", label="clicks/s")
        ax.set_xlabel("concurrent clients (different images)")
        ax.set_ylabel("clicks/s")
        ax2 = ax.twinx()
        ax2.plot([r["concurrency"] for r in rows], [r["p50_ms"] for r in rows], "s--", color="tab:red", label="p50 ms")
        ax2.set_ylabel("p50 ms")
        ax.set_title("warm clicks under concurrency")
        ax.legend(loc="upper left")
        ax2.legend(loc="lower right")
    fig.suptitle(f"SAM 3 clicks (ClickSegmenter) — {result['model']} on {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/pvs.json")
    parser.add_argument("--iters", type=int, default=20, help="model-only iterations")
    parser.add_argument("--clicks", type=int, default=100, help="warm clicks over HTTP")
    parser.add_argument("--cold", type=int, default=20, help="cold images (first click each)")
    parser.add_argument("--floor-iters", type=int, default=50, help="floor requests at 1 client (0: no floor)")
    parser.add_argument("--deploy-timeout", type=float, default=300.0, help="seconds for the app to be RUNNING")
    parser.add_argument("--warm-only", action="store_true", help="served: warm clicks only (+ the floor)")
    parser.add_argument("--routing", choices=["consistent_hash", "default"], default="consistent_hash",
                        help="click.routing of the served app")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="py-spy the ingress and ClickSegmenter replicas for SECONDS of warm clicks")
    args = parser.parse_args()
    model_dir, cuda, header = setup(args)
    result = {**header, "image": f"{W}x{H} JPEG", "model_only": bench_model(model_dir, args.iters, args.device)}
    if not args.skip_served:
        try:
            result["served"] = bench_served(model_dir, args.clicks, args.cold, 1 if cuda else 0,
                                            floor_iters=args.floor_iters, deploy_timeout_s=args.deploy_timeout,
                                            warm_only=args.warm_only, routing=args.routing, profile_s=args.profile,
                                            profile_prefix=str(Path(args.out).with_suffix("")) + "-profile")
        except DeployError as exc:
            sys.exit(f"bench_click: {exc}")
        served = result["served"]
        if "floor" in served:
            result["floor"] = served.pop("floor")
            result["overhead"] = overhead(served["warm_click"]["p50_ms"],
                                          result["model_only"]["click_1_objects"]["p50_ms"],
                                          result["floor"]["click"]["c1"]["p50_ms"],
                                          served["model_work_warm"]["p50_ms"])
            print_overhead("warm click, 1 object, 1 client (model-only: decoder on a cached embedding; floor: JSON "
                           "click)", result["overhead"])
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
