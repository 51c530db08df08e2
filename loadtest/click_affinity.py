"""Does routing keep an image's clicks on the replica that caches its embedding? A check, not a test.

    python loadtest/click_affinity.py --replicas 3

Starts a local Ray Serve app (tiny checkpoint, file:// storage) once per routing mode with N
ClickSegmenter replicas, uploads images (embedding computed at upload on the replica the router picks),
clicks each a few times and counts `cache_hit` in the answers. With `click.routing: consistent_hash`
every click should hit; with Serve's default router about (N-1)/N of the first clicks per replica miss and
are recomputed from storage (same answers, more vision-encoder work). Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(model_dir: str, routing: str, replicas: int, images: int, rounds: int) -> dict:
    import ray
    import requests
    from bench_common import VIDEO_IDLE
    from ray import serve

    from serve_app.app import build_app
    from tests.helpers import png_bytes

    tmp = tempfile.mkdtemp(prefix="affinity-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 18777})
        cpu = {"num_gpus": 0, "num_cpus": 0.5}
        args = {"model": {"model_id": model_dir}, "storage": {"uri": f"file://{tmp}/store"},
                "concept": {"replica": cpu},
                "click": {"replica": {**cpu, "num_replicas": replicas}, "routing": routing}, "video": VIDEO_IDLE}
        serve.run(build_app(args), name="sam3", route_prefix="/")
        base = "http://127.0.0.1:18777"
        ids = [requests.post(base + "/v1/images", files={"file": ("a.png", png_bytes(80, 60, seed=100 + i), "image/png")},
                             timeout=120).json()["image_id"] for i in range(images)]
        hits = [requests.post(base + "/v1/pvs/image", json={"image_id": iid, "objects": [{"points": [[10, 10]]}]},
                              timeout=120).json()["cache_hit"] for _ in range(rounds) for iid in ids]
        return {"routing": routing, "replicas": replicas, "images": images, "clicks": len(hits), "cache_hits": sum(hits)}
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-dir", help="checkpoint directory (default: build the tiny one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    model_dir = args.model_dir or str(build_tiny_checkpoint(tempfile.mkdtemp(prefix="affinity-ckpt-")))
    for routing in ("consistent_hash", "default"):
        print(json.dumps(run(model_dir, routing, args.replicas, args.images, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
