"""The media library over real Serve HTTP (tests/conftest.py `serve_url`, SeaweedFS storage): /v1/videos (upload by
multipart or upload_id, content-addressed dedupe, probe facts, newest-first paging, rename, delete guarded by live
sessions), /v1/images listing and deletion, and /v1/storage/usage. Asserts ids, codes, sizes and probe facts.

Videos here are made with sizes/frame counts no other test module uses, so their ids are new to the session's
storage even when modules share it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import png_bytes
from tests.videos import make_video, write_audio_only

H, W = 40, 72  # a frame size of this module only


def _video(tmp: Path, name: str, n: int, fps: float) -> bytes:
    path = tmp / name
    make_video(str(path), n=n, h=H, w=W, fps=fps)
    return path.read_bytes()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("library")
    return {"a": _video(tmp, "a.mp4", 7, 7.0), "b": _video(tmp, "b.mp4", 9, 9.0), "c": _video(tmp, "c.mp4", 5, 5.0),
            "d": _video(tmp, "d.mp4", 6, 6.0), "e": _video(tmp, "e.mp4", 11, 11.0), "f": _video(tmp, "f.mp4", 4, 4.0)}


@pytest.fixture(scope="module")
def client(serve_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(client: httpx.Client, data: bytes, filename: str = "clip.mp4", expect: int = 201, **form) -> dict:
    r = client.post("/v1/videos", files={"video": (filename, data, "video/mp4")}, data=form)
    assert r.status_code == expect, r.text
    return r.json()


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


def test_upload_probes_stores_and_dedupes(client, videos):
    data = videos["a"]
    entry = upload(client, data, filename="my\u200b clip.mp4")
    assert entry["video_id"] == sha(data) and entry["size_bytes"] == len(data)
    assert entry["name"] == "my clip.mp4"  # the file name, printable characters only
    assert (entry["width"], entry["height"]) == (W, H)
    assert entry["fps"] == pytest.approx(7.0) and entry["duration_s"] == pytest.approx(1.0)
    assert entry["num_frames"] == 7 and entry["codec"] == "h264" and entry["created_at"].endswith("+00:00")
    assert client.get(f"/v1/videos/{entry['video_id']}").json() == entry
    # same bytes again: the same entry (200), original name and created_at kept
    again = upload(client, data, filename="other.mp4", expect=200, name="ignored")
    assert again == entry
    # a name field wins over the file name; no name and no file name: video-{id[:12]}
    b = upload(client, videos["b"], name="  Beach run  ")
    assert b["name"] == "Beach run" and b["video_id"] == sha(videos["b"])
    c = upload(client, videos["c"], filename="\u200b")
    assert c["name"] == f"video-{sha(videos['c'])[:12]}"


def test_upload_by_upload_id(client, videos):
    data = videos["d"]
    up = client.post("/v1/uploads", json={"content_type": "video/mp4", "content_length": len(data)}).json()
    put = httpx.put(up["url"], content=data, headers=up["headers"], timeout=60)
    assert put.status_code == 200, put.text
    r = client.post("/v1/videos", json={"upload_id": up["upload_id"], "name": "from upload"})
    assert r.status_code == 201, r.text
    entry = r.json()
    assert entry["video_id"] == sha(data) and entry["name"] == "from upload" and entry["size_bytes"] == len(data)
    assert entry["fps"] == pytest.approx(6.0) and entry["num_frames"] == 6
    r = client.post("/v1/videos", json={"upload_id": "nope"})
    assert r.status_code == 404 and error_code(r) == "upload_not_found"


def test_list_newest_first_with_paging_and_rename(client, tmp_path):
    older = upload(client, _video(tmp_path, "older.mp4", 13, 13.0), name="older")
    newer = upload(client, _video(tmp_path, "newer.mp4", 14, 14.0), name="newer")
    r = client.get("/v1/videos", params={"limit": 1})
    assert r.status_code == 200, r.text
    first = r.json()
    assert [v["video_id"] for v in first["videos"]] == [newer["video_id"]] and first["next_cursor"]
    second = client.get("/v1/videos", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [v["video_id"] for v in second["videos"]] == [older["video_id"]]
    everything = client.get("/v1/videos", params={"limit": 200}).json()
    ids = [v["video_id"] for v in everything["videos"]]
    assert ids[:2] == [newer["video_id"], older["video_id"]] and len(ids) == len(set(ids))
    created = [v["created_at"] for v in everything["videos"]]
    assert created == sorted(created, reverse=True) and everything["next_cursor"] is None
    # rename
    r = client.patch(f"/v1/videos/{older['video_id']}", json={"name": "renamed ✓"})
    assert r.status_code == 200, r.text
    assert r.json() == {**older, "name": "renamed ✓"}
    assert client.get(f"/v1/videos/{older['video_id']}").json()["name"] == "renamed ✓"
    for body in ({"name": ""}, {"name": "a\nb"}, {"name": "x" * 129}, {"title": "x"}):
        r = client.patch(f"/v1/videos/{older['video_id']}", json=body)
        assert r.status_code == 422 and error_code(r) == "validation_error", (body, r.text)
    r = client.get("/v1/videos", params={"cursor": "not-a-cursor"})
    assert r.status_code == 400 and error_code(r) == "invalid_cursor"


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_unknown_and_malformed_video_ids(client, method):
    body = {"json": {"name": "x"}} if method == "PATCH" else {}
    r = client.request(method, f"/v1/videos/{'0' * 64}", **body)
    assert r.status_code == 404 and error_code(r) == "video_not_found", r.text
    r = client.request(method, "/v1/videos/not-a-sha256", **body)
    assert r.status_code == 400 and error_code(r) == "invalid_video_id", r.text


def test_invalid_videos_are_refused_before_anything_is_stored(client, tmp_path):
    audio = tmp_path / "audio.m4a"
    write_audio_only(str(audio))
    before = client.get("/v1/storage/usage").json()["videos"]
    cases = [(b"\x00" * 4096, 400, "invalid_video"), (audio.read_bytes(), 415, "unsupported_codec"),
             (b"\x00" * 2_100_000, 413, "video_too_large")]
    for data, status, code in cases:
        r = client.post("/v1/videos", files={"video": ("x.mp4", data, "video/mp4")})
        assert r.status_code == status and error_code(r) == code, r.text
        assert client.get(f"/v1/videos/{sha(data)}").status_code == 404
    assert client.get("/v1/storage/usage").json()["videos"] == before
    r = client.post("/v1/videos", files={"file": ("x.mp4", b"abc", "video/mp4")})
    assert r.status_code == 400 and error_code(r) == "missing_video"
    r = client.post("/v1/videos", json={"upload_id": "a", "video_id": "b"})
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_delete_is_refused_while_a_live_session_uses_the_video(client, videos):
    vid = upload(client, videos["e"])["video_id"]
    r = client.post("/v1/video/sessions", json={"video": {"video_id": vid}})
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["video_id"] == vid and session["num_frames"] == 11
    sid = session["session_id"]
    try:
        r = client.delete(f"/v1/videos/{vid}")
        assert r.status_code == 409 and error_code(r) == "video_in_use" and sid in r.json()["error"]["message"]
        assert client.get(f"/v1/videos/{vid}").status_code == 200
        r = client.delete(f"/v1/videos/{vid}", params={"force": "true"})
        assert r.status_code == 204, r.text
        r = client.get(f"/v1/videos/{vid}")
        assert r.status_code == 404 and error_code(r) == "video_not_found"
        assert vid not in [v["video_id"] for v in client.get("/v1/videos", params={"limit": 200}).json()["videos"]]
        r = client.post("/v1/video/sessions", json={"video": {"video_id": vid}})  # the bytes are gone too
        assert r.status_code == 404 and error_code(r) == "video_not_found"
        assert client.delete(f"/v1/videos/{vid}").status_code == 404
    finally:
        client.delete(f"/v1/video/sessions/{sid}")


def test_delete_after_the_session_is_deleted(client, videos):
    vid = upload(client, videos["f"])["video_id"]
    r = client.post("/v1/video/sessions", json={"video": {"video_id": vid}, "max_frames": 2})
    assert r.status_code == 201, r.text
    assert client.delete(f"/v1/video/sessions/{r.json()['session_id']}").status_code == 204
    r = client.delete(f"/v1/videos/{vid}")
    assert r.status_code == 204, r.text
    assert client.get(f"/v1/videos/{vid}").status_code == 404
    # the same bytes can be added again: a new entry
    again = upload(client, videos["f"])
    assert again["video_id"] == vid
    assert client.delete(f"/v1/videos/{vid}").status_code == 204


def test_a_video_stored_by_a_session_can_be_registered_by_id(client, tmp_path):
    data = _video(tmp_path, "session.mp4", 15, 15.0)
    r = client.post("/v1/video/sessions", files={"video": ("s.mp4", data, "video/mp4")})
    assert r.status_code == 201, r.text
    sid, vid = r.json()["session_id"], r.json()["video_id"]
    assert vid == sha(data)
    try:
        r = client.post("/v1/videos", json={"video_id": vid, "name": "from a session"})
        assert r.status_code in (200, 201), r.text  # 200 when session creates register their videos themselves
        entry = r.json()
        assert entry["video_id"] == vid and entry["size_bytes"] == len(data) and entry["num_frames"] == 15
        assert client.get(f"/v1/videos/{vid}").json() == entry
    finally:
        client.delete(f"/v1/video/sessions/{sid}")
        client.delete(f"/v1/videos/{vid}")


def test_images_list_and_delete(client):
    pngs = [png_bytes(width=41 + i, height=29, seed=300 + i) for i in range(3)]
    ids = []
    for data in pngs:
        r = client.post("/v1/images", params={"precompute": "false"}, files={"file": ("a.png", data, "image/png")})
        assert r.status_code == 200, r.text
        ids.append(r.json()["image_id"])
    assert ids == [sha(d) for d in pngs]
    # one entry per page, from just before the smallest of them to the largest (other modules' images may lie between)
    ordered = sorted(ids)
    cursor = f"{int(ordered[0], 16) - 1:064x}"
    seen: list[dict] = []
    while not seen or seen[-1]["image_id"] < ordered[-1]:
        r = client.get("/v1/images", params={"limit": 1, "cursor": cursor})
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 1 and len(seen) < 1000
        seen += r.json()["images"]
        cursor = r.json()["next_cursor"]
        assert cursor == seen[-1]["image_id"] or cursor is None
    listed = [e["image_id"] for e in seen]
    assert listed == sorted(listed) and listed[-1] == ordered[-1]
    seen = [e for e in seen if e["image_id"] in ids]
    assert [e["image_id"] for e in seen] == ordered
    assert [e["size_bytes"] for e in seen] == [len(pngs[ids.index(i)]) for i in ordered]
    assert all(e["created_at"].endswith("+00:00") for e in seen)
    everything = client.get("/v1/images", params={"limit": 200}).json()["images"]
    listed = [e["image_id"] for e in everything]
    assert listed == sorted(listed) and (set(ids) <= set(listed) or len(listed) == 200)
    r = client.delete(f"/v1/images/{ids[0]}")
    assert r.status_code == 204, r.text
    r = client.delete(f"/v1/images/{ids[0]}")
    assert r.status_code == 404 and error_code(r) == "image_not_found"
    after = client.get("/v1/images", params={"limit": 1, "cursor": f"{int(ids[0], 16) - 1:064x}"}).json()
    assert ids[0] not in [e["image_id"] for e in after["images"]]
    r = client.post("/v1/pcs/image", json={"image": {"image_id": ids[0]}, "prompts": [{"text": "x"}]})
    assert r.status_code == 404 and error_code(r) == "image_not_found"
    r = client.delete("/v1/images/xyz")
    assert r.status_code == 400 and error_code(r) == "invalid_image_id"
    r = client.get("/v1/images", params={"cursor": "ZZ"})
    assert r.status_code == 400 and error_code(r) == "invalid_cursor"
    for image_id in ids[1:]:
        assert client.delete(f"/v1/images/{image_id}").status_code == 204


def test_storage_usage_counts_the_uploads(client, tmp_path):
    before = client.get("/v1/storage/usage")
    assert before.status_code == 200, before.text
    b = before.json()
    categories = ("images", "videos", "sessions", "jobs", "results", "exports", "uploads", "other")
    for key in ("bytes", "objects"):
        assert b["total"][key] == sum(b[c][key] for c in categories)
    video = _video(tmp_path, "usage.mp4", 17, 17.0)
    image = png_bytes(width=77, height=33, seed=404)
    vid = upload(client, video)["video_id"]
    r = client.post("/v1/images", params={"precompute": "false"}, files={"file": ("u.png", image, "image/png")})
    assert r.status_code == 200, r.text
    image_id = r.json()["image_id"]
    a = client.get("/v1/storage/usage").json()
    assert a["tenant"] == b["tenant"]
    assert a["images"] == {"bytes": b["images"]["bytes"] + len(image), "objects": b["images"]["objects"] + 1}
    # the video's bytes, its metadata JSON (a few hundred bytes) and its empty index marker
    assert a["videos"]["objects"] == b["videos"]["objects"] + 3
    assert len(video) < a["videos"]["bytes"] - b["videos"]["bytes"] < len(video) + 2048
    assert a["total"]["bytes"] - b["total"]["bytes"] >= len(video) + len(image)
    assert client.delete(f"/v1/videos/{vid}").status_code == 204
    assert client.delete(f"/v1/images/{image_id}").status_code == 204
    c = client.get("/v1/storage/usage").json()
    assert (c["videos"], c["images"]) == (b["videos"], b["images"])
