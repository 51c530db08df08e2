"""The Video and Jobs tabs in Chromium: upload through the presigned PUT (storage answers the browser's CORS
preflight), a session, a text prompt and a click on the current frame, propagation streamed into the page, the
scrubber showing masks on a later frame, the object list, an export whose ZIP downloads, the jobs list, and
reopening a stored video from the media library (uploaded directly to the API this time).
"""

from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.e2e.conftest import canvas_pixel, click_canvas, point_inside, screenshot
from tests.videos import make_video

CANVAS = "#video-canvas"
N_FRAMES, H, W, FPS = 12, 120, 160, 8.0


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    make_video(str(path), n=N_FRAMES, h=H, w=W, fps=FPS)
    return str(path)


def is_video_call(suffix: str, method: str = "POST"):
    return lambda r: r.url.split("?")[0].endswith(suffix) and r.request.method == method and r.status != 409


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def starting_retries(page) -> None:
    """The page retries 409 session_starting (the session's actor is starting) as told by Retry-After: each
    retried answer leaves a "Failed to load resource: 409" console line that is expected."""
    log = page.console_log
    for line in [e for e in log.errors if "status of 409" in e]:
        log.errors.remove(line)


def open_video_tab(page):
    page.click("#tab-btn-video")
    assert page.is_visible("#video-drop")


def test_video_upload_prompt_propagate_export(page, app_url, video_path):
    open_video_tab(page)
    page.select_option("#video-upload-mode", "presigned")
    with page.expect_response(lambda r: r.request.method == "PUT") as put, \
            page.expect_response(is_video_call("/v1/video/sessions")) as created:
        page.set_input_files("#video-file", video_path)
    assert put.value.status == 200 and "/v1/" not in put.value.url  # straight to storage, not through the API
    session = created.value.json()
    assert list(created.value.request.post_data_json["video"]) == ["upload_id"]
    sid = session["session_id"]
    assert session["num_frames"] == N_FRAMES
    page.wait_for_selector(f"{CANVAS}[data-session-id='{sid}'][data-frame='0']")
    assert page.eval_on_selector(CANVAS, "c => [c.width, c.height]") == [W, H]
    assert page.get_attribute("#video-scrubber", "max") == str(N_FRAMES - 1)
    # the uploaded video was added to the media library
    page.wait_for_selector(f"#library-list .item[data-video-id='{session['video_id']}']")

    # a text prompt on the current frame
    page.fill("#video-text", "red disc")
    with page.expect_response(is_video_call("/prompts")) as prompted:
        page.click("#video-detect")
    answer = prompted.value.json()
    assert prompted.value.status == 200 and answer["frame_index"] == 0 and answer["objects"]
    page.wait_for_function("n => document.querySelectorAll('#video-objects .item').length === n",
                           arg=len({o["id"] for o in answer["objects"]}))
    # remove one (the tiny model's session tracks at most 4 objects), then a click makes a new one
    ids = sorted({o["id"] for o in answer["objects"]})
    with page.expect_response(is_video_call(f"/objects/{ids[-1]}", "DELETE")) as removed:
        page.locator(f"#video-objects .item[data-obj-id='{ids[-1]}'] button").click()
    assert removed.value.status == 200
    page.wait_for_function("n => document.querySelectorAll('#video-objects .item').length === n", arg=len(ids) - 1)
    page.click("#video-new-object")
    with page.expect_response(is_video_call("/prompts")) as clicked:
        click_canvas(page, CANVAS, 100, 60)
    body = clicked.value.request.post_data_json
    assert body["frame_index"] == 0 and body["objects"][0]["points"] == [[100, 60]]
    assert "obj_id" not in body["objects"][0]  # a new object: the server picks its id
    assert clicked.value.status == 200, clicked.value.text()
    new_id = clicked.value.json()["prompted_obj_ids"][0]
    page.wait_for_selector(f"#video-objects .item.active[data-obj-id='{new_id}']")
    # name it: exports use the names
    row = page.locator(f"#video-objects .item[data-obj-id='{new_id}']")
    row.locator("input[aria-label='class name']").fill("disc")
    row.locator("input[aria-label='class name']").press("Tab")

    # propagate forward from frame 0: frames stream in, the progress bar moves
    page.select_option("#propagate-dir", "forward")
    with page.expect_response(is_video_call("/propagate")) as streamed:
        page.click("#propagate")
    assert streamed.value.headers["content-type"].startswith("application/x-ndjson")
    page.wait_for_selector(f"{CANVAS}[data-propagated='{N_FRAMES}']")
    starting_retries(page)

    # the scrubber shows masks on a later frame
    later = N_FRAMES - 2
    page.eval_on_selector("#video-scrubber", "(e, v) => { e.value = String(v); e.dispatchEvent(new Event('input')); }",
                          later)
    page.wait_for_selector(f"{CANVAS}[data-frame='{later}']:not([data-objects='0'])")
    stored = httpx.get(f"{app_url}/v1/video/sessions/{sid}/masks",
                       params={"frame_start": later, "frame_end": later}, timeout=30).json()["frames"][0]
    assert stored["objects"]
    assert page.get_attribute(CANVAS, "data-objects") == str(len(stored["objects"]))
    union = np.zeros((H, W), bool)
    for obj in stored["objects"]:
        union |= decode(obj["mask"])
    first = decode(stored["objects"][0]["mask"])
    x, y = point_inside(first)
    with_masks = canvas_pixel(page, CANVAS, x, y)
    for toggle in page.locator("#video-objects .item input[type=checkbox]").all():
        toggle.uncheck()
    plain = canvas_pixel(page, CANVAS, x, y)
    assert with_masks[:3] != plain[:3], (with_masks, plain)
    for toggle in page.locator("#video-objects .item input[type=checkbox]").all():
        toggle.check()
    assert canvas_pixel(page, CANVAS, x, y) == with_masks
    screenshot(page, "playground-video")

    # export: COCO + YOLO of every frame -> a job -> the ZIP downloads
    page.click("#export-open")
    page.check("#export-form input[value='yolo_segmentation']")
    with page.expect_response(is_video_call("/exports")) as exported:
        page.click("#export-submit")
    request = exported.value.request.post_data_json
    assert request["formats"] == ["coco_instance", "yolo_segmentation"]
    assert {"obj_id": new_id, "class_name": "disc"} in request["object_meta"]
    job = exported.value.json()
    assert exported.value.status == 202
    page.wait_for_selector("#export-link:not([hidden])")
    screenshot(page, "playground-export")
    with page.expect_download() as download:
        page.click("#export-link")
    data = open(download.value.path(), "rb").read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
    assert any(n.endswith(".json") for n in names) and any(n.endswith(".txt") for n in names), names
    page.click("#export-cancel")

    # the jobs list has the export, succeeded, with its ZIP link
    page.keyboard.press("j")
    row = page.locator(f"#jobs-body tr[data-job-id='{job['job_id']}']")
    row.wait_for()
    assert "video_export" in row.inner_text() and "succeeded" in row.inner_text()
    row.locator("a", has_text="export ZIP").wait_for()
    screenshot(page, "playground-jobs")
    starting_retries(page)


def test_library_reopens_a_stored_video(page, app_url, video_path):
    open_video_tab(page)
    page.select_option("#video-upload-mode", "direct")
    page.fill("#video-max-frames", "6")
    with page.expect_response(is_video_call("/v1/video/sessions")) as created:
        page.set_input_files("#video-file", video_path)
    assert "multipart/form-data" in created.value.request.headers["content-type"]
    first = created.value.json()
    assert first["num_frames"] == 6
    entry = page.locator(f"#library-list .item[data-video-id='{first['video_id']}']")
    entry.wait_for()
    with page.expect_response(is_video_call("/v1/video/sessions")) as reopened:
        entry.locator("button.open").click()
    second = reopened.value.json()
    assert reopened.value.request.post_data_json["video"] == {"video_id": first["video_id"]}
    assert second["session_id"] != first["session_id"] and second["video_id"] == first["video_id"]
    page.wait_for_selector(f"{CANVAS}[data-session-id='{second['session_id']}'][data-frame='0']")
    # keyboard: → steps a frame
    page.locator(CANVAS).hover()
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f"{CANVAS}[data-frame='1']")
    listed = httpx.get(f"{app_url}/v1/videos", timeout=30).json()["videos"]
    assert first["video_id"] in [v["video_id"] for v in listed]
    for sid in (first["session_id"], second["session_id"]):
        httpx.delete(f"{app_url}/v1/video/sessions/{sid}", timeout=30)
    screenshot(page, "playground-library")
