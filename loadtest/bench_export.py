"""Export benchmark: dataset exports of a video session per format, and whole-video `pcs_video` jobs (frames/s).

    python loadtest/bench_export.py --model tiny --out loadtest/results/export-tiny-cpu/export_tiny_cpu.json
    python loadtest/bench_export.py --model tiny --width 1280 --height 720 --frames 32 --repeats 2 \
        --out loadtest/results/export-tiny-cpu/export_tiny_cpu_720p.json
    python loadtest/bench_export.py --url http://127.0.0.1:8000 --out /tmp/export.json   # a running sam3-serve
    SAM3_API_KEY=... python loadtest/bench_export.py --url https://sam3.example --out /tmp/export.json  # api_keys

A benchmark, not a test: it prints a table and writes JSON (+ a PNG bar plot next to it when matplotlib is
installed). Without --url it starts its own local Ray + Serve app (build_app, file:// storage in a temp dir,
real HTTP on 127.0.0.1) with the tiny checkpoint (tracker object-score bias +10 so random weights "see"
objects, detection thresholds 0, hotstart_delay 0, max_num_objects = --objects, so one text prompt tracks
--objects objects) and `jobs.heartbeat_interval_s` = --heartbeat (a job's progress reaches GET /v1/jobs/{id}
with its heartbeat: this is the resolution of the tracking/export split below). With the tiny model the
numbers measure the serving and export path (storage reads, mask decoding, PNG/JPEG/H.264 encoding, ZIP),
not the model.

Sections (one synthetic H.264 mp4 of --frames frames of --width x --height, uploaded once):
- session: POST /v1/video/sessions, a text prompt on frame 0, one forward propagation streamed over NDJSON
  (every frame stored): frames/s of that interactive propagation, for comparison with pcs_video's tracking;
- exports: for each format alone (coco_instance, yolo_segmentation, binary_masks_png, overlay_mp4), COCO with
  include_images, all of them at once, and COCO of frame 0 only (the fixed cost of an export job):
  POST /v1/video/sessions/{sid}/exports (202 + a video_export job), GET /v1/jobs/{id} every --poll-s until it
  succeeded; wall time from the submit to the poll that saw
  `succeeded` (and the job record's created_at -> finished_at, which has no poll granularity), frames/s =
  frames / wall, the ZIP's size (downloaded from export_url, checked to be a ZIP with a manifest);
  --repeats rounds over every format (round-robin, so slow moments of a shared box spread over formats),
  medians reported, and server_ms_per_frame = (server time - the one-frame export's) / (frames - 1); one
  untimed export of every format first (lazy imports, first encoder);
- pcs_video: POST /v1/jobs {kind: pcs_video, video: {video_id} of the same upload, one text prompt, coco}:
  wall time and frames/s end to end, and the split the progress of GET /v1/jobs/{id} shows: "tracking"
  = submit until a poll first sees tracking finished (progress frames_tracked with done == total, or
  frames_exported: queueing, ingesting the video into the job's own session, the prompt, chunked tracking
  with a state checkpoint after each chunk), "export" = from there to succeeded. When the export is shorter
  than a heartbeat + a poll no poll sees it: the run then gives bounds (tracking_ended_after_s: the last poll
  still tracking; export_at_most_s). --repeats jobs, each started with a warm session actor in the pool.

Every wait is bounded (--deploy-timeout, --job-timeout, HTTP timeouts): a replica or session actor that
cannot be scheduled, or a job that fails, ends the run with a message and exit status 2 instead of hanging.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_common import (
    DeployError,
    add_api_key_arg,
    auth_headers,
    base_parser,
    deploy_or_fail,
    free_port,
    pyplot,
    scratch_dir,
    setup,
    start_ray,
    stop_ray,
    write_result,
)
from bench_video import mp4_bytes, synthetic_frames

TEXT = "red disc"
# (label, export options): each format alone, COCO with the frame JPEGs, everything at once, and COCO of one frame
# (the fixed cost of an export job: submit, dispatch, checks, job record writes, polling)
ONE_FRAME = "coco_instance (1 frame)"
EXPORTS: list[tuple[str, dict]] = [
    ("coco_instance", {"formats": ["coco_instance"]}),
    ("yolo_segmentation", {"formats": ["yolo_segmentation"]}),
    ("binary_masks_png", {"formats": ["binary_masks_png"]}),
    ("overlay_mp4", {"formats": ["overlay_mp4"]}),
    ("coco_instance+images", {"formats": ["coco_instance"], "include_images": True}),
    ("all+images", {"formats": ["coco_instance", "yolo_segmentation", "binary_masks_png", "overlay_mp4"],
                    "include_images": True}),
    (ONE_FRAME, {"formats": ["coco_instance"], "scope": {"frame_start": 0, "frame_end": 0}}),
]


class BenchError(RuntimeError):
    """The benchmark cannot go on (a replica/actor not scheduled, a job failed, a bad answer): exit 2."""


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def iso_s(a: str | None, b: str | None) -> float | None:
    """Seconds from ISO timestamp a to b (the job record's own clock), None when either is missing."""
    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# ----------------------------------------------------------------------------------------------- served app


class LocalApp:
    """A local Ray + Serve sam3 app (tiny model, file:// storage) for the benchmark; `base` is its URL."""

    def __init__(self, model_dir: str, args):
        self.args = args
        self.model_dir = model_dir
        self.store_dir = tempfile.mkdtemp(prefix="bench-export-store-")
        self.tmp: str | None = None
        self.actor_cpus = 0.25
        # every deployment and session actor must be placeable: logical CPUs > cores (as bench_video does)
        fixed = {"ingress": 1.0, "concept": 0.5, "click": 0.5, "job_worker": 0.25, "session_manager": 0.5}
        live_actors = 4  # the interactive session, the pcs_video job's session, the warm pool, a refill
        self.num_cpus = math.ceil(sum(fixed.values()) + live_actors * self.actor_cpus) + 1
        self.plan = {"logical_cpus": self.num_cpus, "replica_cpus": fixed, "actor_cpus": self.actor_cpus,
                     "max_live_actors": live_actors, "warm_pool": 1, "storage": "file:// (local disk)",
                     "heartbeat_interval_s": args.heartbeat, "video_chunk_frames": args.chunk_frames}

    def start(self) -> str:
        from ray import serve

        from serve_app.app import build_app

        port = free_port()
        self.tmp = start_ray(self.num_cpus, port, num_gpus=0)
        base = f"http://127.0.0.1:{port}"
        objects = self.args.objects
        app_args = {
            "model": {"model_id": self.model_dir},  # concept/click replicas: idle here
            "storage": {"uri": f"file://{self.store_dir}", "public_base_url": base},
            "concept": {"replica": {"num_cpus": 0.5, "num_gpus": 0}},
            "click": {"replica": {"num_cpus": 0.5, "num_gpus": 0}, "cache_bytes": 16 * 1024**2},
            "jobs": {"worker": {"num_cpus": 0.25}, "heartbeat_interval_s": self.args.heartbeat,
                     "lease_s": max(10.0, 10 * self.args.heartbeat), "video_chunk_frames": self.args.chunk_frames},
            "ingress": {"replica": {"num_cpus": 1, "max_ongoing_requests": 64}},
            "observability": {"debug_interface": True},  # SessionManager.debug_pool: wait for a warm actor
            "video": {"model_id": self.model_dir, "score_threshold_detection": 0.0, "new_det_thresh": 0.0,
                      "max_num_objects": objects, "hotstart_delay": 0,
                      "actor": {"num_cpus": self.actor_cpus, "num_gpus": 0}, "warm_pool": 1,
                      "start_timeout_s": 1.0, "manager": {"num_cpus": 0.5},
                      "limits": {"max_frames": max(self.args.frames, 16), "max_objects": max(objects, 4)}},
        }
        try:  # bounded: replicas Ray cannot place end the run with what they need vs what the cluster has
            deploy_or_fail(build_app(app_args), name="sam3", route_prefix="/", timeout_s=self.args.deploy_timeout)
        except DeployError as exc:
            raise BenchError(str(exc)) from exc
        self.manager = serve.get_deployment_handle("SessionManager", app_name="sam3")
        return base

    def stop(self) -> None:
        try:
            stop_ray(self.tmp)
        finally:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def wait_pool(self, n: int = 1) -> float:
        """Wait until the warm pool holds n actors (model loaded); returns the seconds waited."""
        import ray

        t0 = time.monotonic()
        while len(self.manager.debug_pool.remote().result(timeout_s=60)["pool"]) < n:
            if time.monotonic() - t0 > self.args.actor_timeout:
                raise BenchError(f"the warm pool did not fill within {self.args.actor_timeout:g}s: a session actor "
                                 f"needs num_cpus={self.actor_cpus}; available {ray.available_resources()}")
            time.sleep(0.25)
        return time.monotonic() - t0


# ----------------------------------------------------------------------------------------------- client


class Client:
    """The HTTP calls of the benchmark (requests, bounded timeouts)."""

    def __init__(self, base: str, args, app: LocalApp | None):
        import requests

        self.base = base.rstrip("/")
        self.args = args
        self.app = app
        self.http = requests.Session()
        self.timeout = (10, args.http_timeout)
        self.auth = auth_headers(args.api_key)

    def request(self, method: str, path: str, **kw):
        url = path if path.startswith("http") else self.base + path
        # the key goes to the service only: a presigned S3 URL (export_url) refuses a second auth mechanism
        own = url == self.base or url.startswith(self.base + "/")
        headers = {**self.auth, **kw.pop("headers", {})} if own else kw.pop("headers", None)
        return self.http.request(method, url, timeout=self.timeout, headers=headers, **kw)

    def wait_pool(self) -> float:
        return self.app.wait_pool(1) if self.app is not None else 0.0

    def create(self, video: bytes) -> dict:
        r = self.request("POST", "/v1/video/sessions", files={"video": ("v.mp4", video, "video/mp4")})
        if r.status_code != 201:
            raise BenchError(f"create session: HTTP {r.status_code} {r.text[:300]}")
        body = r.json()
        if body["num_frames"] != self.args.frames:
            raise BenchError(f"the session has {body['num_frames']} frames, expected {self.args.frames}")
        return body

    def prompt(self, sid: str, body: dict) -> dict:
        """POST prompts, retried while 409 session_starting (bounded by --actor-timeout)."""
        t0 = time.monotonic()
        while True:
            r = self.request("POST", f"/v1/video/sessions/{sid}/prompts", json=body)
            starting = r.status_code == 409 and r.headers.get("content-type", "").startswith("application/json") \
                and r.json().get("error", {}).get("code") == "session_starting"
            if not starting:
                break
            if time.monotonic() - t0 > self.args.actor_timeout:
                raise BenchError(f"the actor of session {sid} did not start within {self.args.actor_timeout:g}s")
            time.sleep(0.1)
        if r.status_code != 200:
            raise BenchError(f"prompt on {sid}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()

    def propagate(self, sid: str) -> dict:
        """A forward propagation from frame 0 read to its end; every frame stored, frames/s."""
        t0 = time.perf_counter()
        seen, end = 0, None
        with self.request("POST", f"/v1/video/sessions/{sid}/propagate", stream=True,
                          json={"direction": "forward", "start_frame_index": 0}) as r:
            if r.status_code != 200:
                raise BenchError(f"propagate {sid}: HTTP {r.status_code} {r.text[:300]}")
            for line in r.iter_lines():
                if not line:
                    continue
                msg = json.loads(line)
                if msg["type"] == "frame":
                    seen += 1
                else:
                    end = msg
                    break
        total = time.perf_counter() - t0
        n = self.args.frames
        if end is None or end["type"] != "done" or seen != n or end.get("stored") != n:
            raise BenchError(f"propagate {sid}: bad stream (end={end}, {seen} frames of {n})")
        return {"frames": n, "total_s": total, "fps": n / total}

    def delete(self, sid: str) -> None:
        r = self.request("DELETE", f"/v1/video/sessions/{sid}")
        if r.status_code != 204:
            raise BenchError(f"delete {sid}: HTTP {r.status_code} {r.text[:300]}")

    def wait_job(self, job_id: str, t_submit: float) -> tuple[dict, float, list[dict], float]:
        """Poll GET /v1/jobs/{id} every --poll-s until it ends: (final view, seconds from the submit to the
        poll that saw it succeed, progress timeline [{t_s, done, total, unit}] whenever the progress changed,
        seconds from the submit to the last poll that saw the job still before or in tracking: no progress, or
        frames_tracked with done < total)."""
        timeline: list[dict] = []
        last = None
        last_tracking = 0.0
        while True:
            r = self.request("GET", f"/v1/jobs/{job_id}")
            now = time.perf_counter()
            if r.status_code != 200:
                raise BenchError(f"job {job_id}: HTTP {r.status_code} {r.text[:300]}")
            view = r.json()
            progress = view.get("progress")
            if progress is not None and progress != last:
                timeline.append({"t_s": now - t_submit, **progress})
                last = progress
            if view["status"] == "succeeded":
                return view, now - t_submit, timeline, last_tracking
            if progress is None or (progress["unit"] == "frames_tracked" and progress["done"] < progress["total"]):
                last_tracking = now - t_submit
            if view["status"] in ("failed", "cancelled"):
                raise BenchError(f"job {job_id} ({view['kind']}) {view['status']}: {view.get('error')}")
            if now - t_submit > self.args.job_timeout:
                raise BenchError(f"job {job_id} ({view['kind']}) still {view['status']} after "
                                 f"{self.args.job_timeout:g}s (progress {progress})")
            time.sleep(self.args.poll_s)

    def download(self, url: str) -> tuple[int, float, dict]:
        """The export ZIP: (bytes, download seconds, its manifest); checks it is a ZIP with export/manifest.json."""
        t0 = time.perf_counter()
        r = self.request("GET", url)
        seconds = time.perf_counter() - t0
        if r.status_code != 200:
            raise BenchError(f"export download: HTTP {r.status_code} {r.text[:300]}")
        try:
            with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                manifest = json.loads(zf.read("export/manifest.json"))
                members = len(zf.namelist())
        except (zipfile.BadZipFile, KeyError) as exc:
            raise BenchError(f"the export is not a ZIP with export/manifest.json: {exc}") from exc
        return len(r.content), seconds, {**manifest, "members": members}

    def job_row(self, view: dict, wall_s: float, timeline: list[dict], frames: int) -> dict:
        size, download_s, manifest = self.download(view["export_url"])
        if manifest["frames"]["count"] != frames:
            raise BenchError(f"job {view['job_id']}: the export has {manifest['frames']['count']} frames, "
                             f"expected {frames}")
        return {"job_id": view["job_id"], "wall_s": wall_s, "fps": frames / wall_s,
                "server_s": iso_s(view.get("created_at"), view.get("finished_at")),
                "server_run_s": iso_s(view.get("started_at"), view.get("finished_at")),
                "attempts": view["attempts"], "zip_bytes": size, "download_s": download_s,
                "zip_members": manifest["members"], "units": len(manifest["units"]), "timeline": timeline}


# ----------------------------------------------------------------------------------------------- phases


def phase_session(client: Client, video: bytes) -> dict:
    client.wait_pool()
    t0 = time.perf_counter()
    body = client.create(video)
    sid = body["session_id"]
    resp = client.prompt(sid, {"frame_index": 0, "text": TEXT})
    prompt_s = time.perf_counter() - t0
    prop = client.propagate(sid)
    print(f"session {sid}: create + text prompt {prompt_s * 1e3:.0f} ms ({len(resp['objects'])} objects on frame "
          f"0), propagate {prop['frames']} frames {prop['fps']:.1f} frames/s", flush=True)
    return {"session_id": sid, "video_id": body["video_id"], "create_and_prompt_s": prompt_s,
            "objects_on_frame_0": len(resp["objects"]), "propagate": prop}


def export_once(client: Client, sid: str, options: dict, frames: int) -> dict:
    t0 = time.perf_counter()
    r = client.request("POST", f"/v1/video/sessions/{sid}/exports", json=options)
    submit_s = time.perf_counter() - t0
    if r.status_code != 202:
        raise BenchError(f"export {options}: HTTP {r.status_code} {r.text[:300]}")
    view, wall_s, timeline, _ = client.wait_job(r.json()["job_id"], t0)
    return {**client.job_row(view, wall_s, timeline, frames), "submit_ms": submit_s * 1e3}


def scope_frames(options: dict, frames: int) -> int:
    scope = options.get("scope", {})
    end = scope.get("frame_end", frames - 1)
    return end - scope.get("frame_start", 0) + 1


def phase_exports(client: Client, sid: str) -> dict:
    everything = dict(EXPORTS)["all+images"]
    warm = export_once(client, sid, everything, client.args.frames)  # untimed: lazy imports, first encoder, ...
    print(f"export warm-up (all formats): {warm['wall_s']:.2f} s", flush=True)
    runs: dict[str, list[dict]] = {label: [] for label, _ in EXPORTS}
    for rep in range(client.args.repeats):
        for label, options in EXPORTS:
            row = export_once(client, sid, options, scope_frames(options, client.args.frames))
            runs[label].append(row)
            print(f"export {label:24s} rep {rep + 1}: {row['wall_s']:6.2f} s  {row['fps']:7.1f} frames/s  "
                  f"(server {row['server_s']:.2f} s)  zip {row['zip_bytes'] / 1e6:7.2f} MB  "
                  f"{row['zip_members']} members", flush=True)
    out: dict[str, Any] = {}
    for label, options in EXPORTS:
        frames = scope_frames(options, client.args.frames)
        rows = runs[label]
        walls = [r["wall_s"] for r in rows]
        servers = [r["server_s"] for r in rows if r["server_s"] is not None]
        out[label] = {"options": options, "frames": frames, "runs": rows,
                      "wall_s_median": median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
                      "fps_median": frames / median(walls),
                      "server_s_median": median(servers),
                      "server_fps_median": frames / median(servers) if servers else float("nan"),
                      "zip_bytes": rows[-1]["zip_bytes"], "zip_members": rows[-1]["zip_members"],
                      "units": rows[-1]["units"]}
    fixed = out[ONE_FRAME]["server_s_median"]
    for label, row in out.items():  # the job's fixed cost taken out: what one more frame costs in this format
        if row["frames"] > 1:
            row["server_ms_per_frame"] = (row["server_s_median"] - fixed) / (row["frames"] - 1) * 1e3
    return out


def tracking_end(timeline: list[dict], wall_s: float) -> float | None:
    """When the client first saw tracking finished: progress frames_tracked with done == total, or any
    frames_exported progress, in a poll before the one that saw the job succeed; None if not seen."""
    for p in timeline:
        if p["t_s"] < wall_s and (p["unit"] == "frames_exported" or
                                  (p["unit"] == "frames_tracked" and p["done"] == p["total"])):
            return p["t_s"]
    return None


def phase_pcs(client: Client, video_id: str) -> dict:
    frames = client.args.frames
    body = {"kind": "pcs_video", "input": {"video": {"video_id": video_id}, "prompts": [TEXT],
                                            "export": {"formats": ["coco_instance"]}}}
    rows = []
    for rep in range(client.args.repeats):
        pool_wait_s = client.wait_pool()  # the job's session takes a warm actor (it goes back to the pool after)
        t0 = time.perf_counter()
        r = client.request("POST", "/v1/jobs", json=body)
        if r.status_code != 202:
            raise BenchError(f"pcs_video submit: HTTP {r.status_code} {r.text[:300]}")
        view, wall_s, timeline, still_tracking = client.wait_job(r.json()["job_id"], t0)
        row = client.job_row(view, wall_s, timeline, frames)
        result = client.request("GET", view["result_url"]).json()
        tracked = tracking_end(timeline, wall_s)
        # tracking ended between the last poll that saw it going on and the first that saw it finished
        row.update(pool_wait_s=pool_wait_s, tracking=result.get("tracking"), tracking_s=tracked,
                   export_s=wall_s - tracked if tracked is not None else None,
                   tracking_ended_after_s=still_tracking, export_at_most_s=wall_s - still_tracking)
        if tracked is not None:
            row["tracking_fps"] = frames / tracked
            row["export_fps"] = frames / (wall_s - tracked)
        rows.append(row)
        split = (f"tracking {tracked:.2f} s + export {wall_s - tracked:.2f} s" if tracked is not None
                 else f"tracking >= {still_tracking:.2f} s, export <= {wall_s - still_tracking:.2f} s: the end of "
                 "tracking was not seen before the job succeeded")
        print(f"pcs_video rep {rep + 1}: {wall_s:6.2f} s  {row['fps']:6.1f} frames/s end to end  ({split})  "
              f"zip {row['zip_bytes'] / 1e6:.2f} MB, {row['units']} objects", flush=True)
    walls = [r["wall_s"] for r in rows]
    tracking = [r["tracking_s"] for r in rows if r["tracking_s"] is not None]
    export = [r["export_s"] for r in rows if r["export_s"] is not None]
    return {"input": body["input"], "frames": frames, "runs": rows, "wall_s_median": median(walls),
            "fps_median": frames / median(walls), "tracking_s_median": median(tracking),
            "tracking_fps_median": frames / median(tracking) if tracking else float("nan"),
            "export_s_median": median(export),
            "export_fps_median": frames / median(export) if export else float("nan"),
            "server_s_median": median([r["server_s"] for r in rows if r["server_s"] is not None]),
            "splits_seen": len(tracking), "export_at_most_s_median": median([r["export_at_most_s"] for r in rows]),
            "split_resolution": "the job's heartbeat interval + --poll-s (progress reaches GET /v1/jobs/{id} "
                                "with the heartbeat)"}


# ----------------------------------------------------------------------------------------------- output


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    exports = {k: v for k, v in result.get("exports", {}).items() if k != ONE_FRAME}
    pcs = result.get("pcs_video")
    labels = list(exports)
    fps = [exports[k]["fps_median"] for k in labels]
    lo = [exports[k]["fps_median"] - result["frames"] / exports[k]["wall_s_max"] for k in labels]
    hi = [result["frames"] / exports[k]["wall_s_min"] - exports[k]["fps_median"] for k in labels]
    colors = ["C0"] * len(labels)
    if pcs:
        for key, label in (("fps_median", "pcs_video\nend to end"), ("tracking_fps_median", "pcs_video\ntracking")):
            if not math.isnan(pcs.get(key, float("nan"))):
                labels.append(label)
                fps.append(pcs[key])
                lo.append(0.0)
                hi.append(0.0)
                colors.append("C1")
    if "session" in result:
        labels.append("interactive\npropagate")
        fps.append(result["session"]["propagate"]["fps"])
        lo.append(0.0)
        hi.append(0.0)
        colors.append("C2")
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    x = range(len(labels))
    ax.bar(x, fps, color=colors, yerr=[lo, hi], capsize=3)
    ax.set_xticks(list(x), [lab.replace("+", "\n+") for lab in labels], fontsize=8, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_ylabel("frames/s, log scale (median; whiskers: min-max of the repeats)")
    ax.set_title(f"{result['frames']} frames {result['size']}: export jobs (blue), pcs_video (orange)")
    for i, v in enumerate(fps):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax = axes[1]
    names = list(exports)
    sizes = [exports[k]["zip_bytes"] / 1e6 for k in names]
    ax.barh(range(len(names)), sizes)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("ZIP MB")
    ax.set_title("export size")
    for i, v in enumerate(sizes):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    fig.suptitle(f"SAM 3 video exports — {result['model']} on {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_table(result: dict) -> None:
    print(f"--- {result['frames']} frames {result['size']}, median of {result['repeats']}", flush=True)
    for label, row in result.get("exports", {}).items():
        per_frame = f"  {row['server_ms_per_frame']:5.2f} ms/frame" if "server_ms_per_frame" in row else ""
        print(f"  export {label:24s} {row['wall_s_median']:6.2f} s  {row['fps_median']:7.1f} frames/s  "
              f"(server {row['server_s_median']:.2f} s{per_frame})  {row['zip_bytes'] / 1e6:7.2f} MB", flush=True)
    pcs = result.get("pcs_video")
    if pcs:
        print(f"  pcs_video end to end            {pcs['wall_s_median']:6.2f} s  {pcs['fps_median']:7.1f} frames/s  "
              f"(tracking {pcs['tracking_s_median']:.2f} s = {pcs['tracking_fps_median']:.1f} frames/s in the "
              f"{pcs['splits_seen']}/{len(pcs['runs'])} runs that saw it end; export {pcs['export_s_median']:.2f} s, "
              f"at most {pcs['export_at_most_s_median']:.2f} s)", flush=True)


def main() -> None:
    parser = base_parser(__doc__, "loadtest/results/export-tiny-cpu/export_tiny_cpu.json")
    parser.add_argument("--url", help="benchmark this running service instead of starting Ray + Serve here")
    add_api_key_arg(parser)
    parser.add_argument("--frames", type=int, default=64, help="frames of the benchmark video")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--objects", type=int, default=3, help="video.max_num_objects: objects one text prompt "
                        "tracks (local app)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per export format and pcs_video jobs")
    parser.add_argument("--skip-pcs", action="store_true", help="no pcs_video jobs")
    parser.add_argument("--poll-s", type=float, default=0.05, help="GET /v1/jobs/{id} interval")
    parser.add_argument("--heartbeat", type=float, default=0.05,
                        help="jobs.heartbeat_interval_s of the local app (progress resolution)")
    parser.add_argument("--chunk-frames", type=int, default=32, help="jobs.video_chunk_frames of the local app")
    parser.add_argument("--deploy-timeout", type=float, default=300.0, help="seconds for the app to be RUNNING")
    parser.add_argument("--actor-timeout", type=float, default=240.0, help="seconds for a session actor to start")
    parser.add_argument("--job-timeout", type=float, default=300.0, help="seconds for one job to finish")
    parser.add_argument("--http-timeout", type=float, default=300.0, help="read timeout of one HTTP call")
    args = parser.parse_args()
    if args.width % 2 or args.height % 2 or args.width < 64 or args.height < 16:
        parser.error("--width/--height must be even, width >= 64, height >= 16")
    if args.skip_served:
        parser.error("--skip-served: everything bench_export measures is served")
    if args.frames < 2 or args.repeats < 1 or args.objects < 1:
        parser.error("--frames must be >= 2, --repeats and --objects >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.monotonic()
    import transformers

    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    transformers.logging.set_verbosity_error()
    if args.model_dir is None and args.url is None:  # removed at exit
        args.model_dir = str(build_tiny_checkpoint(scratch_dir("bench-export-ckpt-"),
                                                   full_size=args.model == "full-random", object_score_bias=10.0))
    elif args.model_dir is None:
        args.model_dir = "(the service's)"  # setup() must not build a checkpoint nobody uses
    _, _, header = setup(args)
    video = mp4_bytes(synthetic_frames(args.frames, args.height, args.width))
    result: dict[str, Any] = {
        **header, "target": args.url or "local Ray + Serve (started here)", "frames": args.frames,
        "size": f"{args.width}x{args.height}", "repeats": args.repeats, "text_prompt": TEXT,
        "video": f"{args.frames} frames {args.width}x{args.height} H.264 mp4 ({len(video)} bytes)",
        "poll_s": args.poll_s, "loadavg_start": os.getloadavg()}
    app = LocalApp(args.model_dir, args) if args.url is None else None
    try:
        try:
            if app is not None:
                t0 = time.monotonic()
                base = app.start()
                result["plan"] = app.plan
                result["deploy_s"] = time.monotonic() - t0
                print(f"app up in {result['deploy_s']:.1f} s", flush=True)
            else:
                base = args.url
            client = Client(base, args, app)
            session = phase_session(client, video)
            result["session"] = session
            result["exports"] = phase_exports(client, session["session_id"])
            client.delete(session["session_id"])
            if not args.skip_pcs:
                result["pcs_video"] = phase_pcs(client, session["video_id"])
        finally:
            if app is not None:
                app.stop()
    except BenchError as exc:
        print(f"bench_export: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    result["wall_s"] = time.monotonic() - t_start
    result["loadavg_end"] = os.getloadavg()
    print_table(result)
    print(f"total {result['wall_s']:.0f} s", flush=True)
    write_result(result, args.out, plot)


if __name__ == "__main__":
    main()
