"""Hostile or unusual client input never becomes a 5xx (issue 11): pixel formats decode to the right RGB
values or are rejected with a code, JSON that Python cannot parse safely is a 400, prompt text is proper
Unicode, every request list has a ceiling, s3:// keys are checked, box geometry is checked.

The HTTP-level cases of tests/bad_inputs.py BAD_INPUTS for /v1/pcs/image run here in-process (the real
FastAPI app and the tiny ConceptRunner, as in test_ingress_errors.py); all of them run over real Serve HTTP
in tests/integration/test_bad_inputs_http.py.
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from serve_app.codecs.image_decode import decode_image
from serve_app.config import AppConfig, ClickConfig, LimitsConfig, StorageConfig, VideoLimitsConfig
from serve_app.errors import Conflict, InvalidInput, Sam3Error, UnsupportedMediaType
from serve_app.ingress.body import MAX_JSON_DEPTH, json_depth, loads_json, parse_json_body, parse_model
from serve_app.model.prompt_geometry import check_points_and_box
from serve_app.pipelines.image_library import ImageLibrary, parse_s3_url
from serve_app.schemas import (
    MAX_BOXES_PER_PROMPT,
    MAX_OBJECTS,
    MAX_POINTS_PER_OBJECT,
    MAX_PROMPTS,
    MAX_TEXT_CHARS,
    ClickImageRequest,
    ConceptImageRequest,
    ImageRef,
    Prompt,
    VideoPromptRequest,
)
from tests.bad_inputs import BAD_INPUTS, PCS, send
from tests.helpers import png_bytes

LIMITS = dict(max_bytes=5_000_000, max_pixels=4_000_000)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    out = decode_image(data, **LIMITS)
    assert out.rgb.dtype == np.uint8 and out.rgb.ndim == 3 and out.rgb.shape[2] == 3
    return out.rgb.astype(int)


# -- pixel formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gray_gradient_is_scaled_not_clipped(fmt):
    values = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)  # 0 .. 65472
    rgb = _rgb(_save(Image.fromarray(values), fmt))
    assert Image.open(io.BytesIO(_save(Image.fromarray(values), fmt))).mode == "I;16"
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(int)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.array_equal(rgb[..., 0], rgb[..., 1])
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and rgb[16, 0, 0] == 128  # 32768 -> 128, not 255
    assert len(np.unique(rgb)) == 256  # the whole 8-bit range, no clipping to white


def test_16_bit_exact_points_and_big_endian_tiff():
    values = np.array([[0, 257, 32896, 65535, 128, 129]], dtype=">u2")
    img = Image.frombuffer("I;16B", (6, 1), values.tobytes(), "raw", "I;16B", 0, 1)
    data = _save(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert _rgb(data)[0, :, 0].tolist() == [0, 1, 128, 255, 0, 1]  # v * 255 / 65535, rounded


def test_16_bit_rgb_png_keeps_its_colours():
    import cv2

    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 2] = 65535  # red
    bgr16[..., 1] = 257 * 100  # green 100
    ok, enc = cv2.imencode(".png", bgr16)
    assert ok
    assert _rgb(enc.tobytes())[0, 0].tolist() == [255, 100, 0]


def test_32_bit_integer_tiff_in_16_bit_range_is_scaled():
    values = np.array([[0, 257, 65535, 32896]], np.int32)
    assert _rgb(_save(Image.fromarray(values), "TIFF"))[0, :, 0].tolist() == [0, 1, 255, 128]


def test_float_tiff_in_unit_range_is_scaled_by_255():
    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    data = _save(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert _rgb(data)[0].tolist() == [[0, 0, 0], [64, 64, 64], [128, 128, 128], [255, 255, 255]]


@pytest.mark.parametrize("values, what", [
    (np.array([[0, 0.5, 1000, 0.25]], np.float32), "values in [0, 1000]"),
    (np.array([[0, -0.5, 1, 0.25]], np.float32), "values in [-0.5, 1]"),
    (np.array([[0, np.nan, 1, 0.25]], np.float32), "NaN"),
    (np.array([[0, np.inf, 1, 0.25]], np.float32), "NaN or infinite"),
    (np.array([[0, 257, 65535, 70000]], np.int32), "values in 0..70000"),
    (np.array([[-1, 257, 65535, 0]], np.int32), "values in -1..65535"),
])
def test_ambiguous_high_depth_images_are_rejected_clearly(values, what):
    with pytest.raises(UnsupportedMediaType) as exc:
        decode_image(_save(Image.fromarray(values), "TIFF"), **LIMITS)
    assert (exc.value.status_code, exc.value.code) == (415, "unsupported_image_mode")
    assert what in exc.value.message


def test_lab_image_is_rejected_clearly():
    with pytest.raises(UnsupportedMediaType) as exc:
        decode_image(_save(Image.new("LAB", (8, 8), (50, 0, 0)), "TIFF"), **LIMITS)
    assert exc.value.code == "unsupported_image_mode" and "LAB" in exc.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
@pytest.mark.parametrize("cmyk, rgb", [
    ((255, 0, 0, 0), (0, 255, 255)),  # cyan
    ((0, 255, 0, 0), (255, 0, 255)),  # magenta
    ((0, 0, 255, 0), (255, 255, 0)),  # yellow
    ((0, 0, 0, 255), (0, 0, 0)),  # black
    ((0, 0, 0, 0), (255, 255, 255)),  # paper white
])
def test_cmyk_is_converted_not_inverted(fmt, cmyk, rgb):
    data = _save(Image.new("CMYK", (16, 16), cmyk), fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = _rgb(data)
    assert np.abs(out - np.array(rgb)).max() <= 3, out[8, 8]  # JPEG is lossy


def test_adobe_inverted_cmyk_jpeg_is_read_right():
    data = _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG")
    assert "adobe" in Image.open(io.BytesIO(data)).info  # Pillow writes Adobe (inverted) CMYK JPEGs
    assert np.abs(_rgb(data)[8, 8] - np.array([0, 255, 255])).max() <= 3


def _palette_image() -> Image.Image:
    img = Image.new("P", (4, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putdata([0, 1, 2, 1])
    return img


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_images_with_and_without_transparency(fmt):
    plain = _rgb(_save(_palette_image(), fmt))
    assert plain[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]]
    keyed = _rgb(_save(_palette_image(), fmt, transparency=1))  # index 1 (green) is transparent
    assert keyed[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255], [255, 255, 255]]


def test_palette_with_partial_alpha_png_is_composited():
    img = _palette_image()
    data = _save(img, "PNG", transparency=bytes([255, 128, 0]))  # tRNS: red opaque, green half, blue clear
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert _rgb(data)[0].tolist() == [[255, 0, 0], [127, 255, 127], [255, 255, 255], [127, 255, 127]]


def test_grayscale_grayscale_alpha_and_one_bit():
    gray = np.array([[0, 77, 200, 255]], np.uint8)
    out = _rgb(_save(Image.fromarray(gray), "PNG"))
    assert out[0].tolist() == [[v, v, v] for v in gray[0].tolist()]
    la = np.array([[[100, 0], [100, 255], [100, 128], [0, 255]]], np.uint8)
    out = _rgb(_save(Image.fromarray(la, "LA"), "PNG"))
    assert out[0, :, 0].tolist() == [255, 100, 177, 0]  # over white: 100*128/255 + 255*127/255 = 177
    bits = np.array([[0, 1, 1, 0]], bool)
    for fmt in ("PNG", "TIFF", "BMP"):
        data = _save(Image.fromarray(bits), fmt)
        assert Image.open(io.BytesIO(data)).mode == "1"
        assert _rgb(data)[0, :, 0].tolist() == [0, 255, 255, 0], fmt


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_is_composited_over_white(fmt):
    rgba = np.array([[[255, 0, 0, 128], [0, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 255]]], np.uint8)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = _rgb(_save(Image.fromarray(rgba, "RGBA"), fmt, **kw))
    assert out[0].tolist() == [[255, 127, 127], [255, 255, 255], [10, 20, 30], [0, 0, 0]]


def test_opaque_rgba_keeps_its_pixels_exactly():
    rgb = np.random.RandomState(1).randint(0, 256, (12, 10, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(_rgb(_save(Image.fromarray(rgba, "RGBA"), "PNG")), rgb)


@pytest.mark.parametrize("fmt, kw", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_animated_and_multi_page_images_use_their_first_frame(fmt, kw):
    frames = [Image.new("RGB", (8, 6), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = decode_image(data, **LIMITS)
    assert out.rgb.shape == (6, 8, 3) and out.format == fmt
    assert (out.rgb.reshape(-1, 3) == [255, 0, 0]).all()


def test_unexpected_decoder_exceptions_are_invalid_image(monkeypatch):
    """Pillow can raise anything on crafted files (struct.error, IndexError, ...): still a 400."""
    from PIL import Image

    def broken(_img):
        raise IndexError("tile out of range")

    monkeypatch.setattr(Image.Image, "getexif", broken)  # read for every image (its EXIF orientation)
    with pytest.raises(InvalidInput) as exc:
        decode_image(png_bytes(), **LIMITS)
    assert (exc.value.status_code, exc.value.code) == (400, "invalid_image")
    assert "tile out of range" not in exc.value.message  # decoder internals are not echoed


# -- JSON parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, depth", [
    ("1", 0), ('"[[[["', 0), ("{}", 1), ("[]", 1), ('{"a": [1, {"b": [[2]]}]}', 5),
    ('{"a": "[[[\\"[[", "b": [1]}', 2), ('{"a": "\\\\", "b": [[1]]}', 3), ('["\\\\\\"[[[", [1]]', 2),
    ('{"k": "}}]]", "v": [{"w": ["{{"]}]}', 4),
])
def test_json_depth_ignores_brackets_in_strings(text, depth):
    json.loads(text)
    assert json_depth(text) == depth == json_depth(text.encode())


def test_json_depth_of_a_large_body_is_fast_and_exact():
    import time

    body = json.dumps({"image": {"base64": "A" * 5_000_000}, "objects": [{"points": [[1.5, 2]] * 100_000}]})
    start = time.perf_counter()
    assert json_depth(body.encode()) == 5  # { objects [ { points [ [
    assert time.perf_counter() - start < 5  # a hang guard: linear, C-speed scans


@pytest.mark.parametrize("raw, code", [
    (b"[" * 100_000, "json_too_deep"),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "json_too_deep"),
    (b'{"a": ' + b"[" * 50 + b"1" + b"]" * 50 + b"}", "json_too_deep"),
    (b'{"n": 1' + b"0" * 5000 + b"}", "number_too_large"),
    (b"[-" + b"9" * 4400 + b"]", "number_too_large"),
    (b'{"a": ', "malformed_json"),
    (b"\xff\xfe\xfd", "malformed_json"),
])
def test_loads_json_turns_every_parser_failure_into_a_400(raw, code):
    with pytest.raises(InvalidInput) as exc:
        loads_json(raw)
    assert (exc.value.status_code, exc.value.code) == (400, code)


def test_loads_json_accepts_what_the_api_needs():
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json_depth(nested) == MAX_JSON_DEPTH and loads_json(nested) is not None
    assert loads_json(b'{"n": 1' + b"0" * 4000 + b"}") == {"n": 10**4000}  # under Python's limit: a number
    assert loads_json('{"t": "caf\u00e9 \\u00e9"}') == {"t": "caf\u00e9 \u00e9"}
    with pytest.raises(InvalidInput) as exc:
        parse_json_body(b"")
    assert exc.value.code == "empty_body"


# -- request schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["car\ud800", "\udfff", "car\x00", "\x1b[31mcar", "car\x7f", "car\x85", "a\x0bb",
                                  "a\x0cb"])
def test_prompt_text_must_be_proper_unicode_without_control_characters(text):
    body = {"image": {"base64": "x"}, "prompts": [{"text": "ok"}, {"text": text}]}
    with pytest.raises(InvalidInput) as exc:
        parse_model(ConceptImageRequest, body)
    assert (exc.value.status_code, exc.value.code) == (400, "invalid_text")
    assert exc.value.message.startswith("prompts.1.text")
    with pytest.raises(InvalidInput) as exc:
        parse_model(VideoPromptRequest, {"frame_index": 0, "text": text})
    assert exc.value.code == "invalid_text"


@pytest.mark.parametrize("text", ["car", "person in red shirt\n", "tab\tseparated\r\n", "caf\u00e9", "\u732b",
                                  "\U0001f697 emoji", "zero\u200bwidth", "x" * MAX_TEXT_CHARS])
def test_ordinary_text_passes(text):
    assert Prompt.model_validate({"text": text}).text == text


def test_lone_surrogate_in_json_text_is_invalid_text_not_a_500():
    raw = b'{"image": {"base64": "x"}, "prompts": [{"text": "car\\ud800"}]}'
    with pytest.raises(InvalidInput) as exc:
        parse_model(ConceptImageRequest, parse_json_body(raw))
    assert exc.value.code == "invalid_text"


def _img_body(**kw) -> dict:
    return {"image": {"base64": "x"}, "prompts": [{"text": "car"}], **kw}


@pytest.mark.parametrize("model, body, code", [
    (ConceptImageRequest, _img_body(prompts=[{"text": "t"}] * (MAX_PROMPTS + 1)), "too_many_prompts"),
    (ConceptImageRequest, _img_body(prompts=[{"text": "t" * (MAX_TEXT_CHARS + 1)}]), "text_too_long"),
    (ConceptImageRequest, _img_body(prompts=[{"boxes": [[0, 0, 1, 1]] * (MAX_BOXES_PER_PROMPT + 1)}]), "too_many_boxes"),
    (ConceptImageRequest, _img_body(prompts=[{"boxes": [[0, 0, 1, 1]], "box_labels": [1] * (MAX_BOXES_PER_PROMPT + 1)}]),
     "box_labels_mismatch"),
    (ConceptImageRequest, _img_body(image={"url": "s3://b/" + "k" * 3000}), "url_key_too_long"),
    (ClickImageRequest, {"image_id": "x", "objects": [{"points": [[1, 1]]}] * (MAX_OBJECTS + 1)}, "too_many_objects"),
    (ClickImageRequest, {"image_id": "x", "objects": [{"points": [[1, 1]] * (MAX_POINTS_PER_OBJECT + 1)}]},
     "too_many_points"),
    (ClickImageRequest, {"image_id": "x", "objects": [{"points": [[1, 1]], "point_labels": [1] * 1000}]},
     "point_labels_mismatch"),
    (VideoPromptRequest, {"frame_index": 0, "objects": [{"box": [0, 0, 1, 1]}] * (MAX_OBJECTS + 1)}, "too_many_objects"),
    (VideoPromptRequest, {"frame_index": 0, "objects": [{"points": [[1, 1]] * 1000}]}, "too_many_points"),
    (VideoPromptRequest, {"frame_index": 0, "objects": [{"points": [[1, 1]], "point_labels": [1] * 1000}]},
     "point_labels_mismatch"),
])
def test_list_ceilings_answer_the_limit_code_at_once(model, body, code):
    with pytest.raises(InvalidInput) as exc:
        parse_model(model, body)
    assert (exc.value.status_code, exc.value.code) == (400, code)


def test_huge_lists_are_refused_before_their_items_are_validated():
    import time

    body = {"image_id": "x", "objects": [{"points": [["not a number"]] * 1_000_000}]}
    start = time.perf_counter()
    with pytest.raises(InvalidInput) as exc:
        parse_model(ClickImageRequest, body)
    assert exc.value.code == "too_many_points"
    assert time.perf_counter() - start < 1.0  # the length is checked first (a hang guard, not a benchmark)


def test_other_schema_violations_stay_422():
    from serve_app.errors import ValidationFailed

    for model, body in [
        (ConceptImageRequest, _img_body(threshold=2)),
        (ConceptImageRequest, _img_body(prompts=[{"boxes": [[0, 0, 10**400, 5]]}])),
        (VideoPromptRequest, {"frame_index": 0, "objects": [{"obj_id": 2**31, "box": [0, 0, 1, 1]}]}),
        (VideoPromptRequest, {"frame_index": 0, "objects": [{"mask": {"size": [1, 2, 3], "counts": ""}}]}),
        (ClickImageRequest, {"image_id": "x", "objects": [{"points": [[1, 1, 1]]}]}),  # an item, not the list
        (ConceptImageRequest, _img_body(prompts=[{"boxes": [[0, 0, 1, 1, 1]]}])),
    ]:
        with pytest.raises(ValidationFailed) as exc:
            parse_model(model, body)
        assert (exc.value.status_code, exc.value.code) == (422, "validation_error")


def test_every_request_list_has_a_max_length():
    """Audit: each list field of a request model (recursively) declares maxItems in the JSON schema."""
    from serve_app import schemas

    requests = [schemas.ConceptImageRequest, schemas.ConceptOptions, schemas.ClickImageRequest,
                schemas.AutoImageRequest, schemas.ImageUploadRequest, schemas.UploadRequest, schemas.JobRequest,
                schemas.SessionCreateRequest, schemas.SessionOptionsIn, schemas.VideoPromptRequest,
                schemas.PropagateRequest]
    unbounded = []

    def walk(node, path, defs):
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                if name not in seen:
                    seen.add(name)
                    walk(defs[name], name, defs)
                return
            if node.get("type") == "array" and "maxItems" not in node:
                unbounded.append(path)
            for key, value in node.items():
                walk(value, f"{path}.{key}", defs)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]", defs)

    for model in requests:
        seen: set[str] = set()
        spec = model.model_json_schema()
        walk(spec, model.__name__, spec.get("$defs", {}))
    assert not unbounded, unbounded


def test_configured_limits_can_never_exceed_the_schema_ceilings():
    def le(model, field):
        return next(m.le for m in model.model_fields[field].metadata if getattr(m, "le", None) is not None)

    assert le(LimitsConfig, "max_prompts") == MAX_PROMPTS
    assert le(LimitsConfig, "max_text_chars") == MAX_TEXT_CHARS
    assert le(LimitsConfig, "max_boxes_per_prompt") == MAX_BOXES_PER_PROMPT
    assert le(ClickConfig, "max_objects") == le(VideoLimitsConfig, "max_objects_per_call") == MAX_OBJECTS
    assert le(ClickConfig, "max_points_per_object") == le(VideoLimitsConfig, "max_points_per_object") \
        == MAX_POINTS_PER_OBJECT
    with pytest.raises(ValueError):
        LimitsConfig(max_text_chars=MAX_TEXT_CHARS + 1)


# -- s3:// keys and foreign-object states -----------------------------------------------------------------


@pytest.mark.parametrize("url, code", [
    ("s3://b/" + "k" * 1025, "url_key_too_long"),
    ("s3://b/" + "\u00e9" * 513, "url_key_too_long"),  # 1026 UTF-8 bytes in 513 characters
    ("s3://b/a\x00b.png", "invalid_url_key"),
    ("s3://b/a\nb.png", "invalid_url_key"),
    ("s3://b/a\x9bb.png", "invalid_url_key"),
    ("s3://b/\udc80.png", "invalid_url_key"),
    ("s3://b/a/../b.png", "invalid_url_key"),
    ("s3://b/./b.png", "invalid_url_key"),
    ("s3://b//b.png", "invalid_url_key"),
    ("s3://b/dir/", "invalid_url_key"),
    ("s3://b", "unsupported_url"),
    ("https://b/k.png", "unsupported_url"),
])
def test_s3_url_keys_are_checked_before_any_request(url, code):
    with pytest.raises(InvalidInput) as exc:
        parse_s3_url(url)
    assert (exc.value.status_code, exc.value.code) == (400, code)


def test_ordinary_s3_keys_pass():
    assert parse_s3_url("s3://b/" + "k" * 1024) == ("b", "k" * 1024)
    assert parse_s3_url("s3://b/photos 2024/caf\u00e9 (1).JPG") == ("b", "photos 2024/caf\u00e9 (1).JPG")


@pytest.fixture
def stubbed_s3(aws_env):
    """An S3Store whose client answers from a botocore Stubber (no server)."""
    from botocore.stub import Stubber

    from serve_app.storage.s3 import S3Store

    store = S3Store(StorageConfig(uri="s3://own-bucket/p", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                                  allowed_url_buckets=["inputs"], max_attempts=1))
    with Stubber(store._client) as stubber:
        yield store, stubber


@pytest.mark.parametrize("s3_code, http, error, code", [
    ("InvalidObjectState", 403, Conflict, "url_object_unreadable"),  # archived (Glacier) object
    ("InvalidRequest", 400, Conflict, "url_object_unreadable"),  # e.g. SSE-C object without its key
    ("KeyTooLongError", 400, InvalidInput, "invalid_url_key"),
    ("InvalidURI", 400, InvalidInput, "invalid_url_key"),
])
def test_foreign_object_states_are_4xx_not_5xx(stubbed_s3, s3_code, http, error, code):
    store, stubber = stubbed_s3
    stubber.add_client_error("get_object", service_error_code=s3_code, http_status_code=http,
                             expected_params={"Bucket": "inputs", "Key": "a/b.png"})
    library = ImageLibrary(store, StorageConfig(allowed_url_buckets=["inputs"]), LimitsConfig())
    with pytest.raises(error) as exc:
        asyncio.run(library.load(ImageRef(url="s3://inputs/a/b.png")))
    assert exc.value.code == code and 400 <= exc.value.status_code < 500
    stubber.assert_no_pending_responses()


def test_a_too_long_key_never_reaches_storage(stubbed_s3):
    store, stubber = stubbed_s3  # no response queued: a call would fail the Stubber
    library = ImageLibrary(store, StorageConfig(allowed_url_buckets=["inputs"]), LimitsConfig())
    with pytest.raises(InvalidInput) as exc:
        asyncio.run(library.load(ImageRef(url="s3://inputs/" + "k" * 1025)))
    assert exc.value.code == "url_key_too_long"


# -- box and point geometry (clicks and video prompts) ------------------------------------------------------


@pytest.mark.parametrize("points, labels, box, code", [
    (None, None, [10, 5, 10, 20], "invalid_box"),  # x0 == x1
    (None, None, [10, 5, 30, 5], "invalid_box"),  # y0 == y1
    (None, None, [30, 5, 10, 20], "invalid_box"),
    (None, None, [np.nan, 5, 10, 20], "invalid_box"),
    (None, None, [0, 5, np.inf, 20], "invalid_box"),
    (None, None, [1, 2, 3], "invalid_box"),
    (None, None, ["a", 1, 2, 3], "invalid_box"),
    (None, None, [-1, 5, 10, 20], "box_outside_image"),
    (None, None, [1, 5, 65, 20], "box_outside_image"),
    (None, None, [1, 5, 10, 49], "box_outside_image"),
    ([[1, 1], [2]], [1, 1], None, "invalid_points"),  # ragged
    ([[1, np.nan]], [1], None, "invalid_points"),
    ([[1, 1]], [1, 0], None, "point_labels_mismatch"),
    ([[65, 1]], [1], None, "point_outside_image"),
    (None, [1], [1, 1, 5, 5], "point_labels_mismatch"),
    (None, None, None, "empty_object"),
])
def test_check_points_and_box(points, labels, box, code):
    with pytest.raises(InvalidInput) as exc:
        check_points_and_box(points, labels, box, "objects[0]", (48, 64))
    assert exc.value.code == code


def test_valid_geometry_passes_including_the_image_edges():
    check_points_and_box([[0, 0], [64, 48]], [1, 0], [0, 0, 64, 48], "objects[0]", (48, 64))
    check_points_and_box(None, None, [0.5, 0.5, 0.75, 0.75], "objects[0]", (48, 64))


# -- the real ingress app in-process: every /v1/pcs/image case of BAD_INPUTS --------------------------------

PCS_CASES = [c for c in BAD_INPUTS if c.path == PCS]


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from serve_app.ingress.context import IngressContext
    from serve_app.ingress.fastapi_app import create_app
    from serve_app.model.concept import ConceptRunner
    from tests.unit.test_ingress_errors import InProcessHandle

    cfg = AppConfig.model_validate({"model": {"model_id": tiny_model_dir},
                                    "limits": {"max_image_bytes": 200_000, "max_image_pixels": 1_000_000},
                                    "storage": {"uri": f"file://{tmp_path_factory.mktemp('store')}"}})
    app = create_app()
    app.state.ctx = IngressContext.create(cfg, InProcessHandle(ConceptRunner.from_config(cfg.model)), click=None,
                                          job_worker=None, sessions=None)
    return TestClient(app, raise_server_exceptions=False)


def _good_request_works(client) -> None:
    r = client.post(PCS, files={"image": ("a.png", png_bytes(), "image/png")},
                    data={"text": "car", "threshold": "0", "max_instances": "2", "mask_format": "none"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["prompt"] == {"text": "car"}
    assert len(r.json()["results"][0]["instances"]) == 2


@pytest.mark.parametrize("case", PCS_CASES, ids=[c.name for c in PCS_CASES])
def test_bad_input_in_process(client, case):
    r = send(client.post, PCS, case, request_id=f"rid-{case.name}")
    assert r.status_code == case.status, r.text
    error = r.json()["error"]
    assert (error["code"], error["request_id"]) == (case.code, f"rid-{case.name}")
    assert error["message"] and r.headers["x-request-id"] == f"rid-{case.name}"
    _good_request_works(client)


def test_table_covers_every_case_of_the_issue():
    codes = {c.code for c in BAD_INPUTS}
    assert {"invalid_text", "text_too_long", "too_many_prompts", "too_many_boxes", "too_many_objects",
            "too_many_points", "json_too_deep", "number_too_large", "invalid_box", "box_outside_image",
            "unsupported_image_mode", "url_key_too_long", "invalid_url_key"} <= codes
    assert len(BAD_INPUTS) >= 30 and all(400 <= c.status < 500 for c in BAD_INPUTS)
    assert len({c.name for c in BAD_INPUTS}) == len(BAD_INPUTS)


def test_sam3_errors_keep_their_codes_across_pickling():
    import pickle

    for err in (Conflict("archived", "url_object_unreadable"), UnsupportedMediaType("F", "unsupported_image_mode")):
        back = pickle.loads(pickle.dumps(err))
        assert isinstance(back, Sam3Error) and (back.code, back.status_code) == (err.code, err.status_code)


# -- which s3:// locations a tenant may read ----------------------------------------------------------------


class _Located:
    """A store that says where it lives (as S3Store.location does), for check_url_allowed."""

    def __init__(self, bucket: str, prefix: str):
        self._where = (bucket, prefix)

    def location(self) -> tuple[str, str]:
        return self._where


@pytest.mark.parametrize("tenant, url, allowed", [
    ("acme", "s3://inputs/a.png", True),  # storage.allowed_url_buckets
    ("acme", "s3://elsewhere/a.png", False),
    ("acme", "s3://own/svc/t/acme/images/x", True),  # the caller's own objects in the service's bucket
    ("acme", "s3://own/svc/t/globex/images/x", False),  # another tenant's, although the bucket is listed
    ("acme", "s3://own/svc/jobs/x", False),  # the service's own, outside every tenant
    ("acme", "s3://own/other-app/t/acme/x", False),  # same bucket, outside this service's root
    ("globex", "s3://team-g/videos/v.mp4", True),  # globex has its own list: bucket + prefix
    ("globex", "s3://team-g/private/v.mp4", False),
    ("globex", "s3://inputs/a.png", False),  # a tenant with a list ignores allowed_url_buckets
])
def test_which_s3_inputs_a_tenant_may_read(tenant, url, allowed):
    from serve_app.pipelines.image_library import check_url_allowed, parse_s3_url

    storage = StorageConfig(uri="s3://own/svc", allowed_url_buckets=["inputs", "own"],
                            tenant_url_prefixes={"globex": ["team-g/videos/"]})
    bucket, key = parse_s3_url(url)
    store = _Located("own", "svc")
    if allowed:
        check_url_allowed(storage, store, tenant, bucket, key)  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidInput) as info:
            check_url_allowed(storage, store, tenant, bucket, key)  # type: ignore[arg-type]
        assert info.value.code == "url_not_allowed"
