"""Tables of bad requests and the status + error code each must get.

BAD_REQUESTS (/v1/pcs/image) is shared by the in-process ingress tests (tests/unit) and the real-Serve HTTP
tests (tests/integration); both run the app with limits.max_image_bytes=200000 and
limits.max_image_pixels=1000000. BAD_CLICK_REQUESTS / BAD_AUTO_REQUESTS: /v1/pvs/image and /v1/auto/image.
BAD_INPUTS: hostile input across every route (prompt text, list ceilings, deep JSON, giant integers,
odd pixel formats, s3:// keys), each with its route (`Bad.path`).
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
    path: str = "/v1/pcs/image"  # the route (BAD_INPUTS); the other tables are sent to one route each


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


# ------------------------------------------------------------------------------------------------------
# BAD_INPUTS: hostile input on every route. Expected by tests/unit/test_input_validation.py (the
# /v1/pcs/image ones, in-process) and tests/integration/test_bad_inputs_http.py (all, real Serve: the app
# of tests/conftest.py serve_args, whose allowed_url_buckets include sam3-test). Schema checks run before
# anything else, so the video prompt routes answer them for a session that does not exist.

PCS, PVS, AUTO, IMAGES, JOBS = "/v1/pcs/image", "/v1/pvs/image", "/v1/auto/image", "/v1/images", "/v1/jobs"
VIDEO = "/v1/video/sessions"
VIDEO_PROMPTS = "/v1/video/sessions/no-such-session/prompts"
VIDEO_PROPAGATE = "/v1/video/sessions/no-such-session/propagate"
EXPORTS = "/v1/video/sessions/no-such-session/exports"  # the body is checked before the session
LIBRARY = "/v1/videos"
S3_BUCKET = "sam3-test"  # tests/fixtures/s3.py BUCKET, allowed by tests/conftest.py app_storage
DEEP = "[" * 100_000  # Python's json recursion limit is ~1000
DEEP_5000 = "[" * 5000  # for the routes whose body limit is 64 KiB
GIANT_INT = "1" + "0" * 5000  # over Python's 4300-digit int parsing limit (ValueError)


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


_FLOAT_TIFF_OUT_OF_RANGE = _save(Image.fromarray(np.linspace(0, 1000, 64, dtype=np.float32).reshape(8, 8)), "TIFF")
_FLOAT_TIFF_NAN = _save(Image.fromarray(np.full((8, 8), np.nan, np.float32)), "TIFF")
_INT32_TIFF_NEGATIVE = _save(Image.fromarray(np.arange(-32, 32, dtype=np.int32).reshape(8, 8)), "TIFF")
_LAB_TIFF = _save(Image.new("LAB", (8, 8), (50, 10, 10)), "TIFF")


def _pcs_text(text: str) -> dict:
    return _j(prompts=[{"text": text}])


def _s3(key: str) -> dict:
    return {"url": f"s3://{S3_BUCKET}/{key}"}


def _video_text(text: str) -> dict:
    return {"frame_index": 0, "text": text}


def _video_objects(*objects) -> dict:
    return {"frame_index": 0, "objects": list(objects)}


def _pcs_raw(tail: str) -> str:
    """A /v1/pcs/image JSON body whose last field is `tail` verbatim (deep nesting, giant numbers)."""
    return '{"image": {"base64": "%s"}, "prompts": [{"text": "car"}], %s}' % (GOOD_B64, tail)


BAD_INPUTS = [
    # -- prompt text: proper Unicode, no control characters, bounded (every route that takes text) --------
    Bad("pcs_text_lone_surrogate", 400, "invalid_text", json=_pcs_text("car\ud800")),
    Bad("pcs_text_nul", 400, "invalid_text", json=_pcs_text("car\x00")),
    Bad("pcs_text_ansi_escape", 400, "invalid_text", json=_pcs_text("\x1b[31mcar")),
    Bad("pcs_text_c1_control", 400, "invalid_text", json=_pcs_text("car\x85")),
    Bad("pcs_text_over_schema_ceiling", 400, "text_too_long", json=_pcs_text("x" * 5000)),
    Bad("pcs_multipart_text_bell", 400, "invalid_text", files=_img(GOOD), data={"text": "ca\x07r"}),
    Bad("video_text_lone_surrogate", 400, "invalid_text", json=_video_text("person\udfff"), path=VIDEO_PROMPTS),
    Bad("video_text_control", 400, "invalid_text", json=_video_text("person\x1f"), path=VIDEO_PROMPTS),
    Bad("video_text_too_long", 400, "text_too_long", json=_video_text("y" * 2000), path=VIDEO_PROMPTS),
    Bad("job_text_control", 422, "invalid_job_input",
        json={"kind": "pcs_image", "input": _pcs_text("car\x00")}, path=JOBS),
    # -- list ceilings (schema max_length): same code as the configured limit ------------------------------
    Bad("pcs_5000_prompts", 400, "too_many_prompts", json=_j(prompts=[{"text": "t"}] * 5000)),
    Bad("pcs_1000_boxes", 400, "too_many_boxes", json=_j(prompts=[{"boxes": [[1, 1, 9, 9]] * 1000}])),
    Bad("pcs_300_box_labels", 400, "box_labels_mismatch",
        json=_j(prompts=[{"boxes": [[1, 1, 9, 9]], "box_labels": [1] * 300}])),
    Bad("pvs_10000_points", 400, "too_many_points",
        json=_click({"points": [[5, 5]] * 10_000}), path=PVS),
    Bad("pvs_1000_objects", 400, "too_many_objects", json=_click(*[_P] * 1000), path=PVS),
    Bad("pvs_1000_point_labels", 400, "point_labels_mismatch",
        json=_click({"points": [[5, 5]], "point_labels": [1] * 1000}), path=PVS),
    Bad("video_1000_objects", 400, "too_many_objects", json=_video_objects(*[{"box": [1, 1, 9, 9]}] * 1000),
        path=VIDEO_PROMPTS),
    Bad("video_1000_points", 400, "too_many_points", json=_video_objects({"points": [[1, 1]] * 1000}),
        path=VIDEO_PROMPTS),
    Bad("video_mask_size_three_numbers", 422, "validation_error",
        json=_video_objects({"mask": {"size": [4, 4, 4], "counts": "x"}}), path=VIDEO_PROMPTS),
    Bad("video_obj_id_huge", 422, "validation_error",
        json=_video_objects({"obj_id": 10**30, "box": [1, 1, 9, 9]}), path=VIDEO_PROMPTS),
    # -- JSON that Python cannot parse safely: too deep, integers over 4300 digits ----------------------------
    Bad("pcs_100000_nested_lists", 400, "json_too_deep", json=DEEP),
    Bad("pcs_40_deep_field", 400, "json_too_deep", json=_pcs_raw('"threshold": ' + "[" * 40 + "]" * 40)),
    Bad("pcs_giant_int", 400, "number_too_large", json=_pcs_raw('"max_instances": ' + GIANT_INT)),
    Bad("pcs_400_digit_box_coordinate", 422, "validation_error",
        json=_j(prompts=[{"text": "car", "boxes": [[0, 0, 10**400, 5]]}])),
    Bad("pcs_multipart_prompts_deep", 400, "json_too_deep", files=_img(GOOD), data={"prompts": DEEP}),
    Bad("pcs_multipart_prompts_giant_int", 400, "number_too_large", files=_img(GOOD),
        data={"prompts": '[{"text": "car", "boxes": [[0, 0, %s, 5]]}]' % GIANT_INT}),
    Bad("pvs_100000_nested_lists", 400, "json_too_deep", json=DEEP, path=PVS),
    Bad("pvs_giant_int_point", 400, "number_too_large",
        json='{"image_id": "%s", "objects": [{"points": [[%s, 1]]}]}' % (CLICK_IMAGE_ID, GIANT_INT), path=PVS),
    Bad("auto_100000_nested_lists", 400, "json_too_deep", json=DEEP, path=AUTO),
    Bad("auto_giant_int", 400, "number_too_large",
        json='{"image_id": "%s", "points_per_side": %s}' % (CLICK_IMAGE_ID, GIANT_INT), path=AUTO),
    Bad("auto_100_digit_points_per_side", 400, "points_per_side_too_large",
        json={"image_id": CLICK_IMAGE_ID, "points_per_side": 10**100}, path=AUTO),
    Bad("jobs_deep_input", 400, "json_too_deep", json='{"kind": "pcs_image", "input": %s}' % DEEP, path=JOBS),
    Bad("jobs_giant_int", 400, "number_too_large", json='{"kind": "pcs_image", "input": {"a": %s}}' % GIANT_INT,
        path=JOBS),
    Bad("video_create_deep", 400, "json_too_deep", json='{"video": %s}' % DEEP_5000, path=VIDEO),
    Bad("video_propagate_deep", 400, "json_too_deep", json=DEEP_5000, path=VIDEO_PROPAGATE),
    Bad("video_propagate_giant_int", 400, "number_too_large",
        json='{"start_frame_index": %s}' % GIANT_INT, path=VIDEO_PROPAGATE),
    # -- boxes: zero area, outside, non-finite ---------------------------------------------------------------
    Bad("pcs_box_zero_width", 400, "invalid_box", json=_j(prompts=[{"text": "car", "boxes": [[20, 10, 20, 40]]}])),
    Bad("pcs_box_zero_height", 400, "invalid_box", json=_j(prompts=[{"boxes": [[10, 30, 50, 30]]}])),
    Bad("pcs_box_right_of_image", 400, "box_outside_image", json=_j(prompts=[{"boxes": [[100, 10, 131, 40]]}])),
    Bad("pcs_box_negative_infinity", 422, "validation_error",
        json='{"image": {"base64": "%s"}, "prompts": [{"boxes": [[-Infinity, 1, 2, 3]]}]}' % GOOD_B64),
    Bad("pvs_box_zero_height", 400, "invalid_box", json=_click({"box": [10, 10, 50, 10]}), path=PVS),
    Bad("pvs_box_below_image", 400, "box_outside_image", json=_click({"box": [10, 10, 50, 91]}), path=PVS),
    Bad("pvs_point_nan_and_box", 422, "validation_error",
        json='{"image_id": "%s", "objects": [{"points": [[1, NaN]], "box": [1, 1, 5, 5]}]}' % CLICK_IMAGE_ID,
        path=PVS),
    # -- pixel formats without a faithful 8-bit RGB: rejected clearly -------------------------------------------
    Bad("float_tiff_values_over_one", 415, "unsupported_image_mode",
        files=_img(_FLOAT_TIFF_OUT_OF_RANGE, "f.tif", "image/tiff"), data={"text": "car"}),
    Bad("float_tiff_nan", 415, "unsupported_image_mode", files=_img(_FLOAT_TIFF_NAN, "n.tif", "image/tiff"),
        data={"text": "car"}),
    Bad("int32_tiff_negative", 415, "unsupported_image_mode",
        files=_img(_INT32_TIFF_NEGATIVE, "i.tif", "image/tiff"), data={"text": "car"}),
    Bad("lab_tiff", 415, "unsupported_image_mode", files=_img(_LAB_TIFF, "lab.tif", "image/tiff"),
        data={"text": "car"}),
    Bad("images_float_tiff_upload", 415, "unsupported_image_mode",
        files={"file": ("f.tif", _FLOAT_TIFF_OUT_OF_RANGE, "image/tiff")}, path=IMAGES),
    # -- s3:// keys: too long, invalid characters, normalisable segments ----------------------------------------
    Bad("pcs_s3_key_1025_bytes", 400, "url_key_too_long", json=_j(image=_s3("k" * 1025))),
    Bad("pcs_s3_key_multibyte_over_1024_bytes", 400, "url_key_too_long", json=_j(image=_s3("\u00e9" * 600))),
    Bad("pcs_s3_url_over_schema_ceiling", 400, "url_key_too_long", json=_j(image=_s3("k" * 5000))),
    Bad("pcs_s3_key_control_char", 400, "invalid_url_key", json=_j(image=_s3("images/a\x01.png"))),
    Bad("pcs_s3_key_dot_dot", 400, "invalid_url_key", json=_j(image=_s3("images/../other/a.png"))),
    Bad("pcs_s3_key_lone_surrogate", 400, "invalid_url_key", json=_j(image=_s3("a\udc80.png"))),
    Bad("pvs_s3_key_too_long", 400, "url_key_too_long", json={"image": _s3("k" * 2000), "objects": [_P]},
        path=PVS),
    Bad("auto_s3_key_double_slash", 400, "invalid_url_key", json={"image": _s3("a//b.png")}, path=AUTO),
    Bad("images_s3_key_dot", 400, "invalid_url_key", json={"image": _s3("./a.png")}, path=IMAGES),
    Bad("video_s3_key_too_long", 400, "url_key_too_long", json={"video": _s3("v" * 1100)}, path=VIDEO),
    Bad("video_s3_key_newline", 400, "invalid_url_key", json={"video": _s3("videos/a\nb.mp4")}, path=VIDEO),
    # -- exports, the video library and pcs_video jobs ------------------------------------------------------------
    Bad("export_unknown_format", 400, "unknown_export_format", json={"formats": ["coco_instance", "gif"]},
        path=EXPORTS),
    Bad("export_groups_without_group_mode", 400, "invalid_merge_groups",
        json={"formats": ["coco_instance"], "merge": {"groups": [{"name": "g", "obj_ids": [1]}]}}, path=EXPORTS),
    Bad("export_class_name_control_char", 400, "invalid_text",
        json={"formats": ["coco_instance"], "object_meta": [{"obj_id": 1, "class_name": "car\x07"}]}, path=EXPORTS),
    Bad("export_deep_json", 400, "json_too_deep", json=DEEP_5000, path=EXPORTS),
    Bad("library_s3_key_too_long", 400, "url_key_too_long", json={"url": _s3("v" * 1100)["url"]}, path=LIBRARY),
    Bad("library_two_sources", 422, "validation_error", json={"upload_id": "u1", "video_id": "0" * 64},
        path=LIBRARY),
    Bad("pcs_video_job_control_char_prompt", 422, "invalid_job_input",
        json={"kind": "pcs_video", "input": {"video": {"video_id": "0" * 64}, "prompts": ["car\x1f"],
                                             "export": {"formats": ["coco_instance"]}}}, path=JOBS),
]
