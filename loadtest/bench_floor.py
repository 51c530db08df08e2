"""Floor benchmark: what this service's topology costs with NO model work (the least a served request can take).

    python loadtest/bench_floor.py --out loadtest/results/floor_cpu.json
    python loadtest/bench_floor.py --iters 200 --size 1008 --out loadtest/results/floor_gpu_host.json

A benchmark, not a test: it prints a table and writes JSON (+ a PNG plot next to it when matplotlib is
installed). bench_concept.py and bench_click.py call `run_floor` in their own Ray session (after their
served part, with their model's input size) and report the serving overhead against it.

The app has the service's topology and payloads, and nothing else: Serve's HTTP proxy -> a FastAPI ingress
deployment (`FloorIngress`, 1 logical CPU like Sam3Ingress) -> a model deployment (`FloorModel`, 1 logical CPU,
no GPU) that returns a small result at once. Routes (under the app's route prefix, default /floor):
- POST /image (multipart, like POST /v1/pcs/image): the service's own body reader
  (serve_app.ingress.body.read_form_file), decode (serve_app.codecs.image_decode.decode_image in a thread, the
  function ImageLibrary.decode runs), resize to S x S (resize_square in a thread, as build_request does),
  a model.types.ConceptRequest with the uint8 pixels and the form's prompts handed to the model deployment,
  a small JSON answer. Client: a 1024x768 JPEG (quality 90, bench_concept's test image, ~149 kB), a new
  connection per request (as bench_concept's served part).
- POST /click (JSON, like POST /v1/pvs/image by image_id): read_json_model(ClickImageRequest), one
  model.types.ClickRequest (to_click_object per object) handed to the model deployment, a small JSON answer.
  Client: bench_click's click body (1 object, 1 point), one keep-alive session per client (as bench_click's
  warm clicks).
Not in the floor: the real ingress's middleware (request id, error mapping), its model-info call and deadline
wrapper, consistent-hash routing of clicks, batching, mask encoding, storage.

Reported per route: p50/p95/p99 at 1 client (`--iters` requests) and at `--clients` concurrent clients
(`--per-client` requests each), requests/s.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at run time, in a
# replica that got this module's classes pickled by value (run as a script), without its module globals.
import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
from bench_common import (
    TEXTS as BENCH_TEXTS,
)
from bench_common import (
    DeployError,
    H,
    W,
    deploy_or_fail,
    free_port,
    jpeg,
    pyplot,
    start_ray,
    stop_ray,
    summary,
    write_result,
)
from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

FLOOR_APP, FLOOR_PREFIX = "floor", "/floor"
TEXTS = BENCH_TEXTS[:2]


def click_body(i: int) -> dict:
    """bench_click.click_body: one object, one positive point at a random pixel."""
    rng = np.random.RandomState(i)
    return {"image_id": "0" * 64, "objects": [{"points": [[float(rng.randint(0, W)), float(rng.randint(0, H))]],
                                               "point_labels": [1]}]}


# ------------------------------------------------------------------------------------------------ the app


@serve.deployment(ray_actor_options={"num_cpus": 1, "num_gpus": 0}, max_ongoing_requests=64)
class FloorModel:
    """The model deployment without a model: a small answer to every call."""

    def segment(self, request: Any) -> dict:
        return {"batch_size": 1, "pixels": list(request.pixels.shape), "prompts": len(request.prompts)}

    def click(self, request: Any) -> dict:
        return {"batch_size": 1, "objects": len(request.objects), "cache_key": request.cache_key}


@serve.deployment(ray_actor_options={"num_cpus": 1, "num_gpus": 0}, max_ongoing_requests=64)
@serve.ingress()
class FloorIngress:
    """The ingress without the service: body reading, decode, resize and the handle call of the real routes."""

    def __init__(self, model: DeploymentHandle, size: int):
        self.model = model
        self.size = size

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serve_app.codecs.image_decode import decode_image, resize_square
        from serve_app.config import LimitsConfig
        from serve_app.ingress.body import image_body_limit, read_form_file, read_json_model
        from serve_app.model.types import ClickRequest, ConceptPrompt, ConceptRequest
        from serve_app.pipelines.click import to_click_object
        from serve_app.schemas import ClickImageRequest

        limits = LimitsConfig()
        model, size = self.model, self.size
        app = FastAPI()

        @app.post("/image")
        async def image(request: Request) -> dict:
            data, form = await read_form_file(request, ("image",), max_file_bytes=limits.max_image_bytes,
                                              body_limit=image_body_limit(limits), max_fields=64)
            prompts = tuple(ConceptPrompt(p["text"]) for p in json.loads(str(form.get("prompts") or "[]")))
            decoded = await asyncio.to_thread(decode_image, data, max_bytes=limits.max_image_bytes,
                                              max_pixels=limits.max_image_pixels)
            pixels = await asyncio.to_thread(resize_square, decoded.rgb, size)
            req = ConceptRequest(pixels, (decoded.height, decoded.width), prompts, 0.5, 100)
            out = await model.segment.remote(req)
            return {"image_id": decoded.sha256, "width": decoded.width, "height": decoded.height, **out}

        @app.post("/click")
        async def click(request: Request) -> dict:
            req = await read_json_model(request, ClickImageRequest, 1024 * 1024)
            assert req.image_id is not None
            objects = tuple(to_click_object(o, i, 288) for i, o in enumerate(req.objects))
            out = await model.click.remote(ClickRequest(f"default/{req.image_id}", objects))
            return {"image_id": req.image_id, **out}

        return app


def floor_app(size: int) -> Any:
    ingress, model = cast(Any, FloorIngress), cast(Any, FloorModel)  # Deployments at run time (mypy sees classes)
    return ingress.bind(model.bind(), size)


# ------------------------------------------------------------------------------------------------ clients


def _timed_posts(post, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        post(i)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _route(base: str, route: str, iters: int, clients: int, per_client: int, images: list[bytes]) -> dict:
    import requests

    url = f"{base}/{route}"
    prompts = json.dumps([{"text": t} for t in TEXTS])

    def poster(session=None):
        def post(i: int) -> None:
            if route == "image":  # a new connection per request, as bench_concept's served part
                r = requests.post(url, files={"image": ("x.jpg", images[i % len(images)], "image/jpeg")},
                                  data={"prompts": prompts}, timeout=120)
            else:  # a keep-alive session, as bench_click's warm clicks
                r = session.post(url, json=click_body(i), timeout=120)
            if r.status_code != 200:
                raise RuntimeError(f"POST {url}: {r.status_code} {r.text[:500]}")
        return post

    with requests.Session() as s:
        warm = poster(s)
        for i in range(5):
            warm(i)
        one = summary(_timed_posts(poster(s), iters))

    def client(k: int) -> list[float]:
        with requests.Session() as s:
            return _timed_posts(poster(s), per_client)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for xs in pool.map(client, range(clients)) for x in xs]
    wall = time.perf_counter() - t0
    conc = {"clients": clients, **summary(lat), "requests_per_s": len(lat) / wall}
    return {"c1": {**one, "requests_per_s": 1e3 / one["mean_ms"]}, "concurrent": conc}


def run_floor(port: int, *, size: int = 1008, iters: int = 50, clients: int = 8, per_client: int = 8,
              host: str = "127.0.0.1") -> dict:
    """Deploy the floor app in the connected Ray + Serve (its proxy on `host:port`), measure both routes,
    delete the app. Returns {"image": {...}, "click": {...}, "size": S, ...}; fails (DeployError) instead
    of hanging when its replicas cannot be placed."""
    deploy_or_fail(floor_app(size), name=FLOOR_APP, route_prefix=FLOOR_PREFIX, timeout_s=120)
    base = f"http://{host}:{port}{FLOOR_PREFIX}"
    images = [jpeg(i) for i in range(8)]
    try:
        out: dict = {"size": size, "jpeg_bytes": int(np.mean([len(b) for b in images])), "image": {}, "click": {}}
        for route in ("image", "click"):
            out[route] = _route(base, route, iters, clients, per_client, images)
            c1, cc = out[route]["c1"], out[route]["concurrent"]
            print(f"floor {route:5s} c=1  p50={c1['p50_ms']:7.2f} ms  p95={c1['p95_ms']:7.2f}  p99={c1['p99_ms']:7.2f}"
                  f"   c={clients}  p50={cc['p50_ms']:7.2f} ms  {cc['requests_per_s']:7.1f} req/s", flush=True)
        return out
    finally:
        serve.delete(FLOOR_APP)


# ------------------------------------------------------------------------------------------------ script


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    f = result["floor"]
    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["image c=1", "click c=1", f"image c={f['image']['concurrent']['clients']}",
             f"click c={f['click']['concurrent']['clients']}"]
    rows = [f["image"]["c1"], f["click"]["c1"], f["image"]["concurrent"], f["click"]["concurrent"]]
    x = np.arange(len(rows))
    for off, q in zip((-0.25, 0, 0.25), ("p50_ms", "p95_ms", "p99_ms")):
        ax.bar(x + off, [r[q] for r in rows], width=0.25, label=q.removesuffix("_ms"))
    ax.set_xticks(x, names)
    ax.set_ylabel("ms")
    ax.set_title(f"floor (no model work), {result['size']}x{result['size']} pixels — {result['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    import argparse
    import os
    import platform
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1008, help="model input size S (facebook/sam3: 1008)")
    parser.add_argument("--iters", type=int, default=50, help="requests per route at 1 client")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=8)
    parser.add_argument("--out", default="loadtest/results/floor_cpu.json")
    args = parser.parse_args()
    port = free_port()
    tmp = start_ray(2, port)  # FloorIngress + FloorModel: 1 logical CPU each
    try:
        floor = run_floor(port, size=args.size, iters=args.iters, clients=args.clients, per_client=args.per_client)
    except DeployError as exc:
        print(f"bench_floor: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        stop_ray(tmp)
    import ray

    result = {"command": " ".join(["python"] + sys.argv), "device": f"CPU ({os.cpu_count()} cores, "
              f"{platform.machine()})", "ray": ray.__version__, "size": args.size, "floor": floor}
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
