"""Video-session benchmark: frames/s (1/3/10 objects, text and clicks), first-frame latency, session start
(warm pool vs cold), rebuild (checkpoint vs replay), state bytes over long videos, concurrent sessions.

    python loadtest/bench_video.py --model tiny --out loadtest/results/video_tiny_cpu.json
    python loadtest/bench_video.py --model full-random --device cuda --out loadtest/results/video_full_gpu.json

A benchmark, not a test: it prints a table and writes JSON (+ a PNG plot next to it when matplotlib is
installed). `tiny` measures serving overhead on CPU; `full-random` builds the real SAM 3 architecture with
random weights (the cost of facebook/sam3) and belongs on a GPU machine. Both checkpoints get a tracker
object-score bias of +10 (random trackers otherwise report "no object" on every frame, so nothing would be
tracked) and run with detection thresholds 0, hotstart_delay 0 and max_num_objects = the largest object
count, so text prompts detect objects too.

Sections
- model_only: VideoRunner/VideoSession in this process (no Ray, no HTTP) on synthetic frames:
  * fps: clicks on 1/3/10 objects (one add_objects call on frame 0), and a text prompt with the detector
    capped at 1/3/10 objects (`model.max_num_objects`, read per frame by transformers), then a forward
    propagation over every frame: prompt latency (the prompted frame's result), first frame (the prompted
    frame again, reused) and first new frame (frame 1, the first one the propagation computes), frames/s
    (all frames / propagation time, and 1000 / median frame step, which other load on a shared box moves less);
  * state: one session with 3 clicked objects propagated over `--state-frames` (default 100 and 900) tiny
    frames; `state_nbytes()` and the checkpoint size at each mark, pruned (the default) and unpruned.
- served: a local Ray + Serve app built by build_app (file:// storage in a temp dir), real HTTP on
  127.0.0.1, an mp4 of `--frames` frames of `--width`x`--height` uploaded per session:
  * fps: one session, clicks on 1/3/10 objects then a text prompt with the detector capped at 1/3/10 objects
    (the same knob as model_only, set in the session's actor with `__ray_call__`), reset in between, each
    followed by a forward propagation streamed over NDJSON: prompt ms, first frame ms (POST -> first NDJSON
    line, the prompted frame) and first new frame ms (-> the second line), frames/s; every stream is checked
    (each frame once, ends with done);
  * start: POST /v1/video/sessions + the first prompt (retried while 409 session_starting), with a warm
    actor in the pool vs right after the pool was drained (a cold actor: process start + model load);
  * rebuild: the session's actor is killed (ray.kill, named actor from SessionManager.debug_pool), then the
    next prompt is timed until it answers (rebuilt: true); once with its checkpoint in storage
    (checkpoint_after_propagate: true) and once with the checkpoints deleted (what
    checkpoint_after_propagate: false leaves: a full journal replay); a warm actor is in the pool both times;
  * concurrent: N sessions (3 clicked objects each) propagating at once: aggregate and per-session
    frames/s, and per actor its process RSS and (on a GPU) torch.cuda max_memory_allocated, read inside
    the actor with Ray's `__ray_call__`.

Every wait is bounded (`--deploy-timeout`, `--actor-timeout`, HTTP timeouts): a replica or session actor
that cannot be scheduled ends the run with a message and exit status 2 instead of hanging.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    DeployError,
    base_parser,
    deploy_or_fail,
    pyplot,
    scratch_dir,
    setup,
    stop_ray,
    summary,
    write_result,
)

TEXT = "red disc"
STATE_SIZE = (48, 64)  # (h, w) of the synthetic frames of the state measurement


class BenchError(RuntimeError):
    """The benchmark cannot go on (a replica/actor not scheduled, a bad answer): exit 2 with the message."""


# ----------------------------------------------------------------------------------------------- frames


def frame_at(i: int, n: int, h: int, w: int) -> np.ndarray:
    """Frame i of n: a red disc moving right and a blue square moving down on a textured grey background."""
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 128, np.uint8)
    img[(yy // 8 + xx // 8) % 2 == 0] = 112  # texture, so frames are not flat
    p = i / max(1, n - 1)
    cx, cy, r = 0.1 * w + 0.7 * w * p, 0.35 * h, max(3.0, 0.15 * h)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (220, 30, 30)
    side = max(4, h // 5)
    x0, y0 = int(0.6 * w), int(0.05 * h + 0.6 * h * p)
    img[y0:y0 + side, x0:x0 + side] = (30, 30, 220)
    return img


def synthetic_frames(n: int, h: int, w: int) -> np.ndarray:
    return np.stack([frame_at(i, n, h, w) for i in range(n)])


def mp4_bytes(frames: np.ndarray, fps: int = 12) -> bytes:
    """uint8 (T,H,W,3) -> H.264 mp4 bytes (PyAV; H and W even)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def click_points(n: int, h: int, w: int) -> list[list[float]]:
    """n points spread over a frame (a grid), one per object."""
    cols = math.ceil(math.sqrt(n * w / h))
    rows = math.ceil(n / cols)
    return [[(0.5 + k % cols) * w / cols, (0.5 + k // cols) * h / rows] for k in range(n)]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


# ----------------------------------------------------------------------------------------------- model only


def bench_model(video_dir: str, args, cuda: bool) -> dict:
    import torch

    from serve_app.config import ModelConfig
    from serve_app.model.video import VideoRunner
    from serve_app.model.video_types import FrameSource, VideoObjectPrompt

    counts = ints(args.objects)
    runner = VideoRunner.from_config(ModelConfig(model_id=video_dir, device=args.device),
                                     score_threshold_detection=0.0, new_det_thresh=0.0,
                                     max_num_objects=max(counts + [args.state_objects]), hotstart_delay=0)
    h, w, n = args.height, args.width, args.frames
    source = FrameSource.from_array(synthetic_frames(n, h, w))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def objects(k: int) -> list:
        return [VideoObjectPrompt(i + 1, np.array([p], np.float32), np.array([1]), None, None, False)
                for i, p in enumerate(click_points(k, h, w))]

    def run(kind: str, k: int) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        session = runner.new_session(source)
        sync()
        t0 = time.perf_counter()
        res = session.add_objects(0, objects(k)) if kind == "clicks" else session.add_text(0, TEXT)
        sync()
        prompt_ms = (time.perf_counter() - t0) * 1e3
        t1 = last = time.perf_counter()
        steps = []  # ms per yielded frame: the median is robust to other load on a shared machine
        for _ in session.propagate(0, "forward"):
            now = time.perf_counter()
            steps.append((now - last) * 1e3)
            last = now
        sync()
        total = time.perf_counter() - t1
        row = {"prompt": kind, "objects_requested": k, "objects_tracked": len(session.object_ids),
               "objects_on_prompt_frame": int(len(res.object_ids)), "prompt_ms": prompt_ms,
               "first_frame_ms": steps[0], "first_new_frame_ms": steps[0] + steps[1], "frames": len(steps),
               "propagate_s": total, "fps": len(steps) / total,
               "frame_ms": summary(steps[1:]), "fps_median": 1e3 / float(np.median(steps[1:])),
               "state_bytes": session.state_nbytes(), "counters": session.counters.snapshot()}
        if cuda:
            row["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"model  {kind:6s} {k:2d} obj (tracked {row['objects_tracked']:2d})  prompt={prompt_ms:7.1f} ms  "
              f"first new frame={row['first_new_frame_ms']:6.1f} ms  {row['fps']:7.1f} frames/s  (median step: "
              f"{row['fps_median']:.1f}/s)",
              flush=True)
        return row

    warm = runner.new_session(source)  # first calls initialise lazily: not measured
    warm.add_objects(0, objects(1))
    for _ in warm.propagate(0, "forward", max_frames=3):
        pass
    rows = [run("clicks", k) for k in counts]
    cap = runner.model.max_num_objects
    try:
        for k in counts:
            runner.model.max_num_objects = k  # the detector keeps at most k objects (transformers reads it per frame)
            rows.append(run("text", k))
    finally:
        runner.model.max_num_objects = cap
    out: dict[str, Any] = {"fps": rows, "info": dataclasses.asdict(runner.info)}
    if cuda:
        out["model_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
    out["state"] = bench_state(runner, ints(args.state_frames), args.state_objects, cuda)
    return out


def bench_state(runner, marks: list[int], n_objects: int, cuda: bool) -> list[dict]:
    """State bytes and checkpoint bytes of one session after `marks` frames, pruned and unpruned."""
    import torch

    from serve_app.model.video_types import FrameSource, VideoObjectPrompt

    h, w = STATE_SIZE
    n = max(marks)
    source = FrameSource(n, h, w, lambda i: frame_at(i, n, h, w))
    objs = [VideoObjectPrompt(i + 1, np.array([p], np.float32), np.array([1]), None, None, False)
            for i, p in enumerate(click_points(n_objects, h, w))]
    rows = []
    for prune in (True, False):
        session = runner.new_session(source, prune=prune)
        session.add_objects(0, objs)
        t0 = last = time.perf_counter()
        steps: list[float] = []
        for k, _ in enumerate(session.propagate(0, "forward"), 1):
            now = time.perf_counter()
            steps.append((now - last) * 1e3)
            last = now
            if k in marks:
                elapsed = now - t0
                row = {"pruned": prune, "frames": k, "objects": n_objects, "state_bytes": session.state_nbytes(),
                       "checkpoint_bytes": len(session.save()), "elapsed_s": elapsed, "fps": k / elapsed,
                       "frame_ms_p50": float(np.median(steps)),
                       "frame_ms_p50_last_100": float(np.median(steps[-100:]))}
                if cuda:
                    row["cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
                rows.append(row)
                label = "pruned" if prune else "unpruned"
                print(f"state  {label:8s} {k:4d} frames  state={row['state_bytes'] / 1e6:7.2f} MB  checkpoint="
                      f"{row['checkpoint_bytes'] / 1e6:7.2f} MB  (step p50 {row['frame_ms_p50']:.1f} ms, last 100: "
                      f"{row['frame_ms_p50_last_100']:.1f} ms)", flush=True)
                last = time.perf_counter()  # the measurement itself is not a frame step
        del session
    return rows


# ----------------------------------------------------------------------------------------------- served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def actor_probe():
    """fn(actor, reset_peak) for `__ray_call__`: the actor process's memory (a closure, so cloudpickle ships it
    by value: the actor cannot import this script)."""

    def probe(actor, reset_peak: bool) -> dict:
        import resource

        out: dict[str, Any] = {"pid": os.getpid()}
        with open("/proc/self/statm") as f:
            out["rss_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        import torch

        if torch.cuda.is_available():
            out["cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            if reset_peak:
                torch.cuda.reset_peak_memory_stats()
        return out

    return probe


class Served:
    """One local Ray + Serve app and an HTTP client of its video API (all waits bounded)."""

    def __init__(self, video_dir: str, concept_dir: str, args, cuda: bool):
        self.args = args
        self.cuda = cuda
        self.video_dir = video_dir
        self.concept_dir = concept_dir
        self.counts = ints(args.objects)
        self.max_objects = max(self.counts + [3])  # the start/rebuild/concurrent phases click 3 objects
        self.max_sessions = max(ints(args.sessions) + [3])
        self.http_timeout = (10, args.http_timeout)
        h, w = args.height, args.width
        self.video = mp4_bytes(synthetic_frames(args.frames, h, w))
        self.tmp = tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp")
        self.store_dir = tempfile.mkdtemp(prefix="bench-store-")
        if cuda:
            self.actor_gpus = args.actor_gpus if args.actor_gpus is not None else \
                min(0.25, 1.0 / (self.max_sessions + args.warm_pool))
        else:
            self.actor_gpus = 0.0
        self.actor_cpus = 0.25
        # every deployment and session actor must be placeable: logical CPUs > cores (as bench_click does)
        fixed = {"ingress": 1.0, "concept": 0.5, "click": 0.5, "job_worker": 0.25, "session_manager": 0.5}
        live_actors = self.max_sessions + args.warm_pool + 1  # +1: a pool refill while a session is cold
        self.num_cpus = math.ceil(sum(fixed.values()) + live_actors * self.actor_cpus) + 1
        self.plan = {"logical_cpus": self.num_cpus, "replica_cpus": fixed, "actor_cpus": self.actor_cpus,
                     "actor_gpus": self.actor_gpus, "max_live_actors": live_actors, "warm_pool": args.warm_pool}

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        import ray
        from ray import serve

        from serve_app.app import build_app

        os.environ["RAY_TMPDIR"] = self.tmp
        ray.init(num_cpus=self.num_cpus, include_dashboard=False, _temp_dir=self.tmp, log_to_driver=False)
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.cuda and gpus < 1:
            raise BenchError(f"--device cuda but Ray sees {gpus} GPUs")
        placed = self.max_sessions + self.args.warm_pool  # actors that must run at once (a refill may wait)
        if placed * self.actor_gpus > gpus + 1e-6:
            raise BenchError(f"{placed} session actors x {self.actor_gpus} GPU = {placed * self.actor_gpus:.2f} "
                             f"GPUs, the cluster has {gpus}: lower --sessions/--warm-pool or --actor-gpus")
        self.port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        limits = {"max_frames": max(self.args.frames, 16), "max_objects": self.max_objects,
                  "max_objects_per_call": self.max_objects}
        app_args = {
            "model": {"model_id": self.concept_dir},  # concept/click replicas: tiny, on CPU (not measured here)
            "storage": {"uri": f"file://{self.store_dir}"},
            "concept": {"replica": {"num_cpus": 0.5, "num_gpus": 0}},
            "click": {"replica": {"num_cpus": 0.5, "num_gpus": 0}, "cache_bytes": 64 * 1024**2},
            "jobs": {"worker": {"num_cpus": 0.25}},
            "ingress": {"replica": {"num_cpus": 1, "max_ongoing_requests": 64}},
            "observability": {"debug_interface": True},
            "video": {"model_id": self.video_dir, "score_threshold_detection": 0.0, "new_det_thresh": 0.0,
                      "max_num_objects": self.max_objects, "hotstart_delay": 0,
                      "actor": {"num_cpus": self.actor_cpus, "num_gpus": self.actor_gpus},
                      "warm_pool": self.args.warm_pool, "start_timeout_s": self.args.start_timeout,
                      "max_sessions": 64,
                      "checkpoint_after_propagate": True, "manager": {"num_cpus": 0.5}, "limits": limits},
        }
        self.app_args = app_args
        try:  # bounded: replicas Ray cannot place end the run with what they need vs what the cluster has
            deploy_or_fail(build_app(app_args), name="sam3", route_prefix="/", timeout_s=self.args.deploy_timeout)
        except DeployError as exc:
            raise BenchError(str(exc)) from exc
        self.base = f"http://127.0.0.1:{self.port}"
        self.manager = serve.get_deployment_handle("SessionManager", app_name="sam3")
        from serve_app.config import AppConfig, StorageConfig
        from serve_app.storage import open_store

        self.store = open_store(StorageConfig(uri=f"file://{self.store_dir}"))
        self.tenant = AppConfig().storage.default_tenant

    def stop(self) -> None:
        try:
            stop_ray(self.tmp)
        finally:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    # -------------------------------------------------------------- helpers
    def pool(self) -> dict:
        return self.manager.debug_pool.remote().result(timeout_s=60)

    def wait_pool(self, n: int = 1) -> float:
        """Wait until the warm pool holds n actors; returns the seconds waited."""
        import ray

        t0 = time.monotonic()
        while len(self.pool()["pool"]) < n:
            if time.monotonic() - t0 > self.args.actor_timeout:
                raise BenchError(f"the warm pool did not fill within {self.args.actor_timeout:g}s: a session actor "
                                 f"needs num_cpus={self.actor_cpus}, num_gpus={self.actor_gpus}; available "
                                 f"{ray.available_resources()}")
            time.sleep(0.25)
        return time.monotonic() - t0

    def actor(self, sid: str):
        import ray

        owners = self.pool()["owners"]
        if sid not in owners:
            raise BenchError(f"session {sid} has no live actor (owners: {list(owners)})")
        return ray.get_actor(owners[sid][0], namespace="sam3-video")

    def request(self, method: str, path: str, session=None, **kw):
        import requests

        return (session or requests).request(method, self.base + path, timeout=self.http_timeout, **kw)

    def create(self, session=None) -> tuple[str, float]:
        t0 = time.perf_counter()
        r = self.request("POST", "/v1/video/sessions", session, files={"video": ("v.mp4", self.video, "video/mp4")})
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code != 201:
            raise BenchError(f"create session: HTTP {r.status_code} {r.text[:300]}")
        body = r.json()
        if body["num_frames"] != self.args.frames:
            raise BenchError(f"the session has {body['num_frames']} frames, expected {self.args.frames}")
        return body["session_id"], ms

    def starting_retry(self, method: str, path: str, session=None, **kw):
        """An HTTP call on a session, repeated while it answers 409 session_starting (bounded by --actor-timeout).
        Returns (response, seconds, 409s seen)."""
        t0 = time.perf_counter()
        starting = 0
        while True:
            r = self.request(method, path, session, **kw)
            is_json = r.headers.get("content-type", "").startswith("application/json")
            if r.status_code != 409 or not is_json or r.json().get("error", {}).get("code") != "session_starting":
                return r, time.perf_counter() - t0, starting
            if time.perf_counter() - t0 > self.args.actor_timeout:
                raise BenchError(f"{path}: the session actor did not start within {self.args.actor_timeout:g}s "
                                 f"(num_cpus={self.actor_cpus}, num_gpus={self.actor_gpus} each): not schedulable?")
            starting += 1
            time.sleep(0.05)

    def prompt(self, sid: str, body: dict, session=None) -> tuple[dict, float, int]:
        """POST prompts (retried while 409 session_starting): (body, ms until the 200, 409s seen)."""
        r, s, starting = self.starting_retry("POST", f"/v1/video/sessions/{sid}/prompts", session, json=body)
        if r.status_code != 200:
            raise BenchError(f"prompt on {sid}: HTTP {r.status_code} {r.text[:300]}")
        return r.json(), s * 1e3, starting

    def clicks(self, k: int) -> dict:
        pts = click_points(k, self.args.height, self.args.width)
        return {"frame_index": 0, "objects": [{"obj_id": i + 1, "points": [p], "point_labels": [1]}
                                              for i, p in enumerate(pts)]}

    def propagate(self, sid: str, session=None, barrier: threading.Barrier | None = None) -> dict:
        """A forward propagation from frame 0, streamed and checked; first-frame ms and frames/s."""
        import json

        if barrier is not None:
            barrier.wait(timeout=60)
        t0 = time.perf_counter()
        first = last = None
        gaps: list[float] = []
        seen: list[int] = []
        end = None
        with self.request("POST", f"/v1/video/sessions/{sid}/propagate", session,
                          json={"direction": "forward", "start_frame_index": 0}, stream=True) as r:
            if r.status_code != 200:
                raise BenchError(f"propagate {sid}: HTTP {r.status_code} {r.text[:300]}")
            for line in r.iter_lines():
                if not line:
                    continue
                msg = json.loads(line)
                now = time.perf_counter()
                if msg["type"] == "frame":
                    if last is not None:
                        gaps.append((now - last) * 1e3)
                    first = first if first is not None else now
                    last = now
                    seen.append(msg["frame_index"])
                else:
                    end = msg
                    break
        total = time.perf_counter() - t0
        n = self.args.frames
        if end is None or end["type"] != "done" or sorted(seen) != list(range(n)) or len(seen) != n:
            raise BenchError(f"propagate {sid}: bad stream (end={end}, {len(seen)} frames of {n})")
        assert first is not None and last is not None
        return {"frames": n, "first_frame_ms": (first - t0) * 1e3,
                "first_new_frame_ms": (first - t0) * 1e3 + gaps[0] if gaps else float("nan"),
                "total_s": total, "fps": n / total,
                "steady_fps": (n - 1) / (last - first) if last > first else float("nan"),
                "frame_gap_ms": summary(gaps) if gaps else None,
                "fps_median": 1e3 / float(np.median(gaps)) if gaps else float("nan"),
                "t_start": t0, "t_end": t0 + total}

    def reset(self, sid: str) -> None:
        r, _, _ = self.starting_retry("POST", f"/v1/video/sessions/{sid}/reset")
        if r.status_code != 200:
            raise BenchError(f"reset {sid}: HTTP {r.status_code} {r.text[:300]}")

    def delete(self, sid: str) -> None:
        r = self.request("DELETE", f"/v1/video/sessions/{sid}")
        if r.status_code != 204:
            raise BenchError(f"delete {sid}: HTTP {r.status_code} {r.text[:300]}")

    def kill(self, sid: str) -> None:
        """ray.kill the session's actor and wait until it is gone (bounded)."""
        import ray

        actor = self.actor(sid)
        ray.kill(actor)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ray.get(actor.describe.remote(), timeout=5)
            except ray.exceptions.RayActorError:
                return
            except ray.exceptions.GetTimeoutError:
                pass
            time.sleep(0.1)
        raise BenchError(f"the actor of {sid} is still alive 60s after ray.kill")

    def checkpoint_bytes(self, sid: str) -> list[int]:
        from serve_app.sessions.checkpoints import checkpoints_prefix

        return [b.size for b in self.store.list(checkpoints_prefix(self.tenant, sid)) if b.key.endswith(".pt")]

    def delete_checkpoints(self, sid: str) -> int:
        from serve_app.sessions.checkpoints import checkpoints_prefix

        blobs = self.store.list(checkpoints_prefix(self.tenant, sid))
        for b in blobs:
            self.store.delete(b.key)
        return len(blobs)

    def memory(self, sid: str, reset_peak: bool = False) -> dict:
        import ray

        return ray.get(self.actor(sid).__ray_call__.remote(actor_probe(), reset_peak), timeout=60)

    # -------------------------------------------------------------- phases
    def run(self) -> dict:
        out: dict[str, Any] = {"plan": self.plan, "video": f"{self.args.frames} frames {self.args.width}x"
                               f"{self.args.height} H.264 mp4 ({len(self.video)} bytes)"}
        t0 = time.monotonic()
        self.start()
        out["deploy_s"] = time.monotonic() - t0
        out["first_pool_actor_s"] = self.wait_pool(1)
        print(f"served app up in {out['deploy_s']:.1f} s, first warm actor after {out['first_pool_actor_s']:.1f} s",
              flush=True)
        sid, _ = self.create()
        self.prompt(sid, self.clicks(1))  # warm-up: first prompt and stream of this app
        self.propagate(sid)
        out["fps"] = self.phase_fps(sid)
        out["start"] = self.phase_start()
        out["rebuild"] = self.phase_rebuild(sid)
        out["concurrent"] = self.phase_concurrent([sid])
        return out

    def set_detector_cap(self, sid: str, k: int) -> None:
        """The detector keeps at most k objects in this session's actor (bench-only: the same knob as model_only,
        set on the actor's model through __ray_call__; the app's video.max_num_objects is self.max_objects)."""
        import ray

        def cap(actor, k):
            actor.runner.model.max_num_objects = k

        ray.get(self.actor(sid).__ray_call__.remote(cap, k), timeout=60)

    def phase_fps(self, sid: str) -> list[dict]:
        import ray

        self.wait_pool(self.args.warm_pool)  # no actor loading in the background while timing
        rows = []
        try:
            for kind, k in [("clicks", k) for k in self.counts] + [("text", k) for k in self.counts]:
                self.reset(sid)
                if kind == "text":
                    self.set_detector_cap(sid, k)
                body = self.clicks(k) if kind == "clicks" else {"frame_index": 0, "text": TEXT}
                resp, prompt_ms, _ = self.prompt(sid, body)
                prop = self.propagate(sid)
                tracked = len(ray.get(self.actor(sid).describe.remote(), timeout=60)["object_ids"])
                row = {"prompt": kind, "objects_requested": k, "objects_tracked": tracked,
                       "objects_on_prompt_frame": len(resp["objects"]), "prompt_ms": prompt_ms,
                       **{key: v for key, v in prop.items() if not key.startswith("t_")}}
                rows.append(row)
                print(f"served {kind:6s} {k:2d} obj (tracked {tracked:2d})  prompt={prompt_ms:7.1f} ms  first="
                      f"{prop['first_frame_ms']:6.1f} ms  first new={prop['first_new_frame_ms']:6.1f} ms  "
                      f"{prop['fps']:7.1f} frames/s  (median gap: {prop['fps_median']:.1f}/s)", flush=True)
        finally:
            self.set_detector_cap(sid, self.max_objects)
        return rows

    def phase_start(self) -> dict:
        """Create + first prompt with a warm actor in the pool, then at once again (the pool is being refilled:
        the second session starts its own actor)."""
        warm, cold = [], []
        for _ in range(self.args.create_reps):
            self.wait_pool(1)
            sids = []
            for label, rows in (("warm", warm), ("cold", cold)):
                pool_before = len(self.pool()["pool"])
                t0 = time.perf_counter()
                sid, create_ms = self.create()
                _, prompt_ms, starting = self.prompt(sid, self.clicks(3))
                rows.append({"pool_before": pool_before, "create_ms": create_ms, "first_prompt_ms": prompt_ms,
                             "total_ms": (time.perf_counter() - t0) * 1e3, "session_starting_409s": starting})
                sids.append(sid)
                print(f"served start {label}  pool={pool_before}  create={create_ms:7.1f} ms  first prompt="
                      f"{prompt_ms:7.1f} ms  (409s: {starting})", flush=True)
            for sid in sids:
                self.delete(sid)
        return {"warm": rows_summary(warm), "cold": rows_summary(cold),
                "cold_pool_was_empty": all(r["pool_before"] == 0 for r in cold)}

    def phase_rebuild(self, sid: str) -> dict:
        import ray

        self.reset(sid)
        self.prompt(sid, self.clicks(3))
        self.propagate(sid)  # completed: the actor checkpoints (checkpoint_after_propagate: true)
        mid = self.args.frames // 2
        refine = {"frame_index": mid, "objects": [{"obj_id": 1, "points": click_points(1, self.args.height,
                                                                                      self.args.width)}]}
        self.prompt(sid, refine)  # a journal entry after the checkpoint
        out: dict[str, Any] = {}
        for label in ("checkpoint", "replay"):
            ckpts = self.checkpoint_bytes(sid)
            if label == "replay":
                self.delete_checkpoints(sid)
            self.wait_pool(1)
            journal_seq = ray.get(self.actor(sid).describe.remote(), timeout=60)["journal_seq"]
            self.kill(sid)
            body = {"frame_index": 1, "objects": [{"obj_id": 2, "points": [[self.args.width * 0.3,
                                                                            self.args.height * 0.6]]}]}
            resp, ms, starting = self.prompt(sid, body)
            if not resp["rebuilt"]:
                raise BenchError(f"{label}: the prompt after ray.kill did not say rebuilt")
            counters = ray.get(self.actor(sid).describe.remote(), timeout=60)["counters"]
            out[label] = {"prompt_ms": ms, "session_starting_409s": starting, "journal_seq": journal_seq,
                          "checkpoint_bytes": ckpts[-1] if ckpts and label == "checkpoint" else 0,
                          "frames_recomputed": counters.get("frames_processed", 0)}
            print(f"served rebuild {label:10s} next prompt {ms:8.1f} ms  (journal seq {journal_seq}, "
                  f"frames recomputed {out[label]['frames_recomputed']}, 409s {starting})", flush=True)
        return out

    def phase_concurrent(self, live: list[str]) -> list[dict]:
        import requests

        rows = []
        for n in ints(self.args.sessions):
            while len(live) < n:
                live.append(self.create()[0])
            sids = live[:n]
            for sid in sids:
                self.reset(sid)
                self.prompt(sid, self.clicks(3))
                self.memory(sid, reset_peak=True)
            self.wait_pool(self.args.warm_pool)  # no actor loading in the background while timing
            barrier = threading.Barrier(n)
            results: list[dict | BaseException] = [None] * n  # type: ignore[list-item]

            def one(i: int) -> None:
                try:
                    with requests.Session() as s:
                        results[i] = self.propagate(sids[i], s, barrier)
                except BaseException as exc:  # noqa: BLE001  (re-raised below)
                    results[i] = exc

            threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(self.args.http_timeout + 60)
            bad = [r for r in results if not isinstance(r, dict)]
            if bad:
                raise BenchError(f"concurrent propagation failed: {bad[0]!r}")
            res: list[dict] = results  # type: ignore[assignment]
            wall = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
            mem = [self.memory(sid) for sid in sids]
            row = {"sessions": n, "objects_per_session": 3, "frames_per_session": self.args.frames,
                   "aggregate_fps": n * self.args.frames / wall, "wall_s": wall,
                   "per_session_fps": [r["fps"] for r in res],
                   "mean_session_fps": float(np.mean([r["fps"] for r in res])),
                   "first_frame_ms": [r["first_frame_ms"] for r in res], "actor_memory": mem}
            rows.append(row)
            gpu = ""
            if mem and "cuda_max_allocated_mb" in mem[0]:
                gpu = f"  GPU peak/actor={np.mean([m['cuda_max_allocated_mb'] for m in mem]):.0f} MB"
            print(f"served {n} concurrent sessions  aggregate={row['aggregate_fps']:7.1f} frames/s  per session="
                  f"{row['mean_session_fps']:6.1f}  RSS/actor={np.mean([m['rss_mb'] for m in mem]):.0f} MB{gpu}",
                  flush=True)
        for sid in live:
            self.delete(sid)
        return rows


def rows_summary(rows: list[dict]) -> dict:
    return {"runs": rows, "total": summary([r["total_ms"] for r in rows]),
            "create": summary([r["create_ms"] for r in rows]),
            "first_prompt": summary([r["first_prompt_ms"] for r in rows])}


# ----------------------------------------------------------------------------------------------- output


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    m = result.get("model_only", {}).get("fps", [])
    for kind, style in (("clicks", "o-"), ("text", "s-")):
        rows = [r for r in m if r["prompt"] == kind]
        if rows:
            ax.plot([r["objects_tracked"] for r in rows], [r["fps"] for r in rows], style, label=f"model only, {kind}")
    s = result.get("served", {})
    for kind, style in (("clicks", "o--"), ("text", "s--")):
        rows = [r for r in s.get("fps", []) if r["prompt"] == kind]
        if rows:
            ax.plot([r["objects_tracked"] for r in rows], [r["fps"] for r in rows], style, label=f"served, {kind}")
    ax.set_xlabel("objects tracked")
    ax.set_ylabel("frames/s")
    ax.set_title("propagation speed")
    ax.legend()
    ax = axes[0][1]
    bars: dict[str, float] = {}
    if s.get("start"):
        bars["start warm"] = s["start"]["warm"]["total"]["p50_ms"]
        bars["start cold"] = s["start"]["cold"]["total"]["p50_ms"]
    for label in ("checkpoint", "replay"):
        if label in s.get("rebuild", {}):
            bars[f"rebuild {label}"] = s["rebuild"][label]["prompt_ms"]
    if bars:
        ax.bar(range(len(bars)), list(bars.values()))
        ax.set_xticks(range(len(bars)), [k.replace(" ", "\n") for k in bars])
        ax.set_ylabel("ms")
        ax.set_title("session start (create + first prompt) and rebuild (next prompt)")
    ax = axes[1][0]
    conc = s.get("concurrent", [])
    if conc:
        x = [r["sessions"] for r in conc]
        ax.plot(x, [r["aggregate_fps"] for r in conc], "o-", label="aggregate frames/s")
        ax.plot(x, [r["mean_session_fps"] for r in conc], "s-", label="per session frames/s")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("frames/s")
        ax.set_title("sessions propagating at once")
        ax.legend()
    ax = axes[1][1]
    st = result.get("model_only", {}).get("state", [])
    if st:
        for prune, style in ((True, "o-"), (False, "s--")):
            rows = [r for r in st if r["pruned"] is prune]
            ax.plot([r["frames"] for r in rows], [r["state_bytes"] / 1e6 for r in rows], style,
                    label=f"state, {'pruned' if prune else 'unpruned'}")
            ax.plot([r["frames"] for r in rows], [r["checkpoint_bytes"] / 1e6 for r in rows], style, alpha=0.5,
                    label=f"checkpoint, {'pruned' if prune else 'unpruned'}")
        ax.set_xlabel("frames propagated")
        ax.set_ylabel("MB")
        ax.set_title("session state vs video length (model only)")
        ax.legend()
    fig.suptitle(f"SAM 3 video sessions — {result['model']} on {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/video.json")
    parser.add_argument("--frames", type=int, default=48, help="frames of the benchmark video")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--objects", default="1,3,10", help="object counts (clicks; text: detector cap)")
    parser.add_argument("--state-frames", default="100,900", help="marks of the state measurement (model only)")
    parser.add_argument("--state-objects", type=int, default=3)
    parser.add_argument("--sessions", default="1,2,4", help="concurrent session counts (served)")
    parser.add_argument("--create-reps", type=int, default=2, help="warm and cold session starts each")
    parser.add_argument("--warm-pool", type=int, default=1, help="video.warm_pool of the served app")
    parser.add_argument("--actor-gpus", type=float, default=None,
                        help="GPU share per session actor (default on a GPU: min(0.25, 1/(max sessions + pool)))")
    parser.add_argument("--skip-model", action="store_true", help="served part only")
    parser.add_argument("--deploy-timeout", type=float, default=300.0, help="seconds for the app to be RUNNING")
    parser.add_argument("--actor-timeout", type=float, default=240.0, help="seconds for a session actor to start")
    parser.add_argument("--start-timeout", type=float, default=1.0,
                        help="video.start_timeout_s: how long a request waits for an actor before 409 (the product "
                        "default; it is also the granularity of the cold-start and rebuild times)")
    parser.add_argument("--http-timeout", type=float, default=300.0, help="read timeout of one HTTP call")
    args = parser.parse_args()
    if args.width % 2 or args.height % 2 or args.width < 64 or args.height < 16:
        parser.error("--width/--height must be even, width >= 64, height >= 16")
    if args.frames < 2:
        parser.error("--frames must be >= 2")
    if args.warm_pool < 1:
        parser.error("--warm-pool must be >= 1 (the warm vs cold start measurement needs a pool)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.monotonic()
    import torch
    import transformers

    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    transformers.logging.set_verbosity_error()  # "hitting max_num_objects" on every frame of the capped text runs
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_video: --device cuda but torch sees no CUDA device")
    full = args.model == "full-random"
    if full and not torch.cuda.is_available():
        print("warning: --model full-random on CPU is very slow (minutes per frame step batch)", file=sys.stderr)
    if args.model_dir is None:  # removed at exit (a full-random one is ~3.4 GB)
        args.model_dir = str(build_tiny_checkpoint(scratch_dir("bench-video-ckpt-"), full_size=full,
                                                   object_score_bias=10.0))
    video_dir = args.model_dir
    _, cuda, header = setup(args)
    import ray

    header.update(transformers=transformers.__version__, ray=ray.__version__,
                  video_model="video checkpoint with tracker object-score bias +10; detection thresholds 0, "
                              "hotstart_delay 0, max_num_objects = max(--objects)")
    result: dict[str, Any] = {**header, "frames": args.frames, "size": f"{args.width}x{args.height}",
                              "loadavg_start": os.getloadavg()}
    try:
        if not args.skip_model:
            result["model_only"] = bench_model(video_dir, args, cuda)
            if cuda:  # give the GPU memory of this process back before the session actors need it
                import gc

                gc.collect()
                torch.cuda.empty_cache()
        if not args.skip_served:
            concept_dir = video_dir
            if full:  # the concept/click replicas are not measured here: a tiny model on CPU
                concept_dir = str(build_tiny_checkpoint(scratch_dir("bench-ckpt-")))
            served = Served(video_dir, concept_dir, args, cuda)
            try:
                result["served"] = served.run()
            finally:
                served.stop()
    except BenchError as exc:
        print(f"bench_video: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    result["wall_s"] = time.monotonic() - t_start
    result["loadavg_end"] = os.getloadavg()
    print(f"total {result['wall_s']:.0f} s", flush=True)
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
