"""Storage and jobs over real HTTP: the session's Serve app stores everything on a real S3 server (SeaweedFS).

Uploads via presigned PUT, images by reference (upload_id, s3:// url), results by reference
("return": "url"), and jobs (202 + Location, polling, Idempotency-Key, listing, cancel, failures).
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from serve_app.codecs.masks import decode_rle
from tests.fixtures.s3 import BUCKET, INPUT_BUCKET
from tests.helpers import b64, instances, png_bytes, wait_job

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = [{"text": "car"}, {"text": "dog"}]


def presigned_upload(base: str, data: bytes, content_type: str = "image/png") -> str:
    """POST /v1/uploads, then PUT `data` straight to storage with the signed headers; the upload id."""
    r = requests.post(base + "/v1/uploads", json={"content_type": content_type, "content_length": len(data)},
                      timeout=30)
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["method"] == "PUT" and up["headers"]["Content-Type"] == content_type
    assert up["headers"]["Content-Length"] == str(len(data))
    put = requests.put(up["url"], data=data, headers=up["headers"], timeout=30)
    assert put.status_code == 200, put.text
    return up["upload_id"]


def pcs(base: str, image: dict, **options) -> requests.Response:
    body = {"image": image, "prompts": PROMPTS, "threshold": 0.0, "max_instances": 3, **options}
    return requests.post(base + "/v1/pcs/image", json=body, timeout=120)


@pytest.fixture(scope="module")
def inline_result(serve_url) -> dict:
    r = pcs(serve_url, {"base64": b64(png_bytes(seed=3))})
    assert r.status_code == 200, r.text
    return r.json()


def test_presigned_upload_then_use_by_upload_id(serve_url, inline_result):
    upload_id = presigned_upload(serve_url, png_bytes(seed=3))
    r = pcs(serve_url, {"upload_id": upload_id})
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == inline_result["image_id"]
    assert instances(r.json()) == instances(inline_result)


def test_upload_is_validated_when_used(serve_url):
    not_an_image = presigned_upload(serve_url, b"these bytes are no image at all")
    r = pcs(serve_url, {"upload_id": not_an_image})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_image")
    never_put = requests.post(serve_url + "/v1/uploads", json={"content_type": "image/png", "content_length": 10},
                              timeout=30).json()["upload_id"]
    r = pcs(serve_url, {"upload_id": never_put})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "upload_not_found")


@pytest.mark.parametrize("body, status, code", [
    ({"content_type": "text/html", "content_length": 10}, 415, "unsupported_upload_type"),
    ({"content_type": "image/png", "content_length": 2 * 1024**3}, 413, "upload_too_large"),
    ({"content_type": "image/png"}, 422, "validation_error"),
    ({"content_type": "image/png", "content_length": 0}, 422, "validation_error"),
])
def test_bad_upload_requests(serve_url, body, status, code):
    r = requests.post(serve_url + "/v1/uploads", json=body, timeout=30, headers={"x-request-id": "up-1"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["request_id"] == "up-1"


def test_put_with_another_size_than_signed_is_rejected_by_storage(serve_url):
    data = png_bytes(seed=4)
    up = requests.post(serve_url + "/v1/uploads", json={"content_type": "image/png", "content_length": len(data)},
                       timeout=30).json()
    put = requests.put(up["url"], data=data + b"extra", headers={**up["headers"], "Content-Length": str(len(data) + 5)},
                       timeout=30)
    assert put.status_code == 403
    r = pcs(serve_url, {"upload_id": up["upload_id"]})  # nothing was written
    assert (r.status_code, r.json()["error"]["code"]) == (404, "upload_not_found")


def test_image_by_s3_url_within_allowed_buckets(serve_url, seaweedfs, app_storage, inline_result):
    key = f"external/{uuid.uuid4().hex}.png"
    seaweedfs.client().put_object(Bucket=INPUT_BUCKET, Key=key, Body=png_bytes(seed=3), ContentType="image/png")
    r = pcs(serve_url, {"url": f"s3://{INPUT_BUCKET}/{key}"})
    assert r.status_code == 200, r.text
    assert instances(r.json()) == instances(inline_result)
    seaweedfs.client().put_object(Bucket=INPUT_BUCKET, Key="external/huge.png", Body=b"0" * 250_000)  # limit: 200 kB
    # the app's own bucket (listed in allowed_url_buckets) is readable only under the caller's own t/{tenant}/
    seaweedfs.client().put_object(Bucket=BUCKET, Key=key, Body=png_bytes(seed=3), ContentType="image/png")
    root = app_storage.uri.removeprefix(f"s3://{BUCKET}/")
    stored = requests.post(serve_url + "/v1/images", params={"precompute": "false"}, timeout=60,
                           files={"file": ("a.png", png_bytes(seed=3), "image/png")}).json()
    own_image = f"s3://{BUCKET}/{root}/t/default/images/{stored['image_id']}"
    assert pcs(serve_url, {"url": own_image}).status_code == 200
    for url, status, code in [(f"s3://{INPUT_BUCKET}/external/missing.png", 404, "image_not_found"),
                              (f"s3://{INPUT_BUCKET}/external/huge.png", 413, "image_too_large"),
                              (f"s3://{BUCKET}/{key}", 400, "url_not_allowed"),
                              (f"s3://{BUCKET}/{root}/t/other-tenant/images/{stored['image_id']}", 400,
                               "url_not_allowed"),
                              ("s3://sam3-no-such-bucket/a.png", 404, "image_not_found"),
                              ("s3://some-other-bucket/a.png", 400, "url_not_allowed"),
                              ("https://example.com/a.png", 400, "unsupported_url")]:
        r = pcs(serve_url, {"url": url})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), url


def test_return_url_stores_result_and_overlay(serve_url, inline_result):
    r = pcs(serve_url, {"base64": b64(png_bytes(seed=3))}, overlay=True, **{"return": "url"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "results" not in body and body["image_id"] == inline_result["image_id"]
    stored = requests.get(body["result_url"], timeout=30)  # plain HTTP, no credentials
    assert stored.status_code == 200
    assert instances(stored.json()) == instances(inline_result)
    assert "overlay_png_base64" not in stored.json()
    overlay = requests.get(body["overlay_url"], timeout=30)
    assert overlay.status_code == 200 and overlay.content.startswith(PNG_MAGIC)
    assert body["expires_at"].endswith("+00:00")


def test_job_runs_to_success_with_result_urls(serve_url, inline_result):
    upload_id = presigned_upload(serve_url, png_bytes(seed=3))
    job = {"kind": "pcs_image", "input": {"image": {"upload_id": upload_id}, "prompts": PROMPTS,
                                          "threshold": 0.0, "max_instances": 3, "overlay": True}}
    r = requests.post(serve_url + "/v1/jobs", json=job, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    job_id = r.json()["job_id"]
    assert r.headers["Location"] == f"/v1/jobs/{job_id}"
    done = wait_job(serve_url, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    result = requests.get(done["result_url"], timeout=30).json()
    assert result["request_id"] == job_id
    assert instances(result) == instances(inline_result)
    for res in result["results"]:
        for inst in res["instances"]:
            assert decode_rle(inst["mask"]).shape == (90, 130)
    assert requests.get(done["overlay_url"], timeout=30).content.startswith(PNG_MAGIC)


def test_job_with_unknown_image_fails_with_its_code(serve_url):
    job = {"kind": "pcs_image", "input": {"image": {"image_id": "0" * 64}, "prompts": PROMPTS}}
    r = requests.post(serve_url + "/v1/jobs", json=job, timeout=30)
    assert r.status_code == 202, r.text
    done = wait_job(serve_url, r.json()["job_id"])
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["code"] == "image_not_found"
    assert "result_url" not in done


def test_idempotency_key(serve_url):
    key = f"idem-{uuid.uuid4().hex}"
    job = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=6))}, "prompts": [{"text": "x"}]}}
    first = requests.post(serve_url + "/v1/jobs", json=job, headers={"Idempotency-Key": key}, timeout=30)
    again = requests.post(serve_url + "/v1/jobs", json=job, headers={"Idempotency-Key": key}, timeout=30)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    other = dict(job, input={**job["input"], "threshold": 0.9})
    r = requests.post(serve_url + "/v1/jobs", json=other, headers={"Idempotency-Key": key}, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "idempotency_key_reused")
    assert wait_job(serve_url, first.json()["job_id"])["status"] == "succeeded"


def test_list_jobs_newest_first_with_filter_and_pages(serve_url):
    job = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=7))}, "prompts": [{"text": "x"}]}}
    ids = [requests.post(serve_url + "/v1/jobs", json=job, timeout=30).json()["job_id"] for _ in range(3)]
    for job_id in ids:
        wait_job(serve_url, job_id)
    page = requests.get(serve_url + "/v1/jobs", params={"limit": 2}, timeout=30).json()
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    nxt = requests.get(serve_url + "/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}, timeout=30).json()
    assert nxt["jobs"][0]["job_id"] == ids[0]
    succeeded = requests.get(serve_url + "/v1/jobs", params={"status": "succeeded", "limit": 200}, timeout=30).json()
    assert set(ids) <= {j["job_id"] for j in succeeded["jobs"]}
    assert all(j["status"] == "succeeded" for j in succeeded["jobs"])
    failed = requests.get(serve_url + "/v1/jobs", params={"status": "failed", "limit": 200}, timeout=30).json()
    assert not set(ids) & {j["job_id"] for j in failed["jobs"]}


@pytest.mark.parametrize("method, path, body, status, code", [
    ("post", "/v1/jobs", {"kind": "segment_audio", "input": {}}, 400, "unknown_job_kind"),
    ("post", "/v1/jobs", {"kind": "pcs_image", "input": {"prompts": [{"text": "x"}]}}, 422, "invalid_job_input"),
    ("post", "/v1/jobs", {"kind": "pcs_image", "input": {"image": {"image_id": "0" * 64}, "prompts": []}},
     400, "no_prompts"),
    ("post", "/v1/jobs", {"kind": "pcs_image"}, 422, "validation_error"),
    ("get", "/v1/jobs/ffffffffffffffffffff", None, 404, "job_not_found"),
    ("get", "/v1/jobs/bad.id", None, 400, "invalid_job_id"),
    ("delete", "/v1/jobs/ffffffffffffffffffff", None, 404, "job_not_found"),
    ("get", "/v1/jobs?status=done", None, 422, "validation_error"),
    ("get", "/v1/jobs?cursor=../x", None, 400, "invalid_cursor"),
])
def test_bad_job_requests(serve_url, method, path, body, status, code):
    r = getattr(requests, method)(serve_url + path, json=body, timeout=30, headers={"x-request-id": "job-1"})
    assert r.status_code == status, r.text
    assert r.json()["error"] == {"code": code, "message": r.json()["error"]["message"], "request_id": "job-1"}


def test_cancel_only_queued_jobs(serve_url):
    job = {"kind": "pcs_image", "input": {"image": {"base64": b64(png_bytes(seed=8))}, "prompts": [{"text": "x"}]}}
    job_id = requests.post(serve_url + "/v1/jobs", json=job, timeout=30).json()["job_id"]
    assert wait_job(serve_url, job_id)["status"] == "succeeded"
    r = requests.delete(f"{serve_url}/v1/jobs/{job_id}", timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_not_cancellable")


def test_stored_result_is_plain_json(serve_url):
    r = pcs(serve_url, {"base64": b64(png_bytes(seed=9))}, mask_format="none", **{"return": "url"})
    assert r.status_code == 200, r.text
    stored = requests.get(r.json()["result_url"], timeout=30)
    assert stored.headers["Content-Type"].startswith("application/json")
    assert json.loads(stored.content)["image_id"] == r.json()["image_id"]
