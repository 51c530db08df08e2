"""Test helpers: synthetic images in several encodings, response decoding, bounded waits for conditions
(jobs, Serve replicas) and the model deployments' debug interface."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")


def rgb_image(width: int = 130, height: int = 90, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 (H,W,3) RGB: a gradient with a few solid rectangles."""
    rng = np.random.RandomState(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    for _ in range(3):
        x0, y0 = rng.randint(0, width // 2), rng.randint(0, height // 2)
        img[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.randint(0, 255, 3)
    return img


def encode(img: np.ndarray, fmt: str = "PNG", exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    pil.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_bytes(width: int = 130, height: int = 90, seed: int = 0) -> bytes:
    return encode(rgb_image(width, height, seed))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- waiting for conditions ------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy and return that; AssertionError after `timeout_s`.

    The bound is a hang guard, not a speed assertion."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


# -- HTTP: jobs and results ------------------------------------------------------------------------


def instances(body: dict) -> list:
    """What must be identical between two runs of the same concept request: every instance's content."""
    return [[(i["score"], i["box"], i["area"], i["mask"]["counts"]) for i in res["instances"]]
            for res in body["results"]]


def job_view(base: str, job_id: str) -> dict:
    """GET /v1/jobs/{job_id} (asserted 200)."""
    import requests

    r = requests.get(f"{base}/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(base: str, job_id: str, timeout_s: float = 120) -> dict:
    """Poll GET /v1/jobs/{job_id} until the job is terminal; its view."""
    return wait_for(lambda: (v := job_view(base, job_id))["status"] in ("succeeded", "failed", "cancelled") and v,
                    timeout_s, f"job {job_id} to finish", interval_s=0.2)


# -- Ray Serve -------------------------------------------------------------------------------------


def debug_stats(handle) -> dict[str, Any]:
    """A model deployment's counters and live batching knobs (observability.debug_interface must be on)."""
    return handle.debug_stats.remote().result()


def counter_deltas(before: dict[str, Any], after: dict[str, Any], *names: str) -> dict[str, int]:
    """after - before for cumulative counters (tests on a shared app compare deltas, never absolutes)."""
    return {n: after[n] - before[n] for n in names}


def serve_replicas(app_name: str, deployment: str) -> dict[str, tuple[str, str]]:
    """The live replica actors of `deployment` in `app_name`: {replica unique id: (actor name, namespace)}.

    Serve names them SERVE_REPLICA::{app}#{deployment}#{unique id}."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return {a["name"][len(prefix):]: (a["name"], a["namespace"])
            for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def kill_replica(app_name: str, deployment: str, replica_unique_id: str) -> None:
    """ray.kill the replica actor `replica_unique_id` of `deployment` (Serve then starts a new one)."""
    import ray

    replicas = serve_replicas(app_name, deployment)
    assert replica_unique_id in replicas, (replica_unique_id, replicas)
    name, namespace = replicas[replica_unique_id]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
