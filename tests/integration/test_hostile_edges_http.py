"""Edges the OpenAPI fuzzer (test_fuzz_openapi.py) cannot reach, over real HTTP through the session's Serve app
(tests/conftest.py `serve_url`):

- x-request-id is sent exactly once on every kind of response (the Serve proxy sets it; the app adds none).
- An undocumented method is a 405 with `Allow` (through the Serve proxy); JSON booleans are no numbers (422).
- The video WebSocket survives hostile messages (JSON nested past the limit, binary frames, non-objects): each
  gets an error message and the socket stays open.
- A video mask prompt whose RLE `size` is not the frame size, or whose `counts` is not an RLE of that size,
  is a 400 invalid_mask before anything decodes it (a [100000, 100000] mask would allocate ~10 GB).
- `s3://` inputs naming a missing bucket or key answer 404 with a stable code on every route that takes one
  (the error mapping of other S3 refusals is in tests/unit/test_s3_foreign_errors.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from pycocotools import mask as mask_utils

from tests.fixtures.s3 import INPUT_BUCKET
from tests.helpers import b64, png_bytes, wait_for
from tests.videos import make_video

T = 120
H, W = 48, 64


def _ids(r: requests.Response) -> list[str]:
    return [v.strip() for v in r.headers["x-request-id"].split(",")]


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("get", "/healthz", {}, 200),
    ("get", "/v1/jobs/not-a-job", {}, 404),  # a Sam3Error
    ("get", "/v1/nope", {}, 404),  # routing
    ("put", "/v1/jobs", {}, 405),
    ("get", "/v1/jobs", {"params": {"limit": 0}}, 422),  # request validation
    ("post", "/v1/pcs/image", {"data": b"[" * 1000, "headers": {"content-type": "application/json"}}, 400),
    ("post", "/v1/pcs/image", {"data": b"x", "headers": {"content-type": "text/plain"}}, 415),
])
@pytest.mark.parametrize("client_id", [None, "my-id-1"])
def test_x_request_id_is_sent_exactly_once(serve_url, method, path, kwargs, status, client_id):
    headers = {**kwargs.get("headers", {}), **({"x-request-id": client_id} if client_id else {})}
    r = requests.request(method, serve_url + path, timeout=T, **{**kwargs, "headers": headers})
    assert r.status_code == status, r.text
    (rid,) = _ids(r)
    assert rid == client_id if client_id else rid
    if status >= 400:
        assert r.json()["error"]["request_id"] == rid


def test_an_undocumented_method_is_405_with_allow_through_serve(serve_url):
    for method, path, allow in [("PUT", "/v1/jobs", "GET, POST"), ("TRACE", "/v1/video/sessions/abc", "DELETE, GET")]:
        r = requests.request(method, serve_url + path, timeout=T)
        assert (r.status_code, r.headers.get("Allow")) == (405, allow), r.text


# -- video: WebSocket messages and mask prompts --------------------------------------------------------------


@pytest.fixture(scope="module")
def session_id(serve_url, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    make_video(str(path), n=4, h=H, w=W, fps=8.0)
    r = requests.post(serve_url + "/v1/video/sessions", files={"video": ("v.mp4", path.read_bytes(), "video/mp4")},
                      timeout=T)
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    yield sid
    requests.delete(f"{serve_url}/v1/video/sessions/{sid}", timeout=T)


def _prompt(serve_url: str, sid: str, body: dict) -> requests.Response:
    """POST .../prompts, retrying while the session's actor starts (409 session_starting)."""
    def attempt():
        r = requests.post(f"{serve_url}/v1/video/sessions/{sid}/prompts", json=body, timeout=T)
        # (r,): a Response is falsy when its status is not 2xx
        return None if r.status_code == 409 and r.json()["error"]["code"] == "session_starting" else (r,)
    return wait_for(attempt, 120, "the session actor to start", interval_s=0.5)[0]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def test_a_mask_prompt_of_another_size_is_rejected_before_decoding(serve_url, session_id):
    box = np.zeros((H, W), bool)
    box[10:30, 20:40] = True
    huge = {"size": [100_000, 100_000], "counts": _rle(np.zeros((4, 4), bool))["counts"]}
    wrong_counts = {"size": [H, W], "counts": _rle(np.zeros((H, W - 1), bool))["counts"]}  # one column short
    for mask, what in [(huge, "[100000, 100000]"), ({**_rle(box), "size": [W, H]}, "[64, 48]"),
                       (wrong_counts, "counts"), ({"size": [H, W], "counts": "zzzz"}, "counts"),
                       ({"size": [H, W], "counts": ""}, "counts"), ({"size": [H, W], "counts": "é"}, "counts")]:
        r = _prompt(serve_url, session_id, {"frame_index": 0, "objects": [{"mask": mask}]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_mask" and what in r.json()["error"]["message"], r.text
    r = _prompt(serve_url, session_id, {"frame_index": 1, "objects": [{"obj_id": 3, "mask": _rle(box)}]})
    assert r.status_code == 200, r.text
    assert r.json()["prompted_obj_ids"] == [3]


def test_json_booleans_are_not_numbers(serve_url, session_id):
    """Found by the fuzzer: `"max_frames": true` was taken as 1 (lax validation) and the propagation ran."""
    for path, body in [(f"/v1/video/sessions/{session_id}/propagate", {"max_frames": True}),
                       (f"/v1/video/sessions/{session_id}/prompts", {"frame_index": False, "text": "car"}),
                       ("/v1/pcs/image", {"image": {"base64": b64(png_bytes())}, "prompts": [{"text": "car"}],
                                          "threshold": True}),
                       ("/v1/pvs/image", {"image_id": "0" * 64, "objects": [{"points": [[True, 1]]}]})]:
        r = requests.post(serve_url + path, json=body, timeout=T)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error"), (path, r.text)


def test_websocket_answers_hostile_messages_and_stays_open(serve_url, session_id):
    from websockets.sync.client import connect

    def error_code(ws) -> str:
        message = json.loads(ws.recv(timeout=60))
        assert message["type"] == "error", message
        return message["error"]["code"]

    r = _prompt(serve_url, session_id, {"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    assert r.status_code == 200, r.text  # something to propagate
    with connect(serve_url.replace("http", "ws") + f"/v1/video/sessions/{session_id}/ws", max_size=None) as ws:
        ws.send("[" * 100_000)  # json.loads would raise RecursionError (it used to kill the handler)
        assert error_code(ws) == "json_too_deep"
        ws.send('{"action": "start", "max_frames": ' + "[" * 40 + "1" + "]" * 40 + "}")
        assert error_code(ws) == "json_too_deep"
        ws.send('{"action": "start", "max_frames": ' + "9" * 5000 + "}")
        assert error_code(ws) == "number_too_large"
        ws.send(b"\xff\xfe")  # a binary frame that is not UTF-8
        assert error_code(ws) == "malformed_json"
        ws.send("[1, 2]")
        assert error_code(ws) == "invalid_action"
        ws.send(json.dumps({"action": "start", "max_frames": True}))
        assert error_code(ws) == "validation_error"
        ws.send(json.dumps({"action": "start", "direction": "forward", "max_frames": 1}))  # still serving
        messages = [json.loads(ws.recv(timeout=120)) for _ in range(3)]
        assert [m["type"] for m in messages] == ["frame", "frame", "done"], messages


# -- s3:// inputs on the session's SeaweedFS ----------------------------------------------------------------


@pytest.mark.parametrize("url, code", [("s3://sam3-no-such-bucket/a.png", "image_not_found"),
                                       (f"s3://{INPUT_BUCKET}/no/such/key.png", "image_not_found")])
@pytest.mark.parametrize("route", ["/v1/pcs/image", "/v1/images", "/v1/pvs/image", "/v1/auto/image"])
def test_s3_inputs_on_a_missing_bucket_or_key_are_404(serve_url, route, url, code):
    body: dict = {"image": {"url": url}}
    if route == "/v1/pcs/image":
        body["prompts"] = [{"text": "car"}]
    elif route == "/v1/pvs/image":
        body["objects"] = [{"points": [[1, 1]]}]
    r = requests.post(serve_url + route, json=body, timeout=T)
    assert (r.status_code, r.json()["error"]["code"]) == (404, code), r.text


@pytest.mark.parametrize("url", ["s3://sam3-no-such-bucket/v.mp4", f"s3://{INPUT_BUCKET}/no/such/v.mp4"])
def test_a_video_from_a_missing_bucket_or_key_is_404(serve_url, url):
    r = requests.post(serve_url + "/v1/video/sessions", json={"video": {"url": url}}, timeout=T)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "video_not_found"), r.text


def test_an_s3_job_input_on_a_missing_bucket_fails_the_job_not_the_service(serve_url):
    from tests.helpers import wait_job

    job = {"kind": "pcs_image", "input": {"image": {"url": "s3://sam3-no-such-bucket/a.png"},
                                          "prompts": [{"text": "car"}]}}
    r = requests.post(serve_url + "/v1/jobs", json=job, timeout=T)
    if r.status_code == 404:  # validated at submit
        assert r.json()["error"]["code"] == "image_not_found"
        return
    assert r.status_code == 202, r.text
    done = wait_job(serve_url, r.json()["job_id"], timeout_s=120)
    assert done["status"] == "failed" and done["error"]["code"] == "image_not_found", done
    assert requests.post(serve_url + "/v1/pcs/image", timeout=T,
                         json={"image": {"base64": b64(png_bytes())}, "prompts": [{"text": "car"}]}).status_code == 200
