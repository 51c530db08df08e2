"""Video sessions over real Serve HTTP: ingest (PyAV), text and click prompts, NDJSON and WebSocket
propagation, cancellation, remove/reset, playback from storage, rebuild after the actor is killed, parking,
and bad inputs. Tiny checkpoint with a tracker that "sees" objects (tests/conftest.py tiny_video_model_dir)
and detection thresholds of 0, so text and clicks produce objects. Asserts formats, ids, frame coverage and
equalities, never mask quality."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import ray

from serve_app.codecs.masks import decode_rle
from tests.helpers import wait_for
from tests.videos import make_video

N_FRAMES, H, W, FPS = 16, 48, 64, 8.0


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    make_video(str(path), n=N_FRAMES, h=H, w=W, fps=FPS)
    return path.read_bytes()


@pytest.fixture(scope="module")
def long_video_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "long.mp4"
    make_video(str(path), n=96, h=H, w=W, fps=24.0)
    return path.read_bytes()


@pytest.fixture(scope="module")
def client(serve_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def manager():
    from ray import serve

    return serve.get_deployment_handle("SessionManager", app_name="sam3")


def create(client: httpx.Client, data: bytes, **form) -> dict:
    r = client.post("/v1/video/sessions", files={"video": ("v.mp4", data, "video/mp4")},
                    data={k: str(v) for k, v in form.items()})
    assert r.status_code == 201, r.text
    return r.json()


def prompt(client: httpx.Client, sid: str, body: dict, expect: int = 200) -> dict:
    """POST .../prompts, retrying while the session's actor is still starting (409 session_starting)."""
    def attempt():
        r = client.post(f"/v1/video/sessions/{sid}/prompts", json=body)
        if r.status_code == 409 and r.json()["error"]["code"] == "session_starting":
            assert r.headers["Retry-After"]
            return None
        return r
    r = wait_for(attempt, 120, "the session actor to start", interval_s=0.5)
    assert r.status_code == expect, r.text
    return r.json()


def propagate(client: httpx.Client, sid: str, **body) -> list[dict]:
    with client.stream("POST", f"/v1/video/sessions/{sid}/propagate", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def actor_of(manager, sid: str):
    owners = manager.debug_pool.remote().result()["owners"]
    name, _ = owners[sid]
    return ray.get_actor(name, namespace="sam3-video")


def check_frame(frame: dict) -> None:
    assert isinstance(frame["frame_index"], int)
    for obj in frame["objects"]:
        mask = decode_rle(obj["mask"])
        assert mask.shape == (H, W) and mask.sum() == obj["area"] > 0
        x0, y0, x1, y1 = obj["box"]
        assert 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H


def masks_by_frame(frames: list[dict]) -> dict[int, dict[int, str]]:
    return {f["frame_index"]: {o["id"]: o["mask"]["counts"] for o in f["objects"]} for f in frames}


def test_create_from_multipart_and_play_frames(client, video_file):
    s = create(client, video_file)
    assert s["state"] == "ready" and s["num_frames"] == N_FRAMES
    assert (s["width"], s["height"]) == (W, H) and s["fps"] == pytest.approx(FPS) and s["source_fps"] == pytest.approx(FPS)
    assert len(s["video_id"]) == 64
    r = client.get(f"/v1/video/sessions/{s['session_id']}/frames/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    import cv2

    frame = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (H, W, 3)
    listed = client.get("/v1/video/sessions").json()["sessions"]
    assert s["session_id"] in [x["session_id"] for x in listed]
    # the stored video is reusable by id, with options
    again = client.post("/v1/video/sessions", json={"video": {"video_id": s["video_id"]}, "max_frames": 5})
    assert again.status_code == 201, again.text
    assert again.json()["num_frames"] == 5 and again.json()["video_id"] == s["video_id"]
    for sid in (s["session_id"], again.json()["session_id"]):
        assert client.delete(f"/v1/video/sessions/{sid}").status_code == 204
    assert client.get(f"/v1/video/sessions/{s['session_id']}").status_code == 404


def test_create_from_upload_id(client, video_file):
    up = client.post("/v1/uploads", json={"content_type": "video/mp4", "content_length": len(video_file)}).json()
    put = httpx.put(up["url"], content=video_file, headers=up["headers"], timeout=60)
    assert put.status_code == 200, put.text
    r = client.post("/v1/video/sessions", json={"video": {"upload_id": up["upload_id"]}, "fps": 4})
    assert r.status_code == 201, r.text
    assert r.json()["fps"] == pytest.approx(4.0) and r.json()["num_frames"] == N_FRAMES // 2
    client.delete(f"/v1/video/sessions/{r.json()['session_id']}")


def test_create_from_s3_url_and_a_rotated_vfr_webm(client, seaweedfs, tmp_path):
    """An s3:// object of an allowed bucket; display rotation applied (width/height swap) and a variable frame
    rate kept: frames are picked by timestamp at the processing fps."""
    from tests.fixtures import s3

    path = tmp_path / "rotated.webm"
    pts = [0, 100, 150, 400, 500, 650, 900, 1000]  # ms: irregular gaps (VFR), 1 s long
    make_video(str(path), n=len(pts), h=H, w=W, codec="libvpx-vp9", rotation=90, pts=pts)
    seaweedfs.client().put_object(Bucket=s3.INPUT_BUCKET, Key="inputs/rotated.webm", Body=path.read_bytes())
    r = client.post("/v1/video/sessions", json={"video": {"url": f"s3://{s3.INPUT_BUCKET}/inputs/rotated.webm"},
                                                "fps": 10})
    assert r.status_code == 201, r.text
    s = r.json()
    assert (s["width"], s["height"]) == (H, W)  # rotated by 90 degrees for display
    assert s["fps"] == pytest.approx(10.0) and s["num_frames"] == 11  # 0.0, 0.1, ..., 1.0 s
    frame = client.get(f"/v1/video/sessions/{s['session_id']}/frames/0")
    import cv2

    assert cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR).shape == (W, H, 3)
    client.delete(f"/v1/video/sessions/{s['session_id']}")


def test_text_prompt_then_propagate_both_covers_every_frame_once(client, video_file):
    sid = create(client, video_file)["session_id"]
    first = prompt(client, sid, {"frame_index": 5, "text": "red disc"})
    assert first["frame_index"] == 5 and first["objects"], first
    ids = {o["id"] for o in first["objects"]}
    assert set(first["prompt_to_obj_ids"]["red disc"]) == ids
    check_frame(first)
    lines = propagate(client, sid, direction="both", start_frame_index=5)
    frames, end = lines[:-1], lines[-1]
    assert end["type"] == "done" and end["progress"] == {"done": N_FRAMES, "total": N_FRAMES}
    assert end["stored"] == N_FRAMES  # every streamed frame is in storage before "done" is sent
    order = [f["frame_index"] for f in frames]
    assert order == list(range(5, N_FRAMES)) + list(range(4, -1, -1))  # forward from 5, then backward
    assert [f["progress"]["done"] for f in frames] == list(range(1, N_FRAMES + 1))
    for f in frames:
        assert f["type"] == "frame"
        check_frame(f)
        assert {o["id"] for o in f["objects"]} <= ids  # ids stable: no new objects appear
    stored = client.get(f"/v1/video/sessions/{sid}/masks", params={"frame_start": 0}).json()
    assert stored["missing"] == [] and [f["frame_index"] for f in stored["frames"]] == list(range(N_FRAMES))
    assert masks_by_frame(stored["frames"]) == masks_by_frame(frames)  # playback = what was streamed
    # a click on a text-detected object refines that object (same id)
    target = min(ids)
    refined = prompt(client, sid, {"frame_index": 9, "objects": [{"obj_id": target, "points": [[10, 10]],
                                                                   "point_labels": [0]}]})
    assert refined["prompted_obj_ids"] == [target] and {o["id"] for o in refined["objects"]} <= ids
    client.delete(f"/v1/video/sessions/{sid}")


def test_clicks_refinement_survives_repropagation_remove_and_reset(client, video_file):
    sid = create(client, video_file)["session_id"]
    out = prompt(client, sid, {"frame_index": 0, "objects": [
        {"obj_id": 1, "points": [[20, 20]], "point_labels": [1]},
        {"obj_id": 2, "box": [40, 4, 60, 20]}]})
    assert out["prompted_obj_ids"] == [1, 2] and {o["id"] for o in out["objects"]} == {1, 2}
    by_mask = prompt(client, sid, {"frame_index": 0, "objects": [{"obj_id": 3, "mask": out["objects"][0]["mask"]}]})
    assert by_mask["prompted_obj_ids"] == [3] and 3 in {o["id"] for o in by_mask["objects"]}
    propagate(client, sid, direction="forward", start_frame_index=0)
    refined = prompt(client, sid, {"frame_index": 8, "objects": [{"obj_id": 1, "points": [[30, 24], [5, 5]],
                                                                    "point_labels": [1, 0]}]})
    assert refined["prompted_obj_ids"] == [1]
    after_click = masks_by_frame([refined])[8]
    lines = propagate(client, sid, direction="forward", start_frame_index=0)
    assert lines[-1]["type"] == "done"
    assert masks_by_frame(lines[:-1])[8][1] == after_click[1]  # the correction is a conditioning frame
    r = client.delete(f"/v1/video/sessions/{sid}/objects/2")
    assert r.status_code == 200 and r.json()["session_id"] == sid
    lines = propagate(client, sid, direction="forward", start_frame_index=0)
    assert all(2 not in {o["id"] for o in f["objects"]} for f in lines[:-1])
    stored = client.get(f"/v1/video/sessions/{sid}/masks", params={"frame_start": 0, "frame_end": 3}).json()
    assert all(2 not in {o["id"] for o in f["objects"]} for f in stored["frames"])
    missing = client.delete(f"/v1/video/sessions/{sid}/objects/2")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "object_not_found"
    assert client.post(f"/v1/video/sessions/{sid}/reset").status_code == 200
    stored = client.get(f"/v1/video/sessions/{sid}/masks").json()
    assert stored["frames"] == [] and stored["missing"] == list(range(N_FRAMES))
    lines = propagate(client, sid, direction="forward", start_frame_index=0)
    assert all(f["objects"] == [] for f in lines[:-1])  # no prompts, no objects
    client.delete(f"/v1/video/sessions/{sid}")


def test_a_second_propagate_cancels_the_first(client, long_video_file, manager):
    sid = create(client, long_video_file)["session_id"]
    prompt(client, sid, {"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    actor = actor_of(manager, sid)
    before = ray.get(actor.describe.remote())["counters"]
    with client.stream("POST", f"/v1/video/sessions/{sid}/propagate", json={"direction": "forward"}) as first:
        lines = first.iter_lines()
        assert json.loads(next(lines))["type"] == "frame"
        second = propagate(client, sid, direction="forward", start_frame_index=0)
        rest = [json.loads(x) for x in lines if x]
    assert rest[-1]["type"] == "cancelled" and rest[-1]["progress"]["done"] < 96
    assert second[-1]["type"] == "done" and second[-1]["progress"]["done"] == 96
    after = ray.get(actor.describe.remote())["counters"]
    assert after["cancelled"] - before["cancelled"] == 1 and after["propagations"] - before["propagations"] == 2
    client.delete(f"/v1/video/sessions/{sid}")


def test_client_disconnect_stops_the_gpu_work(client, long_video_file, manager):
    sid = create(client, long_video_file)["session_id"]
    prompt(client, sid, {"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    actor = actor_of(manager, sid)
    before = ray.get(actor.describe.remote())["counters"]
    with client.stream("POST", f"/v1/video/sessions/{sid}/propagate", json={"direction": "forward"}) as r:
        assert json.loads(next(r.iter_lines()))["type"] == "frame"
    # the response is closed: the actor stops at its next frame (counted as cancelled, not all 96 frames)
    after = wait_for(lambda: (c := ray.get(actor.describe.remote())["counters"])["cancelled"] > before["cancelled"]
                     and c, 60, "the propagation to stop")
    assert after["frames_streamed"] - before["frames_streamed"] < 96
    client.delete(f"/v1/video/sessions/{sid}")


def test_websocket_streams_and_cancels(serve_url, client, long_video_file):
    from websockets.sync.client import connect

    sid = create(client, long_video_file)["session_id"]
    prompt(client, sid, {"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    with connect(serve_url.replace("http", "ws") + f"/v1/video/sessions/{sid}/ws") as ws:
        ws.send("not json")
        assert json.loads(ws.recv())["error"]["code"] == "malformed_json"
        ws.send(json.dumps({"action": "jump"}))
        assert json.loads(ws.recv())["error"]["code"] == "invalid_action"
        ws.send(json.dumps({"action": "start", "direction": "sideways"}))
        assert json.loads(ws.recv())["error"]["code"] == "validation_error"
        ws.send(json.dumps({"action": "start", "direction": "forward", "start_frame_index": 0, "max_frames": 3}))
        msgs = [json.loads(ws.recv()) for _ in range(5)]
        assert [m["event"] for m in msgs] == ["propagation_frame"] * 4 + ["propagation_done"]
        assert [m["frame_index"] for m in msgs[:4]] == [0, 1, 2, 3]
        ws.send(json.dumps({"action": "start", "direction": "forward"}))
        assert json.loads(ws.recv())["type"] == "frame"
        ws.send(json.dumps({"action": "cancel"}))
        while (m := json.loads(ws.recv()))["type"] == "frame":
            pass
        assert m["event"] == "propagation_cancelled" and m["progress"]["done"] < 96
    client.delete(f"/v1/video/sessions/{sid}")


def _ops(client, sid):
    prompt(client, sid, {"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]},
                                                       {"obj_id": 2, "box": [40, 4, 60, 20]}]})
    propagate(client, sid, direction="forward", start_frame_index=0)
    prompt(client, sid, {"frame_index": 6, "objects": [{"obj_id": 1, "points": [[28, 20], [2, 2]],
                                                        "point_labels": [1, 0]}]})


def test_killed_actor_is_rebuilt_and_matches_an_uninterrupted_session(client, video_file, manager):
    """Two sessions on the same video get the same operations; one's actor is killed midway. The next
    request rebuilds it (checkpoint + journal) and every later result equals the uninterrupted one's."""
    killed, steady = create(client, video_file)["session_id"], create(client, video_file)["session_id"]
    for sid in (killed, steady):
        _ops(client, sid)
    ray.kill(actor_of(manager, killed))
    r = client.post(f"/v1/video/sessions/{killed}/prompts",
                    json={"frame_index": 10, "objects": [{"obj_id": 2, "points": [[50, 30]]}]})
    if r.status_code == 409:  # the rebuild outlasted video.start_timeout_s
        r = None
    body = r.json() if r is not None else prompt(client, killed, {"frame_index": 10,
                                                                 "objects": [{"obj_id": 2, "points": [[50, 30]]}]})
    assert body["rebuilt"] is True
    if r is not None:
        assert r.headers["x-session-rebuilt"] == "1"
    reference = prompt(client, steady, {"frame_index": 10, "objects": [{"obj_id": 2, "points": [[50, 30]]}]})
    assert masks_by_frame([body]) == masks_by_frame([reference])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # two sessions propagating at once stay independent
        a, b = pool.map(lambda sid: propagate(client, sid, direction="both", start_frame_index=10), (killed, steady))
    assert a[-1]["type"] == b[-1]["type"] == "done"
    assert masks_by_frame(a[:-1]) == masks_by_frame(b[:-1])
    for sid in (killed, steady):
        client.delete(f"/v1/video/sessions/{sid}")


def test_parked_session_is_revived_by_its_next_request(client, video_file, manager):
    sid = create(client, video_file)["session_id"]
    first = prompt(client, sid, {"frame_index": 2, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    assert manager.park.remote(sid).result() is True
    assert client.get(f"/v1/video/sessions/{sid}").json()["state"] == "parked"
    assert sid not in manager.debug_pool.remote().result()["owners"]
    again = prompt(client, sid, {"frame_index": 2, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    assert again["rebuilt"] is True and {o["id"] for o in again["objects"]} == {o["id"] for o in first["objects"]}
    assert client.get(f"/v1/video/sessions/{sid}").json()["state"] == "ready"
    client.delete(f"/v1/video/sessions/{sid}")


@pytest.mark.parametrize("make_body,status,code", [
    (lambda v: {"files": {"video": ("v.mp4", b"\x00" * 4096, "video/mp4")}}, 400, "invalid_video"),
    (lambda v: {"files": {"video": ("v.mp4", v, "video/mp4")}, "data": {"max_frames": "100000"}}, 400,
     "max_frames_too_large"),
    (lambda v: {"json": {"video": {"video_id": "0" * 64}}}, 404, "video_not_found"),
    (lambda v: {"json": {"video": {"upload_id": "nope"}}}, 404, "upload_not_found"),
    (lambda v: {"json": {"video": {"url": "s3://not-allowed/x.mp4"}}}, 400, "url_not_allowed"),
    (lambda v: {"json": {"video": {}}}, 422, "validation_error"),
    (lambda v: {"files": {"file": ("v.mp4", v, "video/mp4")}}, 400, "missing_video"),
    (lambda v: {"files": {"video": ("v.mp4", v + b"\x00" * 2_000_000, "video/mp4")}}, 413, "video_too_large"),
])
def test_bad_session_creation(client, video_file, make_body, status, code):
    r = client.post("/v1/video/sessions", **make_body(video_file), headers={"x-request-id": "bad-create"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["request_id"] == "bad-create"


def test_bad_requests_on_a_session(client, video_file):
    sid = create(client, video_file)["session_id"]
    cases = [
        ("POST", f"/v1/video/sessions/{sid}/prompts", {"frame_index": N_FRAMES, "text": "x"}, 400,
         "frame_out_of_range"),
        ("POST", f"/v1/video/sessions/{sid}/prompts", {"frame_index": 0, "objects": [{"points": [[W + 5, 3]]}]},
         400, "point_outside_image"),
        ("POST", f"/v1/video/sessions/{sid}/prompts", {"frame_index": 0, "text": "  "}, 400, "empty_text"),
        ("POST", f"/v1/video/sessions/{sid}/prompts", {"frame_index": 0, "text": "a", "objects": [{"box": [1, 1, 2, 2]}]},
         422, "validation_error"),
        ("POST", f"/v1/video/sessions/{sid}/prompts", {"frame_index": 0, "objects": [{}]}, 400, "empty_object"),
        ("POST", f"/v1/video/sessions/{sid}/propagate", {"start_frame_index": 999}, 400, "frame_out_of_range"),
        ("POST", f"/v1/video/sessions/{sid}/propagate", {"direction": "up"}, 422, "validation_error"),
        ("GET", f"/v1/video/sessions/{sid}/frames/{N_FRAMES}", None, 400, "frame_out_of_range"),
        ("GET", f"/v1/video/sessions/{sid}/masks?frame_start=5&frame_end=2", None, 400, "invalid_frame_range"),
        ("DELETE", f"/v1/video/sessions/{sid}/objects/77", None, 404, "object_not_found"),
        ("POST", f"/v1/video/sessions/{sid}/prompts",  # video.limits.max_objects is 4 in tests/conftest.py
         {"frame_index": 0, "objects": [{"obj_id": i, "points": [[5 + 5 * i, 5]]} for i in range(5)]}, 400,
         "too_many_objects"),
        ("GET", "/v1/video/sessions/nope", None, 404, "session_not_found"),
        ("GET", "/v1/video/sessions/bad%20id", None, 400, "invalid_session_id"),
        ("POST", "/v1/video/sessions/nope/prompts", {"frame_index": 0, "text": "x"}, 404, "session_not_found"),
    ]
    for method, path, body, status, code in cases:
        if method == "DELETE":  # needs the actor: may be starting on a busy machine
            r = wait_for(lambda: (x := client.request(method, path)).status_code != 409 and x, 120, "actor start")
        else:
            r = client.request(method, path, json=body)
            if r.status_code == 409:
                r = wait_for(lambda: (x := client.request(method, path, json=body)).status_code != 409 and x, 120,
                             "actor start")
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, body, r.text)
        assert r.json()["error"]["request_id"]
    # the session still works after all of that
    assert prompt(client, sid, {"frame_index": 0, "text": "blue square"})["objects"]
    client.delete(f"/v1/video/sessions/{sid}")


def test_reaper_parks_idle_sessions_and_deletes_expired_ones(client, video_file, manager, app_storage):
    """Idle past video.idle_ttl_s -> parked (actor freed); parked past video.retention_s -> deleted with its
    artifacts. The clock is moved by rewriting last_used_at in the stored record (no sleeps)."""
    from datetime import timedelta

    from serve_app.sessions.records import SessionStore
    from serve_app.storage import keys, open_store

    sid = create(client, video_file)["session_id"]
    prompt(client, sid, {"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
    store = open_store(app_storage)
    records = SessionStore(store, "default")

    def age(seconds: float):
        def fn(r):
            r.last_used_at = r.last_used_at - timedelta(seconds=seconds)
            return r
        records.mutate(sid, fn)

    age(900 + 60)  # past the default idle_ttl_s
    assert sid in manager.reap.remote().result()["parked"]
    assert client.get(f"/v1/video/sessions/{sid}").json()["state"] == "parked"
    assert store.list(keys.session_prefix("default", sid) + "checkpoints/")  # parked with a checkpoint
    age(7 * 24 * 3600)  # past the default retention_s
    assert sid in manager.reap.remote().result()["deleted"]
    assert client.get(f"/v1/video/sessions/{sid}").status_code == 404
    assert store.list(keys.session_prefix("default", sid)) == []
