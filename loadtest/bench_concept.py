"""Concept-segmentation benchmark: model-only vs served, batch sizes 1/2/4/8, mask encoding cost.

    python loadtest/bench_concept.py --model tiny --out loadtest/results/concept_tiny_cpu.json
    python loadtest/bench_concept.py --model full-random --out loadtest/results/concept_full_gpu.json   # on a GPU

A benchmark, not a test: it prints a table and writes JSON (+ a PNG plot next to it when matplotlib is
installed). `tiny` measures serving overhead on CPU; `full-random` builds the real SAM 3 architecture
with random weights (the cost of facebook/sam3) and belongs on a GPU machine.

Sections
- model_only: ConceptRunner.run on B images x P prompts (no Ray, no HTTP): ms per batch, images/s.
- mask_encoding: upsample + COCO RLE of n masks at 1024x768 on CPU (work the ingress does).
- kept_masks: the replica's post-processing of a detector call at facebook/sam3's output size (P pairs x 200
  queries x 288x288 mask logits, 10 kept per pair) on the benchmark's device: the former per-pair path
  (sigmoid over every query, then a gather and a device-to-host copy per pair) vs `_kept_mask_probs` (one
  gather of the kept queries, sigmoid, one copy); bit-identical outputs (checked).
- served: a local Ray Serve app built by build_app, C concurrent HTTP clients on 127.0.0.1: latency
  percentiles, requests/s and the batch sizes the model replica actually formed.
  timings_c1_ms / model_work_c1: the replica's own timings_ms at 1 client (model work = vision_ms + detector_ms).
- floor: in the same Ray, after the served part: bench_floor.run_floor (the same topology and payloads,
  no model work; pixels at the model's input size).
- overhead: (served p50 - model-only p50) / floor p50 at 1 client (model-only: batch 1; floor: multipart
  JPEG), and served p50 - model work.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import (
    TEXTS,
    VIDEO_IDLE,
    DeployError,
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
    write_result,
)

BATCH_SIZES = (1, 2, 4, 8)

def bench_model(model_dir: str, prompts: int, iters: int, device: str) -> list[dict]:
    """ConceptRunner alone (no Ray, no HTTP) at BATCH_SIZES: campaign_model.concept_curve."""
    from campaign_model import concept_curve

    from serve_app.config import ModelConfig
    from serve_app.model.concept import ConceptRunner

    runner = ConceptRunner.from_config(ModelConfig(model_id=model_dir, device=device))
    return concept_curve(runner, BATCH_SIZES, prompts, iters)


def realistic_masks(n: int, seed: int, size: int = 288) -> np.ndarray:
    """float16 (n, size, size) sigmoid probabilities like the model's: one soft elliptical blob each, covering
    0.5-10% of the image at a random position (may touch the border), with a little noise."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size), np.float16)
    for i in range(n):
        r, aspect = np.sqrt(rng.uniform(0.005, 0.1) * size * size / np.pi), rng.uniform(0.6, 1.6)
        ry, rx = r * aspect, r / aspect
        d = np.hypot((yy - rng.uniform(0, size)) / ry, (xx - rng.uniform(0, size)) / rx)
        out[i] = 1 / (1 + np.exp(-(1 - d) * 8 - rng.randn(size, size) * 0.5))
    return out


def bench_masks(iters: int) -> list[dict]:
    """Old (upsample_masks to (n,H,W) + encode_rle per mask) vs new (encode_mask per instance: window only):
    area + COCO RLE of n realistic instances, interleaved so both see the same machine load."""
    from serve_app.codecs.masks import encode_mask, encode_rle, upsample_masks

    def old(probs: np.ndarray, height: int, width: int) -> None:
        for m in upsample_masks(probs, height, width, 0.5):
            int(m.sum()), encode_rle(m)

    def new(probs: np.ndarray, height: int, width: int) -> None:
        for p in probs:
            m = encode_mask(p, height, width, 0.5)
            m.area, m.rle()

    rows = []
    for width, height in ((1024, 768), (4000, 3000)):
        for n in (10, 50):
            probs = realistic_masks(n, seed=n)
            lat: dict[str, list[float]] = {"old": [], "new": []}
            for i in range(iters + 1):
                for name, fn in (("old", old), ("new", new)):
                    t = time.perf_counter()
                    fn(probs, height, width)
                    if i:  # the first round warms up
                        lat[name].append((time.perf_counter() - t) * 1e3)
            row = {"masks": n, "height": height, "width": width, "old": summary(lat["old"]),
                   "new": summary(lat["new"])}
            row["speedup_p50"] = row["old"]["p50_ms"] / row["new"]["p50_ms"]
            rows.append(row)
            print(f"masks  {width}x{height} n={n:3d}  old p50={row['old']['p50_ms']:8.1f} ms  "
                  f"new p50={row['new']['p50_ms']:7.1f} ms  x{row['speedup_p50']:.1f}", flush=True)
    return rows


def bench_served(model_dir: str, prompts: int, per_client: int, num_gpus: float) -> list[dict]:
    """The served rows only (what loadtest/campaign.py reads); `served_session` adds the floor and timings."""
    return served_session(model_dir, prompts, per_client, num_gpus, floor_iters=0)["served"]


def served_session(model_dir: str, prompts: int, per_client: int, num_gpus: float, *, floor_iters: int = 0,
                   deploy_timeout_s: float = 300.0) -> dict:
    """One local Ray: the sam3 app (build_app) over HTTP at 1/2/4/8 clients, then (floor_iters > 0) the floor
    app of bench_floor.py with the same payloads at the model's input size. {"served": rows,
    "model_work_c1": the replica's own vision + detector ms (timings_ms) at 1 client, "timings_c1_ms": the
    mean of every timings_ms field at 1 client, "floor": run_floor's result}. Fails (DeployError) instead of
    hanging when a replica cannot be placed."""

    import requests
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    args = {"model": {"model_id": model_dir},
            "concept": {"replica": {"num_gpus": num_gpus, "num_cpus": 1, "max_ongoing_requests": 32}},  # default batching
            "video": VIDEO_IDLE}
    # logical CPUs for every replica of the app (+2 for the floor app); a 2-core box gets more than its cores
    tmp = start_ray(app_cpus(args) + 2, port)
    url = f"http://127.0.0.1:{port}/v1/pcs/image"
    images = [jpeg(i) for i in range(8)]

    def one(i: int) -> tuple[float, int, dict]:
        t = time.perf_counter()
        r = requests.post(url, files={"image": ("x.jpg", images[i % 8], "image/jpeg")},
                          data={"prompts": json.dumps([{"text": TEXTS[(i + k) % len(TEXTS)]} for k in range(prompts)])},
                          timeout=300)
        r.raise_for_status()
        body = r.json()
        return (time.perf_counter() - t) * 1e3, body["batch_size"], body["timings_ms"]

    out: dict = {}
    try:
        deploy_or_fail(build_app(args), name="sam3", route_prefix="/", timeout_s=deploy_timeout_s)
        size = serve.get_deployment_handle("ConceptSegmenter", app_name="sam3").info.remote().result().image_size
        for _ in range(3):
            one(0)
        rows = []
        for conc in BATCH_SIZES:
            n = conc * per_client
            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                results = list(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
            lat = [r[0] for r in results]
            row = {"concurrency": conc, "requests": n, **summary(lat), "requests_per_s": n / wall,
                   "mean_batch_size": statistics.fmean(r[1] for r in results)}
            rows.append(row)
            print(f"served c={conc}  p50={row['p50_ms']:8.1f} ms  {row['requests_per_s']:7.1f} req/s  "
                  f"batch={row['mean_batch_size']:.2f}", flush=True)
            if conc == 1:
                timings = [r[2] for r in results]
                out["timings_c1_ms"] = {k: statistics.fmean(t.get(k, 0.0) for t in timings) for k in timings[0]}
                out["model_work_c1"] = summary([t.get("vision_ms", 0.0) + t.get("detector_ms", 0.0) for t in timings])
                print("served c=1 timings_ms (mean)  " + "  ".join(
                    f"{k}={v:.1f}" for k, v in out["timings_c1_ms"].items()), flush=True)
        out["served"] = rows
        if floor_iters > 0:
            from bench_floor import run_floor

            serve.delete("sam3")  # the floor runs alone, like the service did
            out["floor"] = run_floor(port, size=size, iters=floor_iters)
    finally:
        stop_ray(tmp)
    return out


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    m, s = result["model_only"], result.get("served", [])
    axes[0].plot([r["batch_size"] for r in m], [r["images_per_s"] for r in m], "o-", label="model only (img/s)")
    if s:
        axes[0].plot([r["concurrency"] for r in s], [r["requests_per_s"] for r in s], "s-", label="served (req/s)")
    axes[0].set_xlabel("batch size / concurrent clients")
    axes[0].set_title("throughput")
    axes[0].legend()
    axes[1].plot([r["batch_size"] for r in m], [r["p50_ms"] for r in m], "o-", label="model p50 per batch")
    if s:
        axes[1].plot([r["concurrency"] for r in s], [r["p50_ms"] for r in s], "s-", label="served p50")
        axes[1].plot([r["concurrency"] for r in s], [r["p95_ms"] for r in s], "s--", label="served p95")
    axes[1].set_xlabel("batch size / concurrent clients")
    axes[1].set_ylabel("ms")
    axes[1].set_title("latency")
    axes[1].legend()
    fig.suptitle(f"SAM 3 concept segmentation — {result['model']} on {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def bench_kept_masks(iters: int, device: str, pair_counts: tuple[int, ...] = (1, 8, 16)) -> list[dict]:
    """kept_masks (module docstring): old vs new at P = `pair_counts` pairs, interleaved."""
    import torch

    from serve_app.model.concept import _kept_mask_probs

    dev = torch.device("cuda" if device == "cuda" else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # the runner's default dtype there
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for pairs in pair_counts:
        logits = torch.randn(pairs, 200, 288, 288, generator=gen).to(dev, dtype)
        picks = {i: torch.randperm(200, generator=gen)[:10] for i in range(pairs)}

        def old() -> list[np.ndarray]:
            probs = logits.float().sigmoid()
            return [probs[i][picks[i].to(dev)].to(torch.float16).cpu().numpy() for i in range(pairs)]

        def new() -> list[np.ndarray]:
            out = _kept_mask_probs(logits, picks)
            return [out[i] for i in range(pairs)]

        assert all(a.tobytes() == b.tobytes() for a, b in zip(old(), new()))
        lat: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(iters):
            for name, fn in (("old", old), ("new", new)):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                lat[name].append((time.perf_counter() - t) * 1e3)
        row = {"pairs": pairs, "queries": 200, "mask": 288, "kept_per_pair": 10, "dtype": str(dtype),
               "device": dev.type, "old": summary(lat["old"]), "new": summary(lat["new"])}
        row["speedup_p50"] = row["old"]["p50_ms"] / row["new"]["p50_ms"]
        rows.append(row)
        print(f"kept masks  P={pairs:2d}  old p50={row['old']['p50_ms']:8.2f} ms  new p50={row['new']['p50_ms']:7.2f} ms"
              f"  x{row['speedup_p50']:.1f}", flush=True)
    return rows


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/pcs.json")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per image")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=8, help="served requests per concurrent client")
    parser.add_argument("--floor-iters", type=int, default=50, help="floor requests at 1 client (0: no floor)")
    parser.add_argument("--deploy-timeout", type=float, default=300.0, help="seconds for the app to be RUNNING")
    args = parser.parse_args()
    model_dir, cuda, header = setup(args)
    result = {**header, "image": "1024x768 JPEG", "prompts_per_image": args.prompts,
              "model_only": bench_model(model_dir, args.prompts, args.iters, args.device),
              "mask_encoding": bench_masks(max(3, args.iters // 4)),
              "kept_masks": bench_kept_masks(max(3, args.iters // 4), "cuda" if cuda else "cpu")}
    if not args.skip_served:
        try:
            served = served_session(model_dir, args.prompts, args.per_client, 1 if cuda else 0,
                                    floor_iters=args.floor_iters, deploy_timeout_s=args.deploy_timeout)
        except DeployError as exc:
            sys.exit(f"bench_concept: {exc}")
        result.update(served)
        if "floor" in served:
            c1 = served["served"][0]
            result["overhead"] = overhead(c1["p50_ms"], result["model_only"][0]["p50_ms"],
                                          served["floor"]["image"]["c1"]["p50_ms"],
                                          served["model_work_c1"]["p50_ms"])
            print_overhead(f"concept, 1 client, {args.prompts} prompts (model-only: batch 1; floor: multipart JPEG, "
                           f"{served['floor']['size']} px)", result["overhead"])
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
