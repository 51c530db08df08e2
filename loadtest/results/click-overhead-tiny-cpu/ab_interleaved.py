"""A/B in ONE Ray, interleaved: app "new" (this checkout) at /new, app "old" (another checkout, deployed by a
subprocess driver whose job runtime_env points PYTHONPATH at it) at /old, the floor at /floor. Each round
sends one warm click to each, in rotating order.

    python loadtest/results/click-overhead-tiny-cpu/ab_interleaved.py NEW_REPO OLD_REPO --model-dir CKPT --out X.json

OLD_REPO: e.g. `git archive <commit> | tar -x -C /tmp/old`. CKPT: a tiny checkpoint
(serve_app.devtools.tiny_model.build_tiny_checkpoint). Reports per app: e2e p50, the replica's decoder p50,
the floor p50 of the same rounds and e2e - decoder - floor; and whether both apps gave the same answers.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

p = argparse.ArgumentParser()
p.add_argument("new")
p.add_argument("old")
p.add_argument("--clicks", type=int, default=300)
p.add_argument("--model-dir", required=True)
p.add_argument("--routing-new", default="consistent_hash")
p.add_argument("--routing-old", default="consistent_hash")
p.add_argument("--mask-input", action="store_true")
p.add_argument("--out", default=None)
a = p.parse_args()
sys.path.insert(0, os.path.join(a.new, "loadtest"))
sys.path.insert(0, a.new)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import requests  # noqa: E402
from bench_click import click_body  # noqa: E402
from bench_common import VIDEO_IDLE, deploy_or_fail, free_port, jpeg, start_ray, stop_ray, summary  # noqa: E402
from bench_floor import FLOOR_PREFIX, floor_app  # noqa: E402
from bench_floor import click_body as floor_body  # noqa: E402


def app_args(store, routing):
    gpu = {"num_gpus": 0, "num_cpus": 1}
    return {"model": {"model_id": a.model_dir}, "storage": {"uri": f"file://{store}"},
            "concept": {"replica": {**gpu, "max_ongoing_requests": 32}},
            "click": {"replica": {**gpu, "max_ongoing_requests": 64}, "cache_bytes": 4 * 1024**3, "routing": routing},
            "observability": {"debug_interface": True}, "video": VIDEO_IDLE}


OLD_DRIVER = r'''
import sys, json, time
sys.path.insert(0, sys.argv[1])
import ray
from ray import serve
from serve_app.app import build_app
ray.init(address=sys.argv[2], namespace="serve", runtime_env={"env_vars": {"PYTHONPATH": sys.argv[1] + ":" + sys.argv[1] + "/loadtest"}})
import serve_app; print("old serve_app", serve_app.__file__, flush=True)
serve._run(build_app(json.loads(sys.argv[3])), _blocking=False, name="old", route_prefix="/old")
for _ in range(600):
    st = serve.status().applications.get("old")
    if st is not None and str(st.status).endswith("RUNNING"):
        print("old RUNNING", flush=True); break
    time.sleep(1)
else:
    sys.exit("old app not running")
'''

store = tempfile.mkdtemp(prefix="cp-store-")
port = free_port()
tmp = start_ray(14, port)
result: dict = {"new": a.new, "old": a.old}
try:
    import ray
    from ray import serve
    deploy_or_fail(__import__("serve_app.app", fromlist=["build_app"]).build_app(app_args(store, a.routing_new)),
                   name="new", route_prefix="/new", timeout_s=300)
    gcs = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": f"{a.old}:{a.old}/loadtest"}
    subprocess.run([sys.executable, "-c", OLD_DRIVER, a.old, gcs, json.dumps(app_args(store, a.routing_old))],
                   check=True, env=env, timeout=600)
    size = serve.get_deployment_handle("ClickSegmenter", app_name="new").info.remote().result().image_size
    deploy_or_fail(floor_app(size), name="floor", route_prefix=FLOOR_PREFIX, timeout_s=120)
    base = f"http://127.0.0.1:{port}"
    sessions = {v: requests.Session() for v in ("old", "new", "floor")}
    ids = {}
    for v in ("old", "new"):
        r = sessions[v].post(f"{base}/{v}/v1/images", files={"file": ("x.jpg", jpeg(0), "image/jpeg")},
                             params={"precompute": "true"}, timeout=120)
        r.raise_for_status()
        ids[v] = r.json()["image_id"]
    prev = {"old": None, "new": None}

    def click(v, i):
        if v == "floor":
            r = sessions[v].post(f"{base}{FLOOR_PREFIX}/click", json=floor_body(i), timeout=60)
            r.raise_for_status()
            return None
        body = click_body(ids[v], i)
        if a.mask_input and prev[v] is not None:
            body["objects"][0]["mask_input"] = prev[v]
        r = sessions[v].post(f"{base}/{v}/v1/pvs/image", json=body, timeout=60)
        r.raise_for_status()
        j = r.json()
        if a.mask_input:
            prev[v] = j["objects"][0].get("mask_input")
        return j, r.content

    for i in range(20):
        for v in ("old", "new", "floor"):
            click(v, i)
    lat = {v: [] for v in ("old", "new", "floor")}
    parts = {"old": [], "new": []}
    same = 0
    orders = [("old", "new", "floor"), ("new", "floor", "old"), ("floor", "old", "new")]
    for i in range(a.clicks):
        bodies = {}
        for v in orders[i % 3]:
            t = time.perf_counter()
            out = click(v, i)
            lat[v].append((time.perf_counter() - t) * 1e3)
            if out is not None:
                parts[v].append(out[0]["timings_ms"])
                bodies[v] = out[0]
        strip = [{k: x for k, x in b.items() if k not in ("timings_ms", "request_id")} for b in bodies.values()]
        same += strip[0] == strip[1]
    result["identical_answers"] = f"{same}/{a.clicks}"
    fl = statistics.median(lat["floor"])
    result["floor"] = summary(lat["floor"])
    for v in ("old", "new"):
        dec = statistics.median(x.get("decoder_ms", 0.0) for x in parts[v])
        e2e = statistics.median(lat[v])
        result[v] = {"e2e": summary(lat[v]), "decoder_p50_ms": dec,
                     "breakdown_p50": {k: statistics.median(x.get(k, 0.0) for x in parts[v]) for k in parts[v][0]},
                     "serving_ms": e2e - dec, "over_floor_ms": e2e - dec - fl}
        print(f"RESULT {v}: e2e p50 {e2e:.2f} decoder {dec:.2f} floor {fl:.2f} over {e2e - dec - fl:.2f}  "
              + " ".join(f"{k}={x:.2f}" for k, x in result[v]["breakdown_p50"].items()), flush=True)
    print("identical answers (but timings/request_id):", result["identical_answers"], flush=True)
finally:
    stop_ray(tmp)
if a.out:
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
