"""Locust scenarios for sam3-serve: concept segmentation, click sessions, jobs; plus a step load shape.

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s --host http://127.0.0.1:8000 \
        --csv loadtest/results/locust --json-file loadtest/results/locust.json
    SAM3_STEP_LOAD=1 locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 ...   # steps

Users (weights = share of the simulated population):
- ConceptUser (3): POST /v1/pcs/image with 1-3 text prompts on one of a few synthetic images.
- ClickUser (3): uploads an image once (POST /v1/images), then clicks: a first click, a refinement with the
  returned mask_input, and now and then a multimask click; the interactive annotation loop.
- JobUser (1): POST /v1/jobs (pcs_image, the image by image_id) and polls until it ends.
Every response is checked for content (ids, masks, statuses), not only for a 200: a wrong body is a
failure in Locust's stats. 429 + Retry-After (back-pressure) is counted as its own failure kind.

Environment: SAM3_IMAGE_SIZE (default 640x480), SAM3_STEP_LOAD (use StepLoad: +SAM3_STEP_USERS users every
SAM3_STEP_SECONDS, up to SAM3_STEP_MAX).
"""

from __future__ import annotations

import base64
import io
import os
import random
import time

import numpy as np
from locust import HttpUser, LoadTestShape, between, task
from PIL import Image

WIDTH, HEIGHT = (int(v) for v in os.environ.get("SAM3_IMAGE_SIZE", "640x480").split("x"))
TEXTS = ("car", "person", "dog", "tree", "red shirt", "bicycle", "cat", "house")


def synthetic_jpeg(seed: int) -> bytes:
    """A deterministic WIDTHxHEIGHT JPEG: blocky random colours (compresses like a photo, not like a flat fill)."""
    rng = np.random.RandomState(seed)
    blocks = (rng.rand(HEIGHT // 16 + 1, WIDTH // 16 + 1, 3) * 255).astype(np.uint8)
    pixels = np.kron(blocks, np.ones((16, 16, 1), np.uint8))[:HEIGHT, :WIDTH]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


IMAGES = [synthetic_jpeg(seed) for seed in range(4)]
IMAGES_B64 = [base64.b64encode(data).decode("ascii") for data in IMAGES]


def check(response, condition: bool, what: str) -> bool:
    """Mark a caught response failed unless `condition`; True when it passed."""
    if response.status_code == 429:
        response.failure("429 overloaded (back-pressure)")
        return False
    if response.status_code != 200 and response.status_code != 202:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return False
    if not condition:
        response.failure(f"bad body: {what}")
        return False
    response.success()
    return True


class ConceptUser(HttpUser):
    weight = 3
    wait_time = between(0.5, 2.0)

    @task
    def segment_concepts(self) -> None:
        prompts = [{"text": t} for t in random.sample(TEXTS, random.randint(1, 3))]
        body = {"image": {"base64": random.choice(IMAGES_B64)}, "prompts": prompts, "max_instances": 20}
        with self.client.post("/v1/pcs/image", json=body, name="pcs image", catch_response=True) as r:
            data = r.json() if r.status_code == 200 else {}
            check(r, len(data.get("results", [])) == len(prompts)
                  and all("mask" in i for res in data["results"] for i in res["instances"]),
                  "one result per prompt, every instance with a mask")


class ClickUser(HttpUser):
    weight = 3
    wait_time = between(0.2, 1.0)  # a person clicking

    def on_start(self) -> None:
        self.image_id = None
        seed = random.randrange(len(IMAGES))
        files = {"file": ("img.jpg", IMAGES[seed], "image/jpeg")}
        with self.client.post("/v1/images", files=files, name="upload image", catch_response=True) as r:
            data = r.json() if r.status_code == 200 else {}
            if check(r, len(data.get("image_id", "")) == 64, "an image_id"):
                self.image_id = data["image_id"]

    def click(self, obj: dict, name: str, multimask: bool = False) -> dict | None:
        body = {"image_id": self.image_id, "objects": [obj], "multimask_output": multimask}
        with self.client.post("/v1/pvs/image", json=body, name=name, catch_response=True) as r:
            data = r.json() if r.status_code == 200 else {}
            objects = data.get("objects", [])
            ok = len(objects) == 1 and "mask" in objects[0] and (not multimask or len(objects[0]["candidates"]) == 3)
            return objects[0] if check(r, ok, "one object with a mask (3 candidates for multimask)") else None

    @task(3)
    def click_and_refine(self) -> None:
        if self.image_id is None:
            return self.on_start()
        x, y = random.uniform(0, WIDTH - 1), random.uniform(0, HEIGHT - 1)
        first = self.click({"points": [[x, y]], "point_labels": [1]}, "pvs first click")
        if first is not None and first.get("mask_input"):
            x2, y2 = random.uniform(0, WIDTH - 1), random.uniform(0, HEIGHT - 1)
            self.click({"points": [[x, y], [x2, y2]], "point_labels": [1, 0], "mask_input": first["mask_input"]},
                       "pvs refine click")

    @task(1)
    def ambiguous_click(self) -> None:
        if self.image_id is not None:
            x, y = random.uniform(0, WIDTH - 1), random.uniform(0, HEIGHT - 1)
            self.click({"points": [[x, y]]}, "pvs multimask click", multimask=True)


class JobUser(HttpUser):
    weight = 1
    wait_time = between(1.0, 3.0)
    poll_s = 0.25
    timeout_s = 120.0

    def on_start(self) -> None:
        files = {"file": ("img.jpg", IMAGES[0], "image/jpeg")}
        r = self.client.post("/v1/images", files=files, params={"precompute": "false"}, name="upload image")
        self.image_id = r.json()["image_id"] if r.status_code == 200 else None

    @task
    def submit_and_poll(self) -> None:
        if self.image_id is None:
            return self.on_start()
        job = {"kind": "pcs_image", "input": {"image": {"image_id": self.image_id}, "prompts": [{"text": "car"}]}}
        with self.client.post("/v1/jobs", json=job, name="job submit", catch_response=True) as r:
            if not check(r, r.status_code == 202 and r.headers.get("Location", "").startswith("/v1/jobs/"),
                         "202 + Location"):
                return
            location = r.headers["Location"]
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with self.client.get(location, name="job poll", catch_response=True) as r:
                status = r.json().get("status") if r.status_code == 200 else None
                if not check(r, status in ("queued", "running", "succeeded"), f"status {status}"):
                    return
            if status == "succeeded":
                return
            time.sleep(self.poll_s)


class StepLoad(LoadTestShape):
    """+step_users users every step_s seconds until max_users, then hold for one more step. Opt in with
    SAM3_STEP_LOAD=1 (Locust uses a shape class whenever the locustfile defines one)."""

    step_users = int(os.environ.get("SAM3_STEP_USERS", "5"))
    step_s = float(os.environ.get("SAM3_STEP_SECONDS", "30"))
    max_users = int(os.environ.get("SAM3_STEP_MAX", "40"))

    def tick(self):
        run_time = self.get_run_time()
        steps = int(run_time // self.step_s) + 1
        if steps * self.step_users > self.max_users + self.step_users:
            return None
        users = min(steps * self.step_users, self.max_users)
        return users, self.step_users


if not os.environ.get("SAM3_STEP_LOAD"):
    del StepLoad  # without it, -u/-r/-t on the command line drive the run
