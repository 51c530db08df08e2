"""POST /v1/images, /v1/pvs/image and /v1/auto/image over real HTTP through Ray Serve with the tiny SAM 3.

Cache behaviour is proven with the ClickSegmenter's own counters (vision_calls = vision-encoder forwards),
never with timings. Masks are checked for content (shape, area, box, determinism), never for quality.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from serve_app.codecs.masks import decode_rle, mask_box_xyxy
from tests.bad_inputs import BAD_AUTO_REQUESTS, BAD_CLICK_REQUESTS, GOOD, send
from tests.helpers import b64, counter_deltas, debug_stats, png_bytes

T = 120


def upload(base, data: bytes, **params) -> dict:
    r = requests.post(base + "/v1/images", files={"file": ("a.png", data, "image/png")}, params=params, timeout=T)
    assert r.status_code == 200, r.text
    return r.json()


def click(base, body: dict) -> dict:
    r = requests.post(base + "/v1/pvs/image", json=body, timeout=T)
    assert r.status_code == 200, r.text
    return r.json()


def check_mask(item: dict, w: int, h: int) -> np.ndarray:
    mask = decode_rle(item["mask"])
    assert mask.shape == (h, w) and item["mask"]["size"] == [h, w]
    assert int(mask.sum()) == item["area"]
    assert item["box"] == mask_box_xyxy(mask)
    return mask


@pytest.fixture(scope="module")
def good_id(serve_url) -> str:
    """tests/bad_inputs.py's GOOD image, uploaded (its id is what BAD_CLICK_REQUESTS refer to)."""
    return upload(serve_url, GOOD)["image_id"]


@pytest.fixture
def cold_click_cache(click_handle):
    """The session app's click replica with an empty embedding cache and zeroed counters (debug_reset), for
    tests that need an image to be uncached whatever ran before; the cache's configured size is restored
    afterwards whatever the test did to it (pytest runs the teardown on failure too)."""
    max_bytes = debug_stats(click_handle)["cache_max_bytes"]
    click_handle.debug_reset.remote().result()
    yield click_handle
    click_handle.debug_resize_cache.remote(max_bytes).result()
    assert debug_stats(click_handle)["cache_max_bytes"] == max_bytes


def test_upload_multipart_and_json_dedupe(serve_url, cold_click_cache):
    click_handle = cold_click_cache  # the image below must not be cached by an earlier test
    data = png_bytes(120, 80, seed=21)
    before = debug_stats(click_handle)["vision_calls"]
    first = upload(serve_url, data)
    assert first["image_id"] == hashlib.sha256(data).hexdigest()
    assert (first["width"], first["height"], first["precomputed"]) == (120, 80, True)
    assert debug_stats(click_handle)["vision_calls"] == before + 1  # embedding computed at upload
    again = requests.post(serve_url + "/v1/images", json={"image": {"base64": b64(data)}}, timeout=T).json()
    assert again["image_id"] == first["image_id"] and again["precomputed"]
    assert debug_stats(click_handle)["vision_calls"] == before + 1  # re-upload: same id, cached embedding
    form = requests.post(serve_url + "/v1/images", files={"image": ("a.png", png_bytes(50, 40, seed=22), "image/png")},
                         data={"precompute": "false"}, timeout=T)
    assert form.status_code == 200 and form.json()["precomputed"] is False
    assert debug_stats(click_handle)["vision_calls"] == before + 1


def test_clicks_refine_and_multimask_never_rerun_the_encoder(serve_url, click_handle):
    img = upload(serve_url, png_bytes(130, 90, seed=23))
    iid = img["image_id"]
    before = debug_stats(click_handle)["vision_calls"]
    one = click(serve_url, {"image_id": iid, "objects": [{"points": [[30, 40]], "point_labels": [1]}]})
    assert one["cache_hit"] and (one["width"], one["height"]) == (130, 90) and one["image_id"] == iid
    (obj,) = one["objects"]
    check_mask(obj, 130, 90)
    assert obj["id"] == 0 and "candidates" not in obj and isinstance(obj["mask_input"], str)
    two = click(serve_url, {"image_id": iid, "objects": [
        {"points": [[30, 40], [100, 70]], "point_labels": [1, 0], "mask_input": obj["mask_input"]}]})
    check_mask(two["objects"][0], 130, 90)
    three = click(serve_url, {"image_id": iid, "multimask_output": True, "objects": [
        {"points": [[30, 40], [100, 70], [60, 20]], "point_labels": [1, 0, 1], "box": [10, 10, 90, 80],
         "mask_input": two["objects"][0]["mask_input"]}]})
    (multi,) = three["objects"]
    cands = multi["candidates"]
    assert len(cands) == 3
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
    for c in cands:
        check_mask(c, 130, 90)
        assert isinstance(c["mask_input"], str)
    assert {k: multi[k] for k in ("score", "box", "area", "mask", "mask_input")} == cands[0]
    assert debug_stats(click_handle)["vision_calls"] == before  # every click used the cached embedding
    # a click is deterministic
    again = click(serve_url, {"image_id": iid, "objects": [{"points": [[30, 40]], "point_labels": [1]}]})
    assert again["objects"] == one["objects"]


def test_several_objects_in_one_call_match_single_calls(serve_url):
    iid = upload(serve_url, png_bytes(130, 90, seed=24))["image_id"]
    objects = [{"points": [[20, 20]], "point_labels": [1]}, {"box": [50, 10, 120, 80]},
               {"points": [[60, 60], [10, 80]], "point_labels": [1, 0], "box": [40, 30, 100, 89]},
               {"points": [[100, 30]], "point_labels": [0]}]
    together = click(serve_url, {"image_id": iid, "objects": objects})["objects"]
    assert [o["id"] for o in together] == [0, 1, 2, 3]
    for o, alone_obj in zip(together, objects):
        alone = click(serve_url, {"image_id": iid, "objects": [alone_obj]})["objects"][0]
        assert o["score"] == pytest.approx(alone["score"], abs=1e-4)
        a, b = check_mask(o, 130, 90), decode_rle(alone["mask"])
        assert (a != b).mean() < 0.005


INLINE_CALLS = {  # endpoint -> (extra body, the answer's masks)
    "/v1/pvs/image": ({"objects": [{"points": [[5, 5]]}]}, lambda out: out["objects"]),
    "/v1/auto/image": ({"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
                       lambda out: out["masks"]),
}


@pytest.mark.parametrize("path", list(INLINE_CALLS), ids=["clicks", "auto"])
def test_image_given_inline_is_stored_and_its_id_keeps_working(serve_url, cold_click_cache, path):
    """An image sent by value is stored like an upload: the returned image_id still works once the
    embedding is gone (the ingress reloads the image from storage) and wherever an image_id is accepted."""
    extra, masks = INLINE_CALLS[path]
    data = png_bytes(64, 48, seed=25 if path == "/v1/pvs/image" else 27)
    iid = hashlib.sha256(data).hexdigest()
    r = requests.post(serve_url + path, json={"image": {"base64": b64(data)}, **extra}, timeout=T)
    assert r.status_code == 200, r.text
    inline = r.json()
    assert inline["image_id"] == iid and (inline["width"], inline["height"]) == (64, 48)
    assert masks(inline)  # something to compare below
    if path == "/v1/pvs/image":
        check_mask(inline["objects"][0], 64, 48)

    cold_click_cache.debug_reset.remote().result()  # the embedding is gone: only storage has the image now
    before = debug_stats(cold_click_cache)
    r = requests.post(serve_url + path, json={"image_id": iid, **extra}, timeout=T)
    assert r.status_code == 200, r.text
    by_id = r.json()
    assert not by_id["cache_hit"] and masks(by_id) == masks(inline)
    # not cached, so the ingress loaded the stored image and the replica encoded it (once)
    assert counter_deltas(before, debug_stats(cold_click_cache), "vision_calls") == {"vision_calls": 1}
    # The stored bytes are the request's own: referencing the id loads them (an unknown id is 404).
    stored = requests.post(serve_url + "/v1/images", json={"image": {"image_id": iid}, "precompute": False},
                           timeout=T)
    assert stored.status_code == 200, stored.text
    assert (stored.json()["image_id"], stored.json()["width"], stored.json()["height"]) == (iid, 64, 48)


def test_cache_miss_recomputes_from_storage(serve_url, cold_click_cache):
    """A replica that lost the embedding (eviction, restart, other replica) answers a miss; the ingress
    reloads the stored image and the result is the same as with the cached embedding."""
    handle = cold_click_cache
    iid = upload(serve_url, png_bytes(100, 70, seed=26))["image_id"]
    body = {"image_id": iid, "multimask_output": True, "objects": [{"points": [[50, 35]], "point_labels": [1]}]}
    cached = click(serve_url, body)
    handle.debug_reset.remote().result()  # the embedding is gone
    before = debug_stats(handle)
    fresh = click(serve_url, body)
    assert not fresh["cache_hit"] and cached["cache_hit"]
    assert fresh["objects"] == cached["objects"]
    s = debug_stats(handle)
    assert counter_deltas(before, s, "vision_calls", "misses_returned") == {"vision_calls": 1, "misses_returned": 1}
    assert s["cache_entries"] == 1  # emptied above, then this image alone
    assert click(serve_url, body)["cache_hit"]
    assert debug_stats(handle)["vision_calls"] - before["vision_calls"] == 1


def test_deleting_an_image_drops_its_cached_embedding(serve_url, cold_click_cache):
    """DELETE /v1/images/{id} also drops the embedding from the click replica: clicks and automatic masks on
    that id then get 404 image_not_found (not an answer from the cache); uploading the bytes again works."""
    handle = cold_click_cache
    data = png_bytes(90, 60, seed=77)
    iid = upload(serve_url, data, precompute="true")["image_id"]
    body = {"image_id": iid, "objects": [{"points": [[40, 30]], "point_labels": [1]}]}
    assert click(serve_url, body)["cache_hit"]
    assert debug_stats(handle)["cache_entries"] == 1
    r = requests.delete(f"{serve_url}/v1/images/{iid}", timeout=T)
    assert r.status_code == 204, r.text
    s = debug_stats(handle)
    assert (s["cache_entries"], s["cache_bytes"]) == (0, 0)
    for route, extra in (("/v1/pvs/image", {"objects": body["objects"]}), ("/v1/auto/image", {})):
        r = requests.post(serve_url + route, json={"image_id": iid, **extra}, timeout=T)
        assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found", r.text
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    assert upload(serve_url, data)["image_id"] == iid
    assert click(serve_url, body)["objects"]


def test_eviction_under_a_tiny_cache_still_answers_correctly(serve_url, cold_click_cache):
    """Shrink the live replica's cache to ~1.5 tiny embeddings: every new image evicts the previous one,
    and clicks on evicted images are recomputed from storage with the same answers. The fixture restores
    the cache size."""
    handle = cold_click_cache
    ids = [upload(serve_url, png_bytes(110, 80, seed=50 + i))["image_id"] for i in range(2)]
    bodies = [{"image_id": iid, "objects": [{"points": [[40, 30]], "point_labels": [1]}]} for iid in ids]
    cached = [click(serve_url, b) for b in bodies]
    assert all(c["cache_hit"] for c in cached)
    full = debug_stats(handle)
    assert full["cache_entries"] == 2  # emptied by the fixture, then these two
    one_embedding = full["cache_bytes"] // full["cache_entries"]
    assert handle.debug_resize_cache.remote(int(1.5 * one_embedding)).result() == 1
    before = debug_stats(handle)
    assert before["cache_entries"] == 1 and before["cache_max_bytes"] == int(1.5 * one_embedding)
    for _ in range(2):
        for body, ref in zip(bodies, cached):
            out = click(serve_url, body)
            assert out["objects"] == ref["objects"]
    after = debug_stats(handle)
    assert after["cache_entries"] == 1 and after["cache_bytes"] <= 1.5 * one_embedding
    assert after["cache_evictions"] > before["cache_evictions"]
    assert after["vision_calls"] > before["vision_calls"]


def test_concurrent_clicks_on_different_images(serve_url):
    ids = [upload(serve_url, png_bytes(90 + 5 * i, 70, seed=30 + i))["image_id"] for i in range(4)]
    jobs = [(ids[i % 4], [[10 + i, 20], [40, 30 + i]]) for i in range(12)]

    def one(job):
        iid, pts = job
        return click(serve_url, {"image_id": iid, "objects": [{"points": pts, "point_labels": [1, 0]}]})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, jobs))
    for (iid, _), out in zip(jobs, results):
        assert out["image_id"] == iid
        check_mask(out["objects"][0], out["width"], out["height"])
    for job, out in zip(jobs[:4], results[:4]):  # same answer as alone
        alone = one(job)["objects"][0]
        assert (decode_rle(alone["mask"]) != decode_rle(out["objects"][0]["mask"])).mean() < 0.005


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_automatic_masks_pass_nms_and_reuse_the_embedding(serve_url, click_handle):
    iid = upload(serve_url, png_bytes(130, 90, seed=40))["image_id"]
    before = debug_stats(click_handle)["vision_calls"]
    body = {"image_id": iid, "points_per_side": 8, "points_per_batch": 16, "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0, "box_nms_thresh": 0.5}
    r = requests.post(serve_url + "/v1/auto/image", json=body, timeout=T)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["cache_hit"] and out["candidates"] == 8 * 8 * 3
    masks = out["masks"]
    assert masks and [m["id"] for m in masks] == list(range(len(masks)))
    assert [m["score"] for m in masks] == sorted((m["score"] for m in masks), reverse=True)
    for m in masks:
        mask = decode_rle(m["mask"])
        assert mask.shape == (90, 130) and int(mask.sum()) == m["area"] > 0
        assert np.allclose(mask_box_xyxy(mask), m["box"], atol=2)  # NMS boxes come from the replica's upsampling
        assert 0 <= m["point"][0] <= 130 and 0 <= m["point"][1] <= 90
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert _box_iou(masks[i]["box"], masks[j]["box"]) <= 0.5 + 1e-6
    by_area = requests.post(serve_url + "/v1/auto/image", json={**body, "sort_by": "area"}, timeout=T).json()["masks"]
    assert [m["area"] for m in by_area] == sorted((m["area"] for m in by_area), reverse=True)
    assert sorted(m["mask"]["counts"] for m in by_area) == sorted(m["mask"]["counts"] for m in masks)
    loose = requests.post(serve_url + "/v1/auto/image", json={**body, "box_nms_thresh": 1.0}, timeout=T).json()
    assert len(loose["masks"]) >= len(masks)
    assert debug_stats(click_handle)["vision_calls"] == before  # one encoding (at upload) served all three


@pytest.mark.parametrize("case", BAD_CLICK_REQUESTS, ids=lambda c: c.name)
def test_bad_click_requests(serve_url, good_id, case):
    r = send(requests.post, serve_url + "/v1/pvs/image", case, f"bad-click-{case.name}")
    assert r.status_code == case.status, r.text
    assert r.json()["error"]["code"] == case.code
    assert r.json()["error"]["request_id"] == f"bad-click-{case.name}"


@pytest.mark.parametrize("case", BAD_AUTO_REQUESTS, ids=lambda c: c.name)
def test_bad_auto_requests(serve_url, good_id, case):
    r = send(requests.post, serve_url + "/v1/auto/image", case, f"bad-auto-{case.name}")
    assert r.status_code == case.status, r.text
    assert r.json()["error"]["code"] == case.code


def test_bad_uploads(serve_url):
    r = requests.post(serve_url + "/v1/images", files={"file": ("a.png", b"not an image", "image/png")}, timeout=T)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = requests.post(serve_url + "/v1/images", files={"other": ("a.png", GOOD, "image/png")}, timeout=T)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_image"
    r = requests.post(serve_url + "/v1/images", json={"image": {"image_id": "0" * 64}}, timeout=T)
    assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found"
