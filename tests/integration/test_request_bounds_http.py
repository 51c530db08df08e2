"""Bounded memory and CPU per request, over real HTTP through Ray Serve with the tiny SAM 3 checkpoint.

An app of its own ("sam3-bounds" at /bounds, in the session's Ray and Serve) with the PRODUCTION request limits
(the session app lowers them to 1 MP images): 40 MP images, limits.max_output_pixels 1e9 (25 masks of 40 MP),
overlays of at most 4 MiB pixels; an ingress of num_cpus 1 (one CPU thread); automatic-mode floors of 0.5.
"""

from __future__ import annotations

import base64
import io
import time

import cv2
import numpy as np
import pytest
import requests
from PIL import Image

from serve_app.codecs.masks import decode_rle
from serve_app.config import LimitsConfig
from serve_app.pipelines.output_budget import overlay_size
from tests.conftest import serve_args
from tests.helpers import b64, serve_replicas

APP, PREFIX = "sam3-bounds", "/bounds"
WIDTH, HEIGHT = 8000, 5000  # the review's worst case (I1): 40 MP, the largest image limits.max_image_pixels admits
# The ingress may grow by at most this much (peak RSS over its RSS before the request). What the request needs
# at once: decoding 40 MP (Pillow's image and the RGB array, ~0.45 GB at peak), then ONE mask being encoded at a
# time (a full-image window at 40 MP: ~0.36 GB of float32 strips, freed before the next), the 4 MiB-pixel overlay
# (~0.1 GB) and the answer (25 RLE masks, a few MB). Before the output budget it encoded all 16 x 25 masks and
# kept every mask's crop for the overlay: up to 400 x 40 MB.
RSS_GROWTH_BOUND = 1024**3


@pytest.fixture(scope="module")
def bounds(serve_url, tiny_model_dir, tmp_path_factory) -> str:
    from ray import serve

    from serve_app.app import build_app

    store = tmp_path_factory.mktemp("bounds-store")
    args = serve_args(
        tiny_model_dir, storage={"uri": f"file://{store}"},
        limits=LimitsConfig().model_dump(),  # production limits, not the session app's 1 MP
        concept={"replica": {"num_cpus": 0, "num_gpus": 0, "max_ongoing_requests": 32, "max_queued_requests": 64}},
        click={"replica": {"num_cpus": 0, "num_gpus": 0, "max_ongoing_requests": 32, "max_queued_requests": 64},
               "auto": {"points_per_side": 4, "max_points_per_side": 8, "points_per_batch": 16,
                        "pred_iou_thresh": 0.6, "stability_score_thresh": 0.6,
                        "min_pred_iou_thresh": 0.5, "min_stability_score_thresh": 0.5}},
        video={"warm_pool": 0})  # no idle video actor: no video here
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_url + PREFIX
    serve.delete(APP)


def ingress_pid() -> int:
    """The PID of the app's (only) Sam3Ingress replica, from Ray's actor table."""
    import ray

    (name, _), = serve_replicas(APP, "Sam3Ingress").values()
    pids = [a["Pid"] for a in ray._private.state.actors().values() if a["Name"] == name and a["State"] == "ALIVE"]
    assert len(pids) == 1, pids
    return pids[0]


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the process's peak RSS so far) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) / 1024 for k, v in fields.items()}


def flat_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_worst_case_concept_request_is_truncated_within_the_memory_bound(bounds):
    data = flat_png(WIDTH, HEIGHT)
    assert len(data) < 200_000  # tiny on the wire, 114 MiB decoded
    pid = ingress_pid()
    before = memory_mb(pid)
    body = {"image": {"base64": b64(data)}, "prompts": [{"text": f"thing {i}"} for i in range(16)],
            "threshold": 0.0, "overlay": True}
    t0 = time.monotonic()
    r = requests.post(bounds + "/v1/pcs/image", json=body, timeout=300)
    elapsed = time.monotonic() - t0
    after = memory_mb(pid)
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    fit = LimitsConfig().max_output_pixels // (WIDTH * HEIGHT)
    kept = [inst for res in out["results"] for inst in res["instances"]]
    # every prompt had 25 instances above threshold 0 (the model is asked for no more than fit per prompt)
    assert fit == 25 and len(kept) == fit
    assert (out["truncated"], out["truncated_reason"], out["omitted_masks"]) == (True, "max_output_pixels", 16 * fit - fit)
    assert [i["id"] for i in kept] == list(range(fit))
    scores = sorted((inst["score"] for inst in kept), reverse=True)
    assert scores[-1] > 0.0
    mask = decode_rle(kept[0]["mask"])
    assert mask.shape == (HEIGHT, WIDTH) and int(mask.sum()) == kept[0]["area"]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(out["overlay_png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == overlay_size(HEIGHT, WIDTH, LimitsConfig().max_overlay_pixels) == (1619, 2590)
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"worst case: {elapsed:.1f} s, ingress RSS {before['VmRSS']:.0f} MiB before, peak {after['VmHWM']:.0f} "
          f"MiB (+{growth:.0f} MiB), {after['VmRSS']:.0f} MiB after; timings {out['timings_ms']}")
    assert growth < RSS_GROWTH_BOUND / 2**20, (before, after)


def test_automatic_requests_below_the_floors_are_refused(bounds):
    for knobs, code in (({"pred_iou_thresh": 0.3}, "pred_iou_thresh_too_low"),
                        ({"stability_score_thresh": 0.0}, "stability_score_thresh_too_low"),
                        ({"points_per_side": 9}, "points_per_side_too_large")):
        r = requests.post(bounds + "/v1/auto/image", json={"image_id": "a" * 64, **knobs}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    r = requests.post(bounds + "/v1/auto/image", json={"image_id": "a" * 64, "pred_iou_thresh": 0.5,
                                                       "stability_score_thresh": 0.5}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found"  # at the floors: accepted
