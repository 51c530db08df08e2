"""What the OpenAPI fuzzing (tests/integration/test_fuzz_openapi.py) and the review of its leftovers found, pinned
in process (FastAPI TestClient, no Ray):

- an undocumented method is a 405 whose `Allow` lists every method of the path (RFC 9110);
- standalone (no Serve proxy) x-request-id is echoed exactly once, the client's or a generated one;
- JSON bodies are validated strictly (`true` is no number: lax pydantic took it as 1), multipart stays lax;
- boolean form fields accept true/false, 1/0, yes/no, on/off and nothing else;
- a video mask prompt's COCO RLE is checked against the frame size on the compressed string.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils

from serve_app.errors import InvalidInput, ValidationFailed
from serve_app.ingress.body import form_bool, parse_model
from serve_app.ingress.fastapi_app import create_app
from serve_app.pipelines.video import check_masks, rle_pixel_count
from serve_app.schemas import ConceptImageRequest, ConceptOptions, PropagateRequest, VideoPromptRequest
from serve_app.sessions.records import VideoInfo


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/v1/jobs", "GET, POST"),
    ("PATCH", "/v1/jobs/abc", "DELETE, GET"),
    ("TRACE", "/v1/video/sessions/abc", "DELETE, GET"),
    ("POST", "/healthz", "GET"),
    ("GET", "/v1/pcs/image", "POST"),
])
def test_405_lists_every_method_of_the_path(client, method, path, allow):
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path, status", [("/healthz", 200), ("/v1/nope", 404), ("/v1/jobs", 405)])
def test_standalone_the_request_id_is_echoed_once(client, path, status):
    for sent in (None, "rid-7"):
        r = client.request("PUT" if status == 405 else "GET", path, headers={"x-request-id": sent} if sent else {})
        assert r.status_code == status
        values = r.headers.get_list("x-request-id")
        assert len(values) == 1 and values[0] == (sent or values[0]) and values[0]


@pytest.mark.parametrize("model, data", [
    (PropagateRequest, {"max_frames": True}),
    (PropagateRequest, {"start_frame_index": False}),
    (PropagateRequest, {"max_frames": "3"}),
    (ConceptImageRequest, {"image": {"base64": "aaaa"}, "prompts": [{"text": "a"}], "threshold": True}),
    (ConceptImageRequest, {"image": {"base64": "aaaa"}, "prompts": [{"text": "a", "boxes": [[True, 0, 5, 5]]}]}),
    (VideoPromptRequest, {"frame_index": True, "text": "a"}),
])
def test_json_numbers_are_strict(model, data):
    with pytest.raises(ValidationFailed):
        parse_model(model, data, strict=True)
    parse_model(model, data)  # what lax mode used to let through


def test_multipart_strings_still_parse():
    opts = parse_model(ConceptOptions, {"prompts": [{"text": "car"}], "threshold": "0.5", "max_instances": "2"})
    assert (opts.threshold, opts.max_instances) == (0.5, 2)


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("true", True), (" ON ", True), ("1", True), ("yes", True),
    ("false", False), ("0", False), ("Off", False), ("no", False),
])
def test_form_bool(value, expected):
    assert form_bool(value, "overlay") is expected


@pytest.mark.parametrize("value", ["[]", "maybe", "2", "null", object()])
def test_form_bool_rejects_anything_else(value):
    with pytest.raises(ValidationFailed, match="precompute"):
        form_bool(value, "precompute")


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def test_rle_pixel_count_matches_pycocotools():
    rng = np.random.default_rng(0)
    for i in range(300):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        mask = rng.random((h, w)) < rng.random() if i % 3 else np.zeros((h, w), bool)
        if i % 3 == 0:
            mask[rng.integers(0, h):, rng.integers(0, w):] = True
        assert rle_pixel_count(_rle(mask)["counts"]) == h * w
    big = np.zeros((1080, 1920), bool)
    big[5:900, 100:1800] = True
    assert rle_pixel_count(_rle(big)["counts"]) == 1080 * 1920


@pytest.mark.parametrize("counts", ["zzzz", "o", "\x00", "é", "a b", "0" + "_" * 8])
def test_rle_pixel_count_rejects_what_is_no_rle(counts):
    assert rle_pixel_count(counts) is None


def test_check_masks_against_the_frame_size():
    video = VideoInfo(num_frames=4, fps=8.0, width=64, height=48)
    box = np.zeros((48, 64), bool)
    box[10:30, 20:40] = True
    check_masks(VideoPromptRequest(frame_index=0, objects=[{"mask": _rle(box)}]), video)  # fits
    check_masks(VideoPromptRequest(frame_index=0, objects=[{"points": [[1, 1]]}]), video)  # no mask
    for mask in ({"size": [100_000, 100_000], "counts": "0"}, {**_rle(box), "size": [64, 48]},
                 _rle(np.zeros((48, 63), bool)) | {"size": [48, 64]}, {"size": [48, 64], "counts": ""}):
        with pytest.raises(InvalidInput) as err:
            check_masks(VideoPromptRequest(frame_index=0, objects=[{"points": [[1, 1]]}, {"mask": mask}]), video)
        assert err.value.code == "invalid_mask" and "objects[1]" in err.value.message
