"""Locust scenarios for sam3-serve: concept segmentation, click sessions, jobs, video sessions; plus a step load
shape.

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s --host http://127.0.0.1:8000 \
        --csv loadtest/results/locust --json-file loadtest/results/locust.json
    SAM3_STEP_LOAD=1 locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 ...   # steps

Users (weights = share of the simulated population):
- ConceptUser (3): POST /v1/pcs/image with 1-3 text prompts on one of a few synthetic images.
- ClickUser (3): uploads an image once (POST /v1/images), then clicks: a first click, a refinement with the
  returned mask_input, and now and then a multimask click; the interactive annotation loop.
- JobUser (1): POST /v1/jobs (pcs_image, the image by image_id) and polls until it ends.
- VideoUser (1): a whole video session: creates it from a small synthetic mp4 (made once per process with
  PyAV), prompts a random frame (a text prompt or clicks on 1-3 objects; 409 session_starting is retried and
  counted apart), propagates both ways reading the whole NDJSON stream, scrubs a few frames (GET frames/{i})
  and stored masks, then deletes the session.
- LibraryUser (1): lists images and videos, opens the newest video, reads /v1/storage/usage and /v1/quotas,
  uploads an image of its own and deletes it.
- ExportUser (1): prepares one such session once (create, prompt frame 0, propagate), then exports it again and
  again as COCO (POST /v1/video/sessions/{sid}/exports -> a video_export job), polls the job until it
  succeeded and downloads the ZIP from export_url (checked: manifest + instances.json of every frame); the
  whole submit -> download time is reported as "video export (submit to download)".
Every response is checked for content (ids, masks, statuses, frame coverage), not only for a 200: a wrong body
is a failure in Locust's stats. 429 + Retry-After (back-pressure) is counted as its own failure kind.

Environment: SAM3_API_KEY (sent as `Authorization: Bearer …` when the service runs auth.mode api_keys; every
user of a run is then that key's tenant), SAM3_IMAGE_SIZE (default 640x480), SAM3_VIDEO_SIZE (default 160x120), SAM3_VIDEO_FRAMES (default
24), SAM3_STEP_LOAD (use StepLoad: +SAM3_STEP_USERS users every SAM3_STEP_SECONDS, up to SAM3_STEP_MAX).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import random
import time
import zipfile

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
VIDEO_W, VIDEO_H = (int(v) for v in os.environ.get("SAM3_VIDEO_SIZE", "160x120").split("x"))
VIDEO_FRAMES = int(os.environ.get("SAM3_VIDEO_FRAMES", "24"))


@functools.cache
def synthetic_mp4() -> bytes:
    """A VIDEO_FRAMES-frame H.264 mp4 of VIDEO_WxVIDEO_H at 12 fps (PyAV), made once per process: a red disc
    moving right and a blue square moving down on grey."""
    from fractions import Fraction

    import av

    yy, xx = np.mgrid[:VIDEO_H, :VIDEO_W]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = VIDEO_W, VIDEO_H, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for t in range(VIDEO_FRAMES):
            p = t / max(1, VIDEO_FRAMES - 1)
            img = np.full((VIDEO_H, VIDEO_W, 3), 128, np.uint8)
            disc = (xx - (0.1 + 0.7 * p) * VIDEO_W) ** 2 + (yy - 0.35 * VIDEO_H) ** 2 <= (0.15 * VIDEO_H) ** 2
            img[disc] = (220, 30, 30)
            y0, side = int((0.05 + 0.6 * p) * VIDEO_H), VIDEO_H // 5
            img[y0:y0 + side, int(0.6 * VIDEO_W):int(0.6 * VIDEO_W) + side] = (30, 30, 220)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
IMAGES_B64 = [base64.b64encode(data).decode("ascii") for data in IMAGES]


def check(response, condition: bool, what: str) -> bool:
    """Mark a caught response failed unless `condition`; True when it passed."""
    if response.status_code == 429:
        response.failure("429 overloaded (back-pressure)")
        return False
    if response.status_code not in (200, 201, 202, 204):
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return False
    if not condition:
        response.failure(f"bad body: {what}")
        return False
    response.success()
    return True


class ApiUser(HttpUser):
    """Every scenario's base: sends SAM3_API_KEY (if set) with each request."""

    abstract = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        key = os.environ.get("SAM3_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"


class ConceptUser(ApiUser):
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


class ClickUser(ApiUser):
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


class JobUser(ApiUser):
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


class LibraryUser(ApiUser):
    """Browses the media library and the tenant's accounts (what a dashboard or the web page's library tab
    does): each visit lists images and videos, opens the newest video, reads storage usage and quotas, and
    uploads an image of its own (unique bytes) and deletes it again."""

    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def visit(self) -> None:
        self.browse()
        self.accounts()
        self.upload_and_delete()

    def browse(self) -> None:
        with self.client.get("/v1/images", params={"limit": 50}, name="library images", catch_response=True) as r:
            images = r.json().get("images") if r.status_code == 200 else None
            check(r, isinstance(images, list) and all(len(e["image_id"]) == 64 and e["size_bytes"] > 0
                                                      for e in images), "image entries")
        with self.client.get("/v1/videos", params={"limit": 20}, name="library videos", catch_response=True) as r:
            videos = r.json().get("videos") if r.status_code == 200 else None
            if not check(r, isinstance(videos, list) and all(len(v["video_id"]) == 64 for v in videos),
                         "video entries"):
                return
        if videos:
            vid = videos[0]["video_id"]
            with self.client.get(f"/v1/videos/{vid}", name="library video", catch_response=True) as r:
                # 404: deleted meanwhile by another user's cleanup
                if r.status_code == 404:
                    r.success()
                else:
                    check(r, r.status_code == 200 and r.json().get("video_id") == vid, "the listed video")

    def accounts(self) -> None:
        with self.client.get("/v1/storage/usage", name="storage usage", catch_response=True) as r:
            data = r.json() if r.status_code == 200 else {}
            parts = ("images", "videos", "sessions", "jobs", "results", "exports", "uploads", "other")
            check(r, bool(data) and data["total"]["objects"] == sum(data[p]["objects"] for p in parts),
                  "categories summing to the total")
        with self.client.get("/v1/quotas", name="quotas", catch_response=True) as r:
            data = r.json() if r.status_code == 200 else {}
            check(r, isinstance(data.get("tenant"), str) and "limits" in data and "usage" in data,
                  "tenant, limits and usage")

    def upload_and_delete(self) -> None:
        data = synthetic_jpeg(random.randrange(1000, 10**9))  # this user's own bytes: nobody else deletes them
        files = {"file": ("mine.jpg", data, "image/jpeg")}
        with self.client.post("/v1/images", files=files, params={"precompute": "false"}, name="library upload",
                              catch_response=True) as r:
            image_id = r.json().get("image_id") if r.status_code == 200 else None
            if not check(r, image_id is not None and len(image_id) == 64, "an image_id"):
                return
        with self.client.delete(f"/v1/images/{image_id}", name="library delete", catch_response=True) as r:
            check(r, r.status_code == 204, "204")


def valid_frame(frame: dict) -> bool:
    """A frame result: its objects carry an id, a box inside the frame and an RLE mask of the video's size."""
    return isinstance(frame.get("frame_index"), int) and all(
        isinstance(o.get("id"), int) and o["mask"]["size"] == [VIDEO_H, VIDEO_W] and o["area"] > 0
        and 0 <= o["box"][0] <= o["box"][2] <= VIDEO_W and 0 <= o["box"][1] <= o["box"][3] <= VIDEO_H
        for o in frame.get("objects", []))


class VideoSessionUser(ApiUser):
    """The video-session calls VideoUser and ExportUser share (no tasks of its own)."""

    abstract = True
    start_timeout_s = 120.0  # how long a prompt may answer 409 session_starting (actor start, model load)

    def on_start(self) -> None:
        self.sid: str | None = None

    def on_stop(self) -> None:
        self.delete_session()

    def create_session(self) -> bool:
        files = {"video": ("clip.mp4", synthetic_mp4(), "video/mp4")}
        with self.client.post("/v1/video/sessions", files=files, name="video create session",
                              catch_response=True) as r:
            data = r.json() if r.status_code == 201 else {}
            if check(r, r.status_code == 201 and data.get("state") == "ready" and data.get("num_frames") == VIDEO_FRAMES
                     and (data.get("width"), data.get("height")) == (VIDEO_W, VIDEO_H),
                     f"201, ready, {VIDEO_FRAMES} frames of {VIDEO_W}x{VIDEO_H}"):
                self.sid = data["session_id"]
        return self.sid is not None

    def prompt(self, frame: int) -> bool:
        if random.random() < 0.5:
            body: dict = {"frame_index": frame, "text": random.choice(TEXTS)}
            name = "video prompt (text)"
        else:
            ids = random.sample(range(1, 100), random.randint(1, 3))
            body = {"frame_index": frame, "objects": [
                {"obj_id": i, "points": [[random.uniform(0, VIDEO_W - 1), random.uniform(0, VIDEO_H - 1)]],
                 "point_labels": [1]} for i in ids]}
            name = "video prompt (clicks)"
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            with self.client.post(f"/v1/video/sessions/{self.sid}/prompts", json=body, name=name,
                                  catch_response=True) as r:
                if r.status_code == 409 and time.monotonic() < deadline:
                    # the session's actor is starting: expected, reported under its own name, retried
                    r.request_meta["name"] = "video prompt (session starting)"
                    error = r.json().get("error", {})
                    if error.get("code") == "session_starting" and r.headers.get("Retry-After"):
                        r.success()
                        time.sleep(0.5)
                        continue
                    r.failure(f"409 without session_starting + Retry-After: {r.text[:200]}")
                    return False
                data = r.json() if r.status_code == 200 else {}
                ok = data.get("frame_index") == frame and valid_frame(data)
                if "objects" in body:
                    ok = ok and data.get("prompted_obj_ids") == [o["obj_id"] for o in body["objects"]]
                return check(r, ok, f"frame {frame} with valid objects (and the prompted ids)")

    def propagate(self, frame: int) -> bool:
        """Both ways from `frame`: the whole NDJSON stream is read; every frame exactly once, then done. Reported
        with the time to the last line (and the first frame as its own entry)."""
        t0 = time.perf_counter()
        with self.client.post(f"/v1/video/sessions/{self.sid}/propagate", name="video propagate", stream=True,
                              json={"direction": "both", "start_frame_index": frame}, catch_response=True) as r:
            if r.status_code != 200:
                return check(r, False, "200 + NDJSON")
            seen, end, size, first_ms = [], None, 0, None
            for line in r.iter_lines():
                size += len(line) + 1
                msg = json.loads(line) if line else None
                if msg is None:
                    continue
                if msg.get("type") == "frame" and valid_frame(msg):
                    seen.append(msg["frame_index"])
                    first_ms = first_ms if first_ms is not None else (time.perf_counter() - t0) * 1e3
                else:
                    end = msg
                    break
            r.request_meta["response_time"] = (time.perf_counter() - t0) * 1e3
            r.request_meta["response_length"] = size
            if first_ms is not None:
                self.environment.events.request.fire(
                    request_type="NDJSON", name="video propagate (first frame)", response_time=first_ms,
                    response_length=0, exception=None, context={})
            ok = sorted(seen) == list(range(VIDEO_FRAMES)) and end is not None and end.get("type") == "done" \
                and end.get("progress") == {"done": VIDEO_FRAMES, "total": VIDEO_FRAMES}
            return check(r, ok, f"frames {sorted(seen)[:5]}... ({len(seen)}/{VIDEO_FRAMES}) then done, got {end}")

    def scrub(self) -> None:
        for i in random.sample(range(VIDEO_FRAMES), 3):
            with self.client.get(f"/v1/video/sessions/{self.sid}/frames/{i}", name="video frame",
                                 catch_response=True) as r:
                check(r, r.headers.get("content-type") == "image/jpeg" and r.content[:2] == b"\xff\xd8", "a JPEG")
        start = random.randrange(VIDEO_FRAMES)
        end = min(VIDEO_FRAMES - 1, start + 7)
        with self.client.get(f"/v1/video/sessions/{self.sid}/masks", params={"frame_start": start, "frame_end": end},
                             name="video masks", catch_response=True) as r:
            data = r.json() if r.status_code == 200 else {}
            frames = data.get("frames", [])
            check(r, [f["frame_index"] for f in frames] == list(range(start, end + 1)) and data.get("missing") == []
                  and all(valid_frame(f) for f in frames), f"stored frames {start}..{end}, none missing")

    def delete_session(self) -> None:
        if self.sid is None:
            return
        sid, self.sid = self.sid, None
        with self.client.delete(f"/v1/video/sessions/{sid}", name="video delete session", catch_response=True) as r:
            check(r, r.status_code == 204, "204")


class VideoUser(VideoSessionUser):
    """One video session per task, from upload to delete (a person annotating a short clip)."""

    weight = 1
    wait_time = between(1.0, 3.0)

    @task
    def annotate_clip(self) -> None:
        if not self.create_session():
            return
        try:
            frame = random.randrange(VIDEO_FRAMES)
            if self.prompt(frame) and self.propagate(frame):
                self.scrub()
        finally:
            self.delete_session()


class ExportUser(VideoSessionUser):
    """A session prepared once (create, a prompt on frame 0, a propagation over every frame: the first task run
    does it), then exported again and again as COCO: POST .../exports (202 + a video_export job), GET the job
    until it succeeded, download the ZIP from export_url."""

    weight = 1
    wait_time = between(1.0, 3.0)
    poll_s = 0.25
    timeout_s = 120.0

    @task
    def export_coco(self) -> None:
        if self.sid is None and not self.prepare():
            return
        t0 = time.perf_counter()
        with self.client.post(f"/v1/video/sessions/{self.sid}/exports", json={"formats": ["coco_instance"]},
                              name="video export submit", catch_response=True) as r:
            data = r.json() if r.status_code == 202 else {}
            if not check(r, r.status_code == 202 and data.get("kind") == "video_export"
                         and r.headers.get("Location", "").startswith("/v1/jobs/"), "202 + a video_export job"):
                return
            location = r.headers["Location"]
        deadline = time.monotonic() + self.timeout_s
        while True:
            with self.client.get(location, name="video export poll", catch_response=True) as r:
                view = r.json() if r.status_code == 200 else {}
                status = view.get("status")
                ok = status in ("queued", "running") or (status == "succeeded" and bool(view.get("export_url")))
                if not check(r, ok and time.monotonic() < deadline, f"status {status} (export_url once succeeded, "
                             f"within {self.timeout_s:g} s): {view.get('error')}"):
                    return
            if status == "succeeded":
                break
            time.sleep(self.poll_s)
        with self.client.get(view["export_url"], name="video export download", catch_response=True) as r:
            ok = False
            if r.status_code == 200 and r.content[:2] == b"PK":
                try:
                    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                        manifest = json.loads(zf.read("export/manifest.json"))
                        ok = manifest["frames"]["count"] == VIDEO_FRAMES and \
                            "export/annotations/instances.json" in zf.namelist()
                except (zipfile.BadZipFile, KeyError, ValueError):
                    ok = False
            if not check(r, ok, f"a ZIP with the manifest and COCO of {VIDEO_FRAMES} frames"):
                return
        # the whole export as the user sees it: submit -> succeeded -> downloaded
        self.environment.events.request.fire(
            request_type="JOB", name="video export (submit to download)",
            response_time=(time.perf_counter() - t0) * 1e3, response_length=len(r.content), exception=None,
            context={})

    def prepare(self) -> bool:
        """A session with masks stored on every frame (prompt on frame 0, propagated both ways from it)."""
        if self.create_session() and self.prompt(0) and self.propagate(0):
            return True
        self.delete_session()
        return False


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
