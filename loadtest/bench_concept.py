"""Concept-segmentation benchmark: model-only vs served, batch sizes 1/2/4/8, mask encoding cost.

    python loadtest/bench_concept.py --model tiny --out loadtest/results/concept_tiny_cpu.json
    python loadtest/bench_concept.py --model full-random --out loadtest/results/concept_full_gpu.json   # on a GPU

A benchmark, not a test: it prints a table and writes JSON (+ a PNG plot next to it when matplotlib is
installed). `tiny` measures serving overhead on CPU; `full-random` builds the real SAM 3 architecture
with random weights (the cost of facebook/sam3) and belongs on a GPU machine.

Sections
- model_only: ConceptRunner.run on B images x P prompts (no Ray, no HTTP): ms per batch, images/s.
- mask_encoding: upsample + COCO RLE of n masks at 1024x768 on CPU (work the ingress does).
- served: a local Ray Serve app built by build_app, C concurrent HTTP clients on 127.0.0.1: latency
  percentiles, requests/s and the batch sizes the model replica actually formed.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import VIDEO_IDLE, base_parser, pyplot, setup, summary, write_result

BATCH_SIZES = (1, 2, 4, 8)
TEXTS = ("car", "person", "dog", "tree", "red shirt", "bicycle", "cat", "house")


def test_image(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    img = (rng.rand(height // 8 + 1, width // 8 + 1, 3) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.kron(img, np.ones((8, 8, 1), np.uint8))[:height, :width])


def bench_model(model_dir: str, prompts: int, iters: int, device: str) -> list[dict]:
    import torch

    from serve_app.codecs.image_decode import resize_square
    from serve_app.config import ModelConfig
    from serve_app.model.concept import ConceptRunner
    from serve_app.model.types import ConceptPrompt, ConceptRequest

    runner = ConceptRunner.from_config(ModelConfig(model_id=model_dir, device=device))
    size = runner.info.image_size
    rows = []
    for bs in BATCH_SIZES:
        reqs = [ConceptRequest(resize_square(test_image(1024, 768, i), size), (768, 1024),
                               tuple(ConceptPrompt(TEXTS[(i + k) % len(TEXTS)]) for k in range(prompts)), 0.5, 100)
                for i in range(bs)]
        for _ in range(2):
            runner.segment_batch(reqs)
        lat = []
        for _ in range(iters):
            if runner.placement.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            runner.segment_batch(reqs)
            if runner.placement.device.type == "cuda":
                torch.cuda.synchronize()
            lat.append((time.perf_counter() - t) * 1e3)
        row = {"batch_size": bs, "prompts_per_image": prompts, **summary(lat)}
        row["images_per_s"] = bs * 1e3 / row["p50_ms"]
        rows.append(row)
        print(f"model  bs={bs}  p50={row['p50_ms']:8.1f} ms  {row['images_per_s']:8.1f} img/s", flush=True)
    return rows


def bench_masks(iters: int) -> list[dict]:
    from serve_app.codecs.masks import encode_rle, upsample_masks

    rows = []
    for n in (1, 10, 50):
        probs = np.random.RandomState(n).rand(n, 288, 288).astype(np.float16)
        lat = []
        for _ in range(iters):
            t = time.perf_counter()
            for m in upsample_masks(probs, 768, 1024, 0.5):
                encode_rle(m)
            lat.append((time.perf_counter() - t) * 1e3)
        rows.append({"masks": n, "height": 768, "width": 1024, **summary(lat)})
        print(f"masks  n={n:3d}  p50={rows[-1]['p50_ms']:8.1f} ms", flush=True)
    return rows


def bench_served(model_dir: str, prompts: int, per_client: int, num_gpus: float) -> list[dict]:
    import io

    import ray
    import requests
    from PIL import Image
    from ray import serve

    from serve_app.app import build_app

    tmp = tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    # logical CPUs: the app has 5 deployments (1 CPU each by default); on a 2-core box they must all schedule
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    port = 18765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": {"model_id": model_dir},
            "concept": {"replica": {"num_gpus": num_gpus, "num_cpus": 1, "max_ongoing_requests": 32},
                        "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}},
            "video": VIDEO_IDLE}
    serve.run(build_app(args), name="sam3", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/pcs/image"
    images = []
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(test_image(1024, 768, i)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())

    def one(i: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = requests.post(url, files={"image": ("x.jpg", images[i % 8], "image/jpeg")},
                          data={"prompts": json.dumps([{"text": TEXTS[(i + k) % len(TEXTS)]} for k in range(prompts)])},
                          timeout=300)
        r.raise_for_status()
        return (time.perf_counter() - t) * 1e3, r.json()["batch_size"]

    rows = []
    try:
        for _ in range(3):
            one(0)
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
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


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


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/pcs.json")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per image")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=8, help="served requests per concurrent client")
    args = parser.parse_args()
    model_dir, cuda, header = setup(args)
    result = {**header, "image": "1024x768 JPEG", "prompts_per_image": args.prompts,
              "model_only": bench_model(model_dir, args.prompts, args.iters, args.device),
              "mask_encoding": bench_masks(max(3, args.iters // 4))}
    if not args.skip_served:
        result["served"] = bench_served(model_dir, args.prompts, args.per_client, 1 if cuda else 0)
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
