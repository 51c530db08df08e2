"""One table of bad /v1/pcs/image requests and the status + error code each must get.

Shared by the in-process ingress tests (tests/unit) and the real-Serve HTTP tests (tests/integration);
both run the app with limits.max_image_bytes=200000 and limits.max_image_pixels=1000000.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.helpers import b64, encode, png_bytes, rgb_image

GOOD = png_bytes()  # 130x90
GOOD_B64 = b64(GOOD)


def _noise_png(side: int) -> bytes:
    return encode(np.random.RandomState(0).randint(0, 255, (side, side, 3), dtype=np.uint8))


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_image(16, 16)).save(buf, "ICO")
    return buf.getvalue()


@dataclass
class Bad:
    name: str
    status: int
    code: str
    json: object = None  # JSON body (dict, or a str sent verbatim)
    files: dict | None = None  # multipart
    data: dict = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str | None = None


def _j(**kw):
    body = {"image": {"base64": GOOD_B64}, "prompts": [{"text": "car"}]}
    body.update(kw)
    return body


def _img(data, name="a.png", ctype="image/png"):
    return {"image": (name, data, ctype)}


_JPEG = encode(rgb_image(200, 150), "JPEG")

BAD_REQUESTS = [
    Bad("not_an_image", 400, "invalid_image", files=_img(b"hello, not an image"), data={"text": "car"}),
    Bad("truncated_jpeg", 400, "invalid_image", files=_img(_JPEG[: len(_JPEG) // 2], "a.jpg", "image/jpeg"), data={"text": "car"}),
    Bad("empty_image_file", 400, "empty_image", files=_img(b""), data={"text": "car"}),
    Bad("empty_body", 400, "empty_body", raw=b"", content_type="application/json"),
    Bad("image_over_byte_limit", 413, "image_too_large", files=_img(_noise_png(400)), data={"text": "car"}),
    Bad("image_over_pixel_limit", 413, "image_too_many_pixels", files=_img(encode(np.zeros((1000, 1200, 3), np.uint8))), data={"text": "car"}),
    Bad("unsupported_content_type", 415, "unsupported_media_type", raw=b"hello", content_type="text/plain"),
    Bad("unsupported_image_format", 415, "unsupported_image_type", files=_img(_ico(), "a.ico", "image/x-icon"), data={"text": "car"}),
    Bad("no_prompts_json", 400, "no_prompts", json=_j(prompts=[])),
    Bad("no_prompts_multipart", 400, "no_prompts", files=_img(GOOD)),
    Bad("too_many_prompts", 400, "too_many_prompts", json=_j(prompts=[{"text": f"thing {i}"} for i in range(17)])),
    Bad("empty_text", 400, "empty_text", json=_j(prompts=[{"text": "   "}])),
    Bad("text_too_long", 400, "text_too_long", json=_j(prompts=[{"text": "x" * 300}])),
    Bad("prompt_without_text_or_boxes", 400, "empty_prompt", json=_j(prompts=[{}])),
    Bad("box_outside_image", 400, "box_outside_image", json=_j(prompts=[{"text": "car", "boxes": [[0, 0, 500, 50]]}])),
    Bad("box_x1_before_x0", 400, "invalid_box", json=_j(prompts=[{"text": "car", "boxes": [[50, 10, 20, 40]]}])),
    Bad("box_nan", 422, "validation_error", json='{"image": {"base64": "%s"}, "prompts": [{"text": "car", "boxes": [[NaN, 1, 2, 3]]}]}' % GOOD_B64),
    Bad("threshold_inf", 422, "validation_error", json='{"image": {"base64": "%s"}, "prompts": [{"text": "car"}], "threshold": Infinity}' % GOOD_B64),
    Bad("box_labels_mismatch", 400, "box_labels_mismatch", json=_j(prompts=[{"text": "car", "boxes": [[1, 1, 20, 20], [2, 2, 30, 30]], "box_labels": [1]}])),
    Bad("threshold_above_one", 422, "validation_error", json=_j(threshold=1.5)),
    Bad("mask_threshold_negative", 422, "validation_error", json=_j(mask_threshold=-0.1)),
    Bad("malformed_json", 400, "malformed_json", json='{"image": {"base64": '),
    Bad("invalid_base64", 400, "invalid_base64", json=_j(image={"base64": "***not base64***"})),
    Bad("unknown_field", 422, "validation_error", json=_j(colour="red")),
    Bad("two_image_sources", 422, "validation_error", json=_j(image={"base64": GOOD_B64, "image_id": "x"})),
    Bad("prompts_field_not_json", 400, "malformed_json", files=_img(GOOD), data={"prompts": "[{text: car"}),
    Bad("multipart_without_image", 400, "missing_image", files={"other": ("a.txt", b"x", "text/plain")}, data={"text": "car"}),
]


def send(post, url: str, case: Bad, request_id: str):
    """POST `case` with either requests.post or an httpx/TestClient .post."""
    headers = {"x-request-id": request_id}
    is_httpx = "requests" not in getattr(post, "__module__", "")
    if case.files is not None:
        return post(url, files=case.files, data=case.data, headers=headers)
    if case.json is not None:
        body = case.json if isinstance(case.json, str) else json.dumps(case.json)
        raw, ctype = body.encode(), "application/json"
    else:
        raw, ctype = case.raw, case.content_type
    headers["content-type"] = ctype
    return post(url, content=raw, headers=headers) if is_httpx else post(url, data=raw, headers=headers)


# ------------------------------------------------------------------------------------------------------
# POST /v1/pvs/image and /v1/auto/image (clicks). The app runs with click.max_objects=4,
# click.max_points_per_object=8, click.auto.max_points_per_side=16 (tests/conftest.py serve_args), and
# the CLICK_IMAGE (GOOD, 130x90) is uploaded before these are sent.

CLICK_IMAGE_ID = hashlib.sha256(GOOD).hexdigest()
UNKNOWN_IMAGE_ID = "0" * 64


def _click(*objects, **kw):
    body = {"image_id": CLICK_IMAGE_ID, "objects": list(objects) or [{"points": [[10, 10]], "point_labels": [1]}]}
    body.update(kw)
    return body


_P = {"points": [[10, 10]], "point_labels": [1]}

BAD_CLICK_REQUESTS = [
    Bad("unknown_image_id", 404, "image_not_found", json=_click(image_id=UNKNOWN_IMAGE_ID)),
    Bad("invalid_image_id", 400, "invalid_image_id", json=_click(image_id="../etc/passwd")),
    Bad("point_outside_image", 400, "point_outside_image", json=_click({"points": [[131, 10]], "point_labels": [1]})),
    Bad("negative_point", 400, "point_outside_image", json=_click({"points": [[-1, 10]], "point_labels": [1]})),
    Bad("labels_mismatch", 400, "point_labels_mismatch", json=_click({"points": [[1, 1], [2, 2]], "point_labels": [1]})),
    Bad("labels_without_points", 400, "point_labels_mismatch", json=_click({"box": [1, 1, 20, 20], "point_labels": [1]})),
    Bad("no_points_no_box", 400, "empty_object", json=_click({})),
    Bad("empty_points_no_box", 400, "empty_object", json=_click({"points": [], "point_labels": []})),
    Bad("too_many_points", 400, "too_many_points", json=_click({"points": [[i, i] for i in range(9)]})),
    Bad("too_many_objects", 400, "too_many_objects", json=_click(*[_P] * 5)),
    Bad("no_objects", 400, "no_objects", json=_click(objects=[])),
    Bad("degenerate_box", 400, "invalid_box", json=_click({"box": [10, 10, 10, 50]})),
    Bad("box_outside_image", 400, "box_outside_image", json=_click({"box": [10, 10, 200, 50]})),
    Bad("point_nan", 422, "validation_error",
        json='{"image_id": "ID", "objects": [{"points": [[NaN, 1]], "point_labels": [1]}]}'.replace("ID", CLICK_IMAGE_ID)),
    Bad("box_inf", 422, "validation_error", json='{"image_id": "ID", "objects": [{"box": [0, 0, Infinity, 3]}]}'.replace("ID", CLICK_IMAGE_ID)),
    Bad("label_two", 422, "validation_error", json=_click({"points": [[1, 1]], "point_labels": [2]})),
    Bad("point_three_coords", 422, "validation_error", json=_click({"points": [[1, 1, 1]]})),
    Bad("mask_input_not_base64", 400, "invalid_mask_input", json=_click({**_P, "mask_input": "***"})),
    Bad("mask_input_garbage", 400, "invalid_mask_input", json=_click({**_P, "mask_input": b64(b"x" * 300)})),
    Bad("image_id_and_image", 422, "validation_error", json=_click(image={"base64": GOOD_B64})),
    Bad("no_image", 422, "validation_error", json={"objects": [_P]}),
    Bad("unknown_field", 422, "validation_error", json=_click(colour="red")),
    Bad("not_json", 415, "unsupported_media_type", raw=b"hello", content_type="text/plain"),
    Bad("malformed_json", 400, "malformed_json", json='{"image_id": '),
]

BAD_AUTO_REQUESTS = [
    Bad("unknown_image_id", 404, "image_not_found", json={"image_id": UNKNOWN_IMAGE_ID}),
    Bad("points_per_side_over_limit", 400, "points_per_side_too_large", json={"image_id": CLICK_IMAGE_ID, "points_per_side": 17}),
    Bad("nms_zero", 422, "validation_error", json={"image_id": CLICK_IMAGE_ID, "box_nms_thresh": 0}),
    Bad("iou_nan", 422, "validation_error", json='{"image_id": "ID", "pred_iou_thresh": NaN}'.replace("ID", CLICK_IMAGE_ID)),
    Bad("bad_sort", 422, "validation_error", json={"image_id": CLICK_IMAGE_ID, "sort_by": "colour"}),
    Bad("invalid_base64", 400, "invalid_base64", json={"image": {"base64": "***"}}),
]
