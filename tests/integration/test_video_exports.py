"""Dataset exports of video sessions over real Serve HTTP (POST /v1/video/sessions/{sid}/exports -> a
video_export job -> a ZIP streamed to SeaweedFS): every format checked against the session's own stored masks
(GET .../masks), scopes, merge groups, hostile names, auto-propagation, and the 4xx of bad requests.
Tiny checkpoint (random weights): asserts formats, ids and equalities, never mask quality."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import av
import cv2
import httpx
import numpy as np
import pytest
from pycocotools.coco import COCO

from serve_app.codecs.masks import decode_rle
from tests.helpers import wait_for
from tests.integration.test_video_http import create, prompt, propagate
from tests.videos import make_video

N_FRAMES, H, W, FPS = 12, 48, 64, 8.0
ALL_FORMATS = ["coco_instance", "yolo_segmentation", "binary_masks_png", "overlay_mp4"]


@pytest.fixture(scope="module")
def client(serve_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    make_video(str(path), n=N_FRAMES, h=H, w=W, fps=FPS)
    return path.read_bytes()


@pytest.fixture(scope="module")
def tracked(client, video_file) -> dict:
    """A session with a text prompt propagated over every frame: {sid, masks: {frame: {obj_id: bool (H,W)}}}."""
    s = create(client, video_file)
    sid = s["session_id"]
    prompt(client, sid, {"frame_index": 0, "text": "shape"})
    messages = propagate(client, sid, direction="forward")
    assert messages[-1]["type"] == "done" and messages[-1]["stored"] == N_FRAMES
    stored = client.get(f"/v1/video/sessions/{sid}/masks").json()
    assert stored["missing"] == []
    masks = {f["frame_index"]: {o["id"]: decode_rle(o["mask"]) for o in f["objects"]} for f in stored["frames"]}
    assert any(masks.values()), "the tiny tracker must see objects (tests/conftest.py tiny_video_model_dir)"
    return {"sid": sid, "masks": masks, "video_id": s["video_id"]}


def export(client: httpx.Client, sid: str, body: dict) -> tuple[dict, zipfile.ZipFile]:
    """POST the export, wait for its job, download the ZIP: (final job view, the archive)."""
    r = client.post(f"/v1/video/sessions/{sid}/exports", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "video_export" and r.headers["Location"] == f"/v1/jobs/{job['job_id']}"
    done = wait_for(lambda: (v := client.get(f"/v1/jobs/{job['job_id']}").json())["status"]
                    in ("succeeded", "failed") and v, 120, "the export job")
    assert done["status"] == "succeeded", done
    data = httpx.get(done["export_url"], timeout=60).content
    return done, zipfile.ZipFile(io.BytesIO(data))


def object_ids(masks: dict) -> list[int]:
    return sorted({i for frame in masks.values() for i in frame})


def test_every_format_equals_the_sessions_masks(client, tracked, tmp_path):
    sid, masks = tracked["sid"], tracked["masks"]
    first = object_ids(masks)[0]
    done, zf = export(client, sid, {"formats": ALL_FORMATS, "include_images": True,
                                    "object_meta": [{"obj_id": first, "class_name": "ball", "instance_name": "Ball 1"}]})
    assert done["progress"] == {"done": N_FRAMES, "total": N_FRAMES, "unit": "frames_exported"}
    names = zf.namelist()
    assert all(n.startswith("export/") and ".." not in n.split("/") for n in names)
    manifest = json.loads(zf.read("export/manifest.json"))
    assert manifest["frames"] == {"start": 0, "end": N_FRAMES - 1, "count": N_FRAMES}
    units = {u["obj_ids"][0]: u for u in manifest["units"]}
    assert sorted(units) == object_ids(masks)
    assert units[first]["class_name"] == "ball" and units[first]["instance_name"] == "Ball 1"

    # COCO: loads in pycocotools; every annotation's mask is the session's mask of that object on that frame
    path = tmp_path / "instances.json"
    path.write_bytes(zf.read("export/annotations/instances.json"))
    coco = COCO(str(path))
    assert len(coco.imgs) == N_FRAMES
    seen = set()
    for ann in coco.dataset["annotations"]:
        frame = coco.imgs[ann["image_id"]]["frame_index"]
        obj = units_by_track(manifest)[ann["track_id"]]
        assert np.array_equal(coco.annToMask(ann).astype(bool), masks[frame][obj])
        assert coco.cats[ann["category_id"]]["name"] == units[obj]["class_name"]
        seen.add((frame, obj))
    assert seen == {(f, o) for f, objs in masks.items() for o, m in objs.items() if m.any()}

    # PNG masks: one per object per frame, equal (all-zero where the object is absent)
    for obj, unit in units.items():
        for frame in range(N_FRAMES):
            png = cv2.imdecode(np.frombuffer(zf.read(f"export/masks/{unit['file_stem']}/{frame:06d}.png"), np.uint8),
                               cv2.IMREAD_UNCHANGED)
            expected = masks[frame].get(obj, np.zeros((H, W), bool))
            assert np.array_equal(png > 0, expected), (obj, frame)

    # YOLO: a label file per frame, classes.txt in class order
    classes = zf.read("export/classes.txt").decode().splitlines()
    assert sorted(classes) == classes and "ball" in classes
    for frame in range(N_FRAMES):
        for line in zf.read(f"export/labels/{frame:06d}.txt").decode().splitlines():
            cls, *coords = line.split()
            assert 0 <= int(cls) < len(classes) and len(coords) >= 6 and len(coords) % 2 == 0
            assert all(0.0 <= float(c) <= 1.0 for c in coords)

    # images: the session's stored frames, byte for byte; overlay: an H.264 video of every frame
    for frame in (0, N_FRAMES - 1):
        assert zf.read(f"export/images/{frame:06d}.jpg") == client.get(f"/v1/video/sessions/{sid}/frames/{frame}").content
    with av.open(io.BytesIO(zf.read("export/overlay.mp4"))) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == N_FRAMES and decoded[0].shape == (H, W, 3)


def units_by_track(manifest: dict) -> dict[int, int]:
    """COCO track_id (= unit_id) -> the object id of a single-object unit."""
    return {u["unit_id"]: u["obj_ids"][0] for u in manifest["units"]}


def test_scope_and_merge_group(client, tracked):
    sid, masks = tracked["sid"], tracked["masks"]
    ids = object_ids({i: masks[i] for i in range(3, 8)})  # merge groups may only name objects of the scope
    assert ids
    _, zf = export(client, sid, {"formats": ["binary_masks_png", "coco_instance"], "scope": {"frame_start": 3, "frame_end": 7},
                                 "merge": {"mode": "group", "groups": [{"name": "../all shapes", "obj_ids": ids}]}})
    manifest = json.loads(zf.read("export/manifest.json"))
    assert manifest["frames"] == {"start": 3, "end": 7, "count": 5}
    (unit,) = manifest["units"]
    assert unit["obj_ids"] == ids and unit["instance_name"] == "../all shapes"
    assert "/" not in unit["file_stem"] and ".." not in unit["file_stem"]
    pngs = sorted(n for n in zf.namelist() if n.endswith(".png"))
    assert pngs == [f"export/masks/{unit['file_stem']}/{i:06d}.png" for i in range(3, 8)]
    for i in range(3, 8):
        union = np.zeros((H, W), bool)
        for m in masks[i].values():
            union |= m
        png = cv2.imdecode(np.frombuffer(zf.read(f"export/masks/{unit['file_stem']}/{i:06d}.png"), np.uint8), 0)
        assert np.array_equal(png > 0, union)
    coco = json.loads(zf.read("export/annotations/instances.json"))
    assert sorted(img["frame_index"] for img in coco["images"]) == list(range(3, 8))
    assert {a["track_id"] for a in coco["annotations"]} <= {unit["unit_id"]}


def test_incomplete_session_is_409_unless_auto_propagated(client, video_file):
    sid = create(client, video_file)["session_id"]
    prompt(client, sid, {"frame_index": 0, "text": "shape"})  # frame 0 stored; 1.. not yet
    r = client.post(f"/v1/video/sessions/{sid}/exports", json={"formats": ["coco_instance"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_incomplete", r.text
    done, zf = export(client, sid, {"formats": ["coco_instance"], "auto_propagate_if_incomplete": True})
    assert json.loads(zf.read("export/manifest.json"))["frames"]["count"] == N_FRAMES
    assert client.get(f"/v1/video/sessions/{sid}/masks").json()["missing"] == []
    assert client.delete(f"/v1/video/sessions/{sid}").status_code == 204


@pytest.mark.parametrize("body,status,code", [
    ({"formats": ["coco_instance", "pascal_voc"]}, 400, "unknown_export_format"),
    ({"formats": []}, 422, "validation_error"),
    ({"formats": ["coco_instance"], "scope": {"frame_start": 5, "frame_end": 2}}, 400, "invalid_frame_range"),
    ({"formats": ["coco_instance"], "scope": {"frame_start": 0, "frame_end": N_FRAMES}}, 400, "invalid_frame_range"),
    ({"formats": ["coco_instance"], "merge": {"mode": "group", "groups": [{"name": "g", "obj_ids": [999]}]}},
     400, "unknown_merge_object"),
    ({"formats": ["coco_instance"], "merge": {"groups": [{"name": "g", "obj_ids": [0]}]}}, 400, "invalid_merge_groups"),
])
def test_bad_export_requests(client, tracked, body, status, code):
    r = client.post(f"/v1/video/sessions/{tracked['sid']}/exports", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["request_id"]


def test_export_of_unknown_session_is_404(client):
    r = client.post("/v1/video/sessions/nosuchsession/exports", json={"formats": ["coco_instance"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", r.text
