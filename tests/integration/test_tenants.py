"""Tenant isolation over real Serve HTTP: two API keys of two tenants (the `auth_url` app of tests/conftest.py,
auth.mode api_keys). Each tenant sees only what it created (images, uploads, results, jobs, video sessions,
library videos, storage usage); another tenant's ids answer 404 exactly like ids that never existed (no
existence oracle); a job of a tenant runs and recovers as that tenant."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ACME_KEY, GLOBEX_KEY
from tests.helpers import b64, png_bytes, wait_for
from tests.videos import make_video


@pytest.fixture(scope="module")
def acme(auth_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_url, timeout=120, headers={"Authorization": f"Bearer {ACME_KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def globex(auth_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_url, timeout=120, headers={"X-API-Key": GLOBEX_KEY}) as c:
        yield c


def code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


def test_images_and_clicks_are_per_tenant(acme, globex):
    data = png_bytes(seed=41)
    r = acme.post("/v1/images", files={"file": ("a.png", data, "image/png")})
    assert r.status_code in (200, 201), r.text
    image_id = r.json()["image_id"]
    assert image_id in [i["image_id"] for i in acme.get("/v1/images").json()["images"]]
    assert image_id not in [i["image_id"] for i in globex.get("/v1/images").json()["images"]]
    click = {"image": {"image_id": image_id}, "objects": [{"points": [[10, 10]]}]}
    assert acme.post("/v1/pvs/image", json=click).status_code == 200
    r = globex.post("/v1/pvs/image", json=click)  # acme's embedding may be cached: the key is tenant-scoped
    assert r.status_code == 404 and code(r) == "image_not_found", r.text
    never = globex.post("/v1/pvs/image", json={**click, "image": {"image_id": "0" * 64}})
    assert (never.status_code, code(never)) == (404, "image_not_found")  # same answer: no existence oracle
    assert globex.delete(f"/v1/images/{image_id}").status_code == 404
    assert acme.delete(f"/v1/images/{image_id}").status_code == 204


def test_uploads_are_per_tenant(acme, globex):
    data = png_bytes(seed=42)
    up = acme.post("/v1/uploads", json={"content_type": "image/png", "content_length": len(data)}).json()
    assert httpx.put(up["url"], content=data, headers=up["headers"], timeout=30).status_code in (200, 204)
    body = {"image": {"upload_id": up["upload_id"]}, "prompts": [{"text": "x"}]}
    assert acme.post("/v1/pcs/image", json=body).status_code == 200
    r = globex.post("/v1/pcs/image", json=body)
    assert r.status_code == 404 and code(r) == "upload_not_found", r.text


def test_jobs_are_per_tenant_and_run_as_their_tenant(acme, globex):
    body = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=43))}, "prompts": [{"text": "a"}]}}
    job = acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-key"}).json()
    other = globex.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-key"}).json()
    assert other["job_id"] != job["job_id"]  # Idempotency-Keys are per tenant
    done = wait_for(lambda: (v := acme.get(f"/v1/jobs/{job['job_id']}").json())["status"] == "succeeded" and v,
                    120, "acme's job")
    assert httpx.get(done["result_url"], timeout=30).status_code == 200
    for r in (globex.get(f"/v1/jobs/{job['job_id']}"), globex.delete(f"/v1/jobs/{job['job_id']}")):
        assert r.status_code == 404 and code(r) == "job_not_found", r.text
    assert job["job_id"] not in [j["job_id"] for j in globex.get("/v1/jobs").json()["jobs"]]
    assert other["job_id"] not in [j["job_id"] for j in acme.get("/v1/jobs").json()["jobs"]]
    wait_for(lambda: globex.get(f"/v1/jobs/{other['job_id']}").json()["status"] == "succeeded", 120, "globex's job")


def test_video_sessions_and_library_are_per_tenant(acme, globex, tmp_path):
    path = tmp_path / "v.mp4"
    make_video(str(path), n=4, h=48, w=64, fps=4.0)
    r = acme.post("/v1/video/sessions", files={"video": ("v.mp4", path.read_bytes(), "video/mp4")})
    assert r.status_code == 201, r.text
    session = r.json()
    sid, video_id = session["session_id"], session["video_id"]
    for r in (globex.get(f"/v1/video/sessions/{sid}"), globex.get(f"/v1/video/sessions/{sid}/frames/0"),
              globex.delete(f"/v1/video/sessions/{sid}")):
        assert r.status_code == 404 and code(r) == "session_not_found", r.text
    assert sid not in [s["session_id"] for s in globex.get("/v1/video/sessions").json()["sessions"]]
    assert acme.get(f"/v1/videos/{video_id}").status_code == 200  # the upload joined acme's library
    r = globex.get(f"/v1/videos/{video_id}")
    assert r.status_code == 404 and code(r) == "video_not_found"
    r = globex.post("/v1/video/sessions", json={"video": {"video_id": video_id}})
    assert r.status_code == 404 and code(r) == "video_not_found", r.text
    acme_usage = acme.get("/v1/storage/usage").json()
    globex_usage = globex.get("/v1/storage/usage").json()
    assert acme_usage["tenant"] == "acme" and globex_usage["tenant"] == "globex"
    assert acme_usage["videos"]["bytes"] >= path.stat().st_size > globex_usage["videos"]["bytes"]
    assert acme.delete(f"/v1/video/sessions/{sid}").status_code == 204
