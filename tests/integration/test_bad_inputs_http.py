"""Hostile input over real HTTP through the session's Ray Serve app (tests/conftest.py `serve_url`): every case
of tests/bad_inputs.py BAD_INPUTS gets its 4xx, its stable error code and the request id, and the route
still answers a normal request right after. Unusual but valid pixel formats are accepted end to end."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import requests
from PIL import Image

from tests.bad_inputs import AUTO, BAD_INPUTS, CLICK_IMAGE_ID, GOOD, IMAGES, JOBS, PCS, PVS, send
from tests.helpers import png_bytes

T = 120


@pytest.fixture(scope="module")
def good_id(serve_url) -> str:
    """tests/bad_inputs.py's GOOD image (130x90), uploaded: the click/auto cases and probes refer to it."""
    r = requests.post(serve_url + IMAGES, files={"file": ("a.png", GOOD, "image/png")}, timeout=T)
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == CLICK_IMAGE_ID
    return CLICK_IMAGE_ID


def _probe(base: str, path: str) -> None:
    """A normal request on the route family of `path`, answered with content."""
    if path == PCS:
        r = requests.post(base + PCS, files={"image": ("a.png", png_bytes(), "image/png")},
                          data={"text": "car", "threshold": "0", "max_instances": "1", "mask_format": "none"}, timeout=T)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["prompt"] == {"text": "car"} and len(r.json()["results"][0]["instances"]) == 1
    elif path == PVS:
        r = requests.post(base + PVS, json={"image_id": CLICK_IMAGE_ID, "objects": [{"points": [[40, 30]]}]}, timeout=T)
        assert r.status_code == 200, r.text
        assert r.json()["image_id"] == CLICK_IMAGE_ID and len(r.json()["objects"]) == 1
    elif path == AUTO:
        r = requests.post(base + AUTO, json={"image_id": CLICK_IMAGE_ID, "points_per_side": 2}, timeout=T)
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (130, 90)
    elif path == IMAGES:
        r = requests.post(base + IMAGES, json={"image": {"image_id": CLICK_IMAGE_ID}, "precompute": False}, timeout=T)
        assert r.status_code == 200, r.text
        assert r.json()["image_id"] == CLICK_IMAGE_ID
    elif path == JOBS:
        r = requests.get(base + JOBS, params={"limit": 1}, timeout=T)
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["jobs"], list)
    else:  # the video routes
        r = requests.get(base + "/v1/video/sessions", params={"limit": 1}, timeout=T)
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["sessions"], list)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_input_gets_its_code_and_the_route_keeps_working(serve_url, good_id, case):
    rid = f"bad-{case.name}"
    r = send(requests.post, serve_url + case.path, case, request_id=rid)
    assert r.status_code == case.status, r.text[:500]
    error = r.json()["error"]
    assert (error["code"], error["request_id"]) == (case.code, rid), error
    assert error["message"] and _header_ids(r) == [rid]
    _probe(serve_url, case.path)


def _header_ids(r: requests.Response) -> list[str]:
    """The x-request-id values of a response: exactly one is expected (the Serve proxy sets it; the app adds
    none behind it). Repeated headers reach requests joined with ", ", so each is counted."""
    return [v.strip() for v in r.headers["x-request-id"].split(",")]


def test_a_request_without_an_id_gets_one_generated(serve_url):
    r = requests.post(serve_url + PCS, data=b"[" * 100_000, headers={"content-type": "application/json"}, timeout=T)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"
    assert r.json()["error"]["request_id"] and _header_ids(r) == [r.json()["error"]["request_id"]]


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _unusual_images() -> dict[str, bytes]:
    w, h = 48, 32
    ramp16 = (np.linspace(0, 65535, w * h).reshape(h, w)).astype(np.uint16)
    palette = Image.new("P", (w, h))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, w // 2, h))
    frames = [Image.new("RGB", (w, h), c) for c in [(255, 0, 0), (0, 0, 255)]]
    la = np.stack([np.full((h, w), 90, np.uint8), np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))], axis=2)
    return {
        "gray16_png": _save(Image.fromarray(ramp16), "PNG"),
        "float_tiff": _save(Image.fromarray((ramp16 / 65535).astype(np.float32)), "TIFF"),
        "cmyk_jpeg": _save(Image.new("CMYK", (w, h), (255, 0, 0, 0)), "JPEG"),
        "palette_transparent_png": _save(palette, "PNG", transparency=1),
        "palette_gif": _save(palette, "GIF"),
        "gray_alpha_png": _save(Image.fromarray(la, "LA"), "PNG"),
        "one_bit_png": _save(Image.fromarray(np.indices((h, w)).sum(0) % 2 == 0), "PNG"),
        "animated_gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "animated_png": _save(frames[0], "PNG", save_all=True, append_images=frames[1:]),
    }


UNUSUAL = _unusual_images()


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_pixel_formats_are_accepted_end_to_end(serve_url, name):
    """Upload (decode + store), then a click on the stored image: both answer with content."""
    data = UNUSUAL[name]
    r = requests.post(serve_url + IMAGES, files={"file": (name, data, "application/octet-stream")},
                      params={"precompute": "false"}, timeout=T)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_id"] == hashlib.sha256(data).hexdigest() and (body["width"], body["height"]) == (48, 32)
    r = requests.post(serve_url + PVS, json={"image_id": body["image_id"], "objects": [{"box": [4, 4, 40, 28]}]},
                      timeout=T)
    assert r.status_code == 200, r.text
    assert r.json()["objects"][0]["mask"]["size"] == [32, 48]
