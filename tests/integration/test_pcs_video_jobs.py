"""Whole-video batch jobs (`pcs_video`) over real Serve: text prompts tracked through a stored video in chunks
(jobs.video_chunk_frames = 4 in tests/conftest.py), then the export ZIP; a job whose JobWorker replica is
killed mid-run resumes after its last stored chunk (counted in the result, not timed) and produces the same
archive as an uninterrupted run.

The kill is made deterministic with the JobWorker's debug interface: `debug_hold_video_jobs(1)` makes that
replica stop a pcs_video attempt after its first chunk until the replica dies; the test waits for the job's
progress to show that chunk, kills the replica, and a fresh replica's recovery finishes the job."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import kill_replica, wait_for
from tests.integration.test_video_http import create
from tests.videos import make_video

N_FRAMES, H, W, FPS, CHUNK = 16, 48, 64, 8.0, 4


@pytest.fixture(scope="module")
def client(serve_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def video_id(client, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    make_video(str(path), n=N_FRAMES, h=H, w=W, fps=FPS)
    s = create(client, path.read_bytes())  # stores the video; the session itself is not needed
    assert client.delete(f"/v1/video/sessions/{s['session_id']}").status_code == 204
    return s["video_id"]


def job_input(video_id: str) -> dict:
    return {"video": {"video_id": video_id}, "prompts": ["shape"],
            "export": {"formats": ["coco_instance", "binary_masks_png", "yolo_segmentation"],
                       "scope": {"frame_start": 1}}}


def submit(client: httpx.Client, body: dict, **headers: str) -> dict:
    r = client.post("/v1/jobs", json={"kind": "pcs_video", "input": body}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def finished(client: httpx.Client, job_id: str) -> tuple[dict, dict, zipfile.ZipFile]:
    """(job view, result JSON, archive) of a job that must succeed."""
    done = wait_for(lambda: (v := client.get(f"/v1/jobs/{job_id}").json())["status"]
                    in ("succeeded", "failed", "cancelled") and v, 300, f"job {job_id}", interval_s=0.3)
    assert done["status"] == "succeeded", done
    result = httpx.get(done["result_url"], timeout=30).json()
    archive = zipfile.ZipFile(io.BytesIO(httpx.get(done["export_url"], timeout=60).content))
    return done, result, archive


def contents(zf: zipfile.ZipFile) -> dict[str, bytes]:
    """Every member's bytes, the manifest without `source` (it names the job's own session)."""
    out = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(out.pop("export/manifest.json"))
    manifest.pop("source")
    out["export/manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return out


@pytest.fixture(scope="module")
def uninterrupted(client, video_id) -> tuple[dict, dict, dict[str, bytes]]:
    job = submit(client, job_input(video_id))
    done, result, zf = finished(client, job["job_id"])
    return done, result, contents(zf)


def test_pcs_video_tracks_every_frame_in_chunks_and_exports(client, uninterrupted):
    done, result, files = uninterrupted
    assert done["attempts"] == 1
    assert done["progress"]["done"] == done["progress"]["total"] == N_FRAMES - 1
    assert result["tracking"] == {"frames": N_FRAMES - 1, "resumed_from_frame": 1, "chunks_this_attempt": 4,
                                  "frames_tracked_this_attempt": N_FRAMES - 1, "chunk_frames": CHUNK}
    manifest = json.loads(files["export/manifest.json"])
    assert manifest["frames"] == {"start": 1, "end": N_FRAMES - 1, "count": N_FRAMES - 1}
    assert manifest["units"], "the tiny tracker must see objects"
    assert sum(name.endswith(".png") for name in files) == len(manifest["units"]) * (N_FRAMES - 1)
    coco = json.loads(files["export/annotations/instances.json"])
    assert coco["annotations"] and {c["name"] for c in coco["categories"]} == {"object"}
    # the job's own session is gone with its resume state once the export is stored
    sessions = client.get("/v1/video/sessions").json()["sessions"]
    assert result["export"]["source"]["session_id"] not in [s["session_id"] for s in sessions]


def test_killed_worker_resumes_after_its_last_chunk_with_the_same_output(client, video_id, uninterrupted):
    from ray import serve

    worker = serve.get_deployment_handle("JobWorker", app_name="sam3")
    held = worker.debug_hold_video_jobs.remote(1).result()  # the app has one JobWorker replica
    job = submit(client, job_input(video_id))
    view = wait_for(lambda: (v := client.get(f"/v1/jobs/{job['job_id']}").json()).get("progress")
                    and v["progress"]["done"] >= CHUNK and v, 120, "the first chunk to be stored", interval_s=0.2)
    assert view["status"] == "running" and view["progress"]["done"] == CHUNK  # held after exactly one chunk
    kill_replica("sam3", "JobWorker", held.rsplit("-", 1)[0])

    done, result, zf = finished(client, job["job_id"])
    assert done["attempts"] == 2
    tracking = result["tracking"]
    assert tracking["resumed_from_frame"] == 1 + CHUNK  # frames 1..4 were not tracked again
    assert tracking["frames_tracked_this_attempt"] == N_FRAMES - 1 - CHUNK
    assert contents(zf) == uninterrupted[2]


def test_idempotency_key_and_bad_inputs(client, video_id):
    first = submit(client, job_input(video_id), **{"Idempotency-Key": "pcs-video-once"})
    again = submit(client, job_input(video_id), **{"Idempotency-Key": "pcs-video-once"})
    assert again["job_id"] == first["job_id"]
    finished(client, first["job_id"])
    for body, code in [({**job_input(video_id), "prompts": []}, "invalid_job_input"),
                       ({**job_input(video_id), "export": {"formats": ["gif"]}}, "invalid_job_input")]:
        r = client.post("/v1/jobs", json={"kind": "pcs_video", "input": body})
        assert r.status_code in (400, 422) and r.json()["error"]["code"] == code, r.text
    # a video that does not exist fails the job with a clear code (not retried)
    missing = submit(client, {**job_input(video_id), "video": {"video_id": "0" * 64}})
    done = wait_for(lambda: (v := client.get(f"/v1/jobs/{missing['job_id']}").json())["status"]
                    in ("succeeded", "failed") and v, 60, "the job to fail")
    assert done["status"] == "failed" and done["error"]["code"] == "video_not_found"
