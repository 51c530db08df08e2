"""The Image tab in Chromium: concepts, clicks (multimask pick), segment everything, an invalid file.

Each flow drives the page like a user (file input, typing, sliders, mouse clicks on the canvas), takes the API
answer the page got (Playwright sees the same response), decodes its RLE with pycocotools to pick a pixel
inside a returned mask, and checks that the canvas pixel there changed colour once the page drew it.
"""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.e2e.conftest import canvas_pixel, click_canvas, point_inside, scene_png, screenshot

CANVAS = "#image-canvas"


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "street.png"
    path.write_bytes(scene_png())
    return str(path)


def load(page, path: str) -> dict:
    """Choose the file; returns the POST /v1/images answer once the page shows the image."""
    with page.expect_response(lambda r: r.url.endswith("/v1/images") and r.request.method == "POST") as info:
        page.set_input_files("#image-file", path)
    answer = info.value.json()
    page.wait_for_selector(f"{CANVAS}[data-image-id='{answer['image_id']}']")
    return answer


def set_range(page, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(e, v) => { e.value = String(v); e.dispatchEvent(new Event('input')); }", value)


def test_concepts_draw_every_instance(page, scene):
    img = load(page, scene)
    assert (img["width"], img["height"]) == (320, 200)
    assert page.eval_on_selector(CANVAS, "c => [c.width, c.height]") == [320, 200]
    for text in ("car", "person in red"):
        page.fill("#concept-input", text)
        page.press("#concept-input", "Enter")
    assert page.locator("#concept-chips .chip").count() == 2
    set_range(page, "#threshold", 0.0)  # the tiny random model scores ~0.25
    assert page.inner_text("#threshold-out") == "0.00"
    page.fill("#max-instances", "3")
    with page.expect_response(lambda r: r.url.endswith("/v1/pcs/image")) as info:
        page.click("#concept-run")
    answer = info.value.json()
    assert info.value.status == 200
    assert [r["prompt"]["text"] for r in answer["results"]] == ["car", "person in red"]
    first = answer["results"][0]["instances"][0]
    mask = decode(first["mask"])
    assert mask.shape == (200, 320) and mask.sum() == first["area"] > 0
    x, y = point_inside(mask)
    page.wait_for_selector(f"{CANVAS}[data-concept-request-id='{answer['request_id']}']")
    total = sum(len(r["instances"]) for r in answer["results"])
    assert page.locator("#instance-list .item").count() == total
    # the canvas at a pixel inside the first mask is no longer the image's own colour
    after = canvas_pixel(page, CANVAS, x, y)
    # hide every instance covering (x, y) and the boxes: the pixel shows the image itself again
    covering = [i for i, inst in enumerate(i for r in answer["results"] for i in r["instances"])
                if decode(inst["mask"])[y, x]]
    for i in covering:
        page.locator("#instance-list .item .toggle").nth(i).uncheck()
    page.uncheck("#show-boxes")
    plain = canvas_pixel(page, CANVAS, x, y)
    assert after[:3] != plain[:3], (after, plain)
    for i in covering:
        page.locator("#instance-list .item .toggle").nth(i).check()
    page.check("#show-boxes")
    assert canvas_pixel(page, CANVAS, x, y) == after
    # hovering an instance in the list highlights it (its mask drawn stronger)
    page.locator("#instance-list .item").nth(0).hover()
    assert canvas_pixel(page, CANVAS, x, y) != after
    page.mouse.move(0, 0)
    screenshot(page, "playground-concepts")
    # the overlay downloads as a PNG of the image's size
    with page.expect_download() as download:
        page.click("#download-overlay")
    assert download.value.suggested_filename.endswith(".png")


def test_click_mask_appears_where_the_model_put_it(page, scene):
    load(page, scene)
    page.check("#mode-click")
    before = page.eval_on_selector(CANVAS, "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")
    with page.expect_response(lambda r: r.url.endswith("/v1/pvs/image")) as info:
        click_canvas(page, CANVAS, 70, 130)
    body = info.value.request.post_data_json
    assert body["objects"][0]["points"] == [[70, 130]] and body["objects"][0]["point_labels"] == [1]
    answer = info.value.json()
    obj = answer["objects"][0]
    mask = decode(obj["mask"])
    assert mask.sum() == obj["area"]
    page.wait_for_selector(f"{CANVAS}[data-click-request-id='{answer['request_id']}']")
    if mask.any():
        x, y = point_inside(mask)
        before_px = before[(y * 320 + x) * 4:(y * 320 + x) * 4 + 4]
        assert canvas_pixel(page, CANVAS, x, y)[:3] != before_px[:3]
    # a second (negative) click on the same object sends the previous mask_input: refinement
    with page.expect_response(lambda r: r.url.endswith("/v1/pvs/image")) as info:
        click_canvas(page, CANVAS, 250, 60, shift=True)
    refine = info.value.request.post_data_json["objects"][0]
    assert refine["points"] == [[70, 130], [250, 60]] and refine["point_labels"] == [1, 0]
    assert refine["mask_input"] == obj["mask_input"]
    assert info.value.status == 200
    # a box drag starts nothing new but sets the selected object's box
    page.click("#click-new")
    box = page.locator(CANVAS).bounding_box()
    sx = box["width"] / 320
    with page.expect_response(lambda r: r.url.endswith("/v1/pvs/image")) as info:
        page.mouse.move(box["x"] + 180 * sx, box["y"] + 125 * sx)
        page.mouse.down()
        page.mouse.move(box["x"] + 230 * sx, box["y"] + 150 * sx, steps=4)
        page.mouse.move(box["x"] + 280 * sx, box["y"] + 170 * sx, steps=4)
        page.mouse.up()
    sent = info.value.request.post_data_json["objects"][0]
    assert "points" not in sent and sent["box"][0] == pytest.approx(180, abs=2) and sent["box"][3] == pytest.approx(170, abs=2)
    page.wait_for_function("() => document.querySelectorAll('#instance-list .item').length === 2")
    screenshot(page, "playground-clicks")


def test_multimask_candidates_can_be_picked(page, scene):
    load(page, scene)
    page.check("#mode-click")
    page.check("#multimask")
    with page.expect_response(lambda r: r.url.endswith("/v1/pvs/image")) as info:
        click_canvas(page, CANVAS, 150, 100)
    assert info.value.request.post_data_json["multimask_output"] is True
    answer = info.value.json()
    cands = answer["objects"][0]["candidates"]
    assert len(cands) == 3
    page.wait_for_selector("#candidates .candidate >> nth=2")
    assert page.get_attribute("#candidates .candidate >> nth=0", "aria-pressed") == "true"
    first, second = decode(cands[0]["mask"]), decode(cands[1]["mask"])
    page.uncheck("#show-boxes")
    page.click("#candidates .candidate >> nth=1")
    assert page.get_attribute("#candidates .candidate >> nth=1", "aria-pressed") == "true"
    assert page.get_attribute("#candidates .candidate >> nth=0", "aria-pressed") == "false"
    only_second = second & ~first
    if only_second.any():  # a pixel only the picked candidate covers is now drawn as mask
        x, y = point_inside(only_second)
        page.click("#candidates .candidate >> nth=0")
        with_first = canvas_pixel(page, CANVAS, x, y)
        page.click("#candidates .candidate >> nth=1")
        assert canvas_pixel(page, CANVAS, x, y) != with_first
    # the next click refines from the picked candidate's mask_input
    with page.expect_response(lambda r: r.url.endswith("/v1/pvs/image")) as info:
        click_canvas(page, CANVAS, 160, 90)
    assert info.value.request.post_data_json["objects"][0]["mask_input"] == cands[1]["mask_input"]
    page.check("#show-boxes")
    screenshot(page, "playground-multimask")


def test_segment_everything(page, scene):
    load(page, scene)
    page.keyboard.press("a")  # the shortcut switches to automatic mode
    assert page.is_checked("#mode-auto")
    set_range(page, "#auto-iou", 0.0)
    set_range(page, "#auto-stability", 0.0)
    page.fill("#auto-pps", "4")
    with page.expect_response(lambda r: r.url.endswith("/v1/auto/image")) as info:
        page.click("#auto-run")
    sent = info.value.request.post_data_json
    assert sent["points_per_side"] == 4 and sent["pred_iou_thresh"] == 0 and sent["stability_score_thresh"] == 0
    answer = info.value.json()
    assert info.value.status == 200 and answer["masks"]
    page.wait_for_selector(f"{CANVAS}[data-auto-request-id='{answer['request_id']}']")
    assert page.locator("#instance-list .item").count() == len(answer["masks"])
    page.uncheck("#show-boxes")
    biggest = decode(answer["masks"][0]["mask"])  # sort_by area: the first is the largest
    x, y = point_inside(biggest)
    shown = canvas_pixel(page, CANVAS, x, y)
    for toggle in page.locator("#instance-list .item .toggle").all():
        toggle.uncheck()
    assert canvas_pixel(page, CANVAS, x, y) != shown
    for toggle in page.locator("#instance-list .item .toggle").all():
        toggle.check()
    page.check("#show-boxes")
    screenshot(page, "playground-everything")


def test_invalid_file_shows_code_and_request_id(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image at all")
    with page.expect_response(lambda r: r.url.endswith("/v1/images")) as info:
        page.set_input_files("#image-file", str(bad))
    assert info.value.status == 400
    error = info.value.json()["error"]
    page.wait_for_selector("#error-panel:not([hidden])")
    assert page.inner_text("#error-code") == error["code"]
    assert page.inner_text("#error-request-id") == error["request_id"] == info.value.headers["x-request-id"]
    assert "400" in page.inner_text("#error-status")
    screenshot(page, "playground-error")
    page.keyboard.press("Escape")
    assert page.is_hidden("#error-panel")
    page.console_log.expect(400)


def test_narrow_window_stacks_the_panels(page, scene):
    page.set_viewport_size({"width": 420, "height": 800})
    load(page, scene)
    # no horizontal scrolling: the side panel stacks above the image, the canvas fits the width
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 420
    side, stage = page.locator("#tab-image .side").bounding_box(), page.locator(CANVAS).bounding_box()
    assert stage["y"] >= side["y"] + side["height"] - 1 and stage["x"] + stage["width"] <= 420
    page.keyboard.press("?")
    assert page.is_visible("#help-dialog")
    screenshot(page, "playground-narrow")
    page.keyboard.press("Escape")


def test_rle_decoding_in_the_browser_matches_pycocotools(page):
    """rle.js (pycocotools' rleFrString, column-major) against pycocotools itself, with long runs (several 5-bit
    groups per count) and negative differences."""
    rng = np.random.RandomState(7)
    mask = np.zeros((300, 517), np.uint8, order="F")
    mask[20:280, 30:480] = 1
    mask[100:120, :] = 0
    mask[rng.rand(300, 517) > 0.995] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    wire = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
    area, box, ones = page.evaluate("""async (rle) => {
        const { decodeRle } = await import('./rle.js');
        const m = decodeRle(rle);
        const ones = [];
        for (let i = 0; i < m.data.length; i += 1) if (m.data[i]) ones.push(i);
        return [m.area, m.box, ones];
    }""", wire)
    assert area == int(mask.sum())
    assert ones == np.flatnonzero(mask.reshape(-1)).tolist()  # row-major: y * width + x
    ys, xs = np.nonzero(mask)
    assert box == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
