"""The ArtifactStore contract, run against both backends: a directory and a real S3 server (SeaweedFS).

Presigned URLs are exercised over plain HTTP: S3's with urllib against SeaweedFS (which checks SigV4),
the local backend's through the /v1/blobs router mounted in a FastAPI app (TestClient).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import multiprocessing
import multiprocessing.synchronize
import random
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, StorageConfig
from serve_app.errors import Forbidden, InvalidInput, NotFound, PreconditionFailed, Unavailable
from serve_app.ingress.error_handling import install_error_handling
from serve_app.ingress.routers import blobs
from serve_app.storage import ArtifactStore, open_store
from serve_app.storage import local as local_backend
from serve_app.storage.base import MIN_PART_BYTES
from serve_app.storage.local import LocalStore
from serve_app.storage.s3 import S3Store
from tests.fixtures.s3 import s3_storage_config

pytestmark = pytest.mark.integration

HttpCall = Callable[..., tuple[int, bytes, dict]]


@dataclass
class Backend:
    name: str
    store: ArtifactStore
    http: HttpCall  # (method, url, data=None, headers=None) -> (status, body, headers)


def urllib_call(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def blobs_app(store: ArtifactStore, storage: StorageConfig) -> FastAPI:
    """The /v1/blobs router alone, over `store` (the part of an IngressContext it reads: services.store and
    services.config)."""
    app = FastAPI()
    install_error_handling(app)
    app.include_router(blobs.router)
    app.state.ctx = SimpleNamespace(services=SimpleNamespace(store=store, config=AppConfig(storage=storage)))
    return app


@pytest.fixture
def backend(storage_config) -> Backend:
    store = open_store(storage_config)
    if isinstance(store, LocalStore):
        client = TestClient(blobs_app(store, storage_config))

        def call(method, url, data=None, headers=None):
            resp = client.request(method, url, content=data, headers=headers)
            return resp.status_code, resp.content, dict(resp.headers)

        return Backend("local", store, call)
    return Backend("s3", store, urllib_call)


def tamper(url: str, param: str) -> str:
    """`url` with the last hex digit of query parameter `param` changed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    value = query[param]
    query[param] = value[:-1] + ("0" if value[-1] != "0" else "1")
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- basic objects ---------------------------------------------------------------------------------


def test_put_get_head_round_trip(backend):
    data = bytes(range(256)) * 40
    etag = backend.store.put("t/default/images/a", data, "image/png")
    blob = backend.store.get("t/default/images/a")
    assert blob.data == data
    assert blob.content_type == "image/png"
    assert blob.etag == etag
    assert blob.info.size == len(data)
    assert blob.info.etag.strip('"') == hashlib.md5(data).hexdigest()
    info = backend.store.head("t/default/images/a")
    assert (info.key, info.size, info.etag, info.content_type) == ("t/default/images/a", len(data), etag, "image/png")


def test_overwrite_replaces_bytes_and_etag(backend):
    first = backend.store.put("t/default/x", b"one", "text/plain")
    second = backend.store.put("t/default/x", b"two!", "application/json")
    assert first != second
    blob = backend.store.get("t/default/x")
    assert (blob.data, blob.etag, blob.content_type) == (b"two!", second, "application/json")


def test_missing_objects_raise_not_found(backend):
    with pytest.raises(NotFound):
        backend.store.get("t/default/missing")
    with pytest.raises(NotFound):
        backend.store.head("t/default/missing")
    backend.store.delete("t/default/missing")  # idempotent
    backend.store.put("t/default/gone", b"x")
    backend.store.delete("t/default/gone")
    with pytest.raises(NotFound):
        backend.store.get("t/default/gone")


def test_empty_object(backend):
    backend.store.put("t/default/empty", b"")
    assert backend.store.get("t/default/empty").data == b""
    assert backend.store.head("t/default/empty").size == 0


def test_list_prefix_order_and_pagination(backend):
    store = backend.store
    jobs = ["t/default/jobs/a/record.json", "t/default/jobs/a/result.json", "t/default/jobs/b/record.json",
            "t/default/jobs/c/record.json", "t/default/jobs/d/input.json"]
    decoys = ["t/default/jobs-active/a", "t/default/jobsx", "t/other/jobs/a/record.json"]
    for i, name in enumerate(reversed(jobs + decoys)):
        store.put(name, b"x" * i)
    listed = store.list("t/default/jobs/")
    assert [i.key for i in listed] == jobs
    assert [i.size for i in listed] == [7, 6, 5, 4, 3]
    assert listed[0].etag == store.head("t/default/jobs/a/record.json").etag
    # a partial last segment is a plain string prefix, as in S3 (order across "-" vs "/" is backend-specific)
    assert sorted(i.key for i in store.list("t/default/jobs")) == sorted(jobs + decoys[:2])
    page1 = store.list("t/default/jobs/", limit=2)
    page2 = store.list("t/default/jobs/", start_after=page1[-1].key, limit=2)
    page3 = store.list("t/default/jobs/", start_after=page2[-1].key, limit=2)
    assert [i.key for i in page1 + page2 + page3] == jobs
    assert store.list("t/default/jobs/", start_after=jobs[-1]) == []
    assert store.list("t/nobody/") == []


def test_list_more_than_one_s3_page(backend):
    for i in range(25):
        backend.store.put(f"t/default/many/{i:03d}", b"")
    keys = [i.key for i in backend.store.list("t/default/many/", limit=20)]
    assert keys == [f"t/default/many/{i:03d}" for i in range(20)]


@pytest.mark.parametrize("bad", ["../escape", "/abs", "t/default/../other", "t/default/.lock", "a//b"])
def test_unsafe_keys_are_rejected(backend, bad):
    for call in (lambda: backend.store.put(bad, b"x"), lambda: backend.store.get(bad),
                 lambda: backend.store.head(bad), lambda: backend.store.delete(bad),
                 lambda: backend.store.presign_get(bad, 60)):
        with pytest.raises(InvalidInput):
            call()


# -- streaming writer ------------------------------------------------------------------------------

PART = MIN_PART_BYTES  # 5 MiB: S3's minimum part, which SeaweedFS enforces too (EntityTooSmall)


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def write_in_chunks(writer, data: bytes, sizes: tuple[int, ...] = (1, 1 << 20, 7, 6 * 1024 * 1024 + 3)) -> None:
    """`data` through `writer` in uneven chunks (one byte, smaller than, straddling and larger than a part)."""
    view, i = memoryview(data), 0
    while view:
        n = sizes[i % len(sizes)]
        assert writer.write(view[:n]) == min(n, len(view))
        view, i = view[n:], i + 1


WRITE_OPS = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload"}


def s3_calls(store: ArtifactStore) -> list[str]:
    """The S3 write operations `store` calls from now on, in order (empty for the local backend)."""
    calls: list[str] = []

    def record(model, **_) -> None:
        if model.name in WRITE_OPS:
            calls.append(model.name)

    if isinstance(store, S3Store):
        store._client.meta.events.register("before-call.s3", record)
    return calls


def open_uploads(store: ArtifactStore, key: str) -> list[dict]:
    """Multipart uploads still open at `key` (S3), through the store's own client."""
    assert isinstance(store, S3Store)
    return store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=store._full(key)).get("Uploads", [])


def assert_no_leftovers(backend: Backend, key: str) -> None:
    """No temp file (local) or open multipart upload (S3) remains of a writer of `key`."""
    if isinstance(backend.store, LocalStore):
        assert list((backend.store.root / ".tmp").iterdir()) == []
    else:
        assert open_uploads(backend.store, key) == []


def test_writer_streams_a_multipart_object(backend):
    key = "t/default/exports/big.bin"
    data = random_bytes(2 * PART + 2 * 1024 * 1024 + 5)  # 3 parts: 5 MiB, 5 MiB, 2 MiB + 5
    calls = s3_calls(backend.store)
    with backend.store.open_writer(key, "application/zip", part_bytes=PART) as writer:
        write_in_chunks(writer, data)
        writer.flush()
        assert writer.bytes_written == len(data)
        with pytest.raises(NotFound):  # nothing visible before the block ends
            backend.store.head(key)
    blob = backend.store.get(key)
    assert blob.info.size == len(data) and blob.data == data
    assert blob.content_type == "application/zip"
    assert writer.etag == blob.etag == backend.store.head(key).etag
    assert [i.key for i in backend.store.list("t/default/exports/")] == [key]
    if backend.name == "s3":
        assert calls == ["CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart",
                         "CompleteMultipartUpload"]
    else:
        assert blob.etag.strip('"') == hashlib.md5(data).hexdigest()
    assert_no_leftovers(backend, key)


@pytest.mark.parametrize("size", [0, 1000, PART])
def test_writer_up_to_one_part_is_a_single_put(backend, size):
    key = "t/default/exports/small.zip"
    data = random_bytes(size, seed=size)
    calls = s3_calls(backend.store)
    with backend.store.open_writer(key, "application/zip", part_bytes=PART) as writer:
        write_in_chunks(writer, data)
    blob = backend.store.get(key)
    assert (blob.data, blob.info.size, blob.content_type) == (data, size, "application/zip")
    assert writer.bytes_written == size and writer.etag == blob.etag
    assert blob.etag.strip('"') == hashlib.md5(data).hexdigest()  # one PutObject: the plain md5 on S3 too
    if backend.name == "s3":
        assert calls == ["PutObject"]
    assert_no_leftovers(backend, key)


@pytest.mark.parametrize("written", [100, 2 * PART + 1], ids=["within-a-part", "after-parts"])
def test_writer_failure_aborts_and_keeps_the_old_object(backend, written):
    fresh, existing = "t/default/exports/fresh.zip", "t/default/exports/existing.zip"
    old_etag = backend.store.put(existing, b"the old export", "application/zip")
    for key in (fresh, existing):
        calls = s3_calls(backend.store)
        with pytest.raises(RuntimeError, match="export failed"):
            with backend.store.open_writer(key, part_bytes=PART) as writer:
                write_in_chunks(writer, random_bytes(written))
                raise RuntimeError("export failed")
        assert writer.etag is None
        with pytest.raises(ValueError):
            writer.write(b"late")  # the writer is closed
        if backend.name == "s3" and written > PART:
            assert calls[0] == "CreateMultipartUpload" and calls[-1] == "AbortMultipartUpload"
        elif backend.name == "s3":
            assert calls == []  # nothing was sent: no multipart for what fits in one part
        assert_no_leftovers(backend, key)
    with pytest.raises(NotFound):
        backend.store.head(fresh)
    blob = backend.store.get(existing)
    assert (blob.data, blob.etag, blob.content_type) == (b"the old export", old_etag, "application/zip")
    assert [i.key for i in backend.store.list("t/default/exports/")] == [existing]


def test_writer_is_a_write_only_stream(backend):
    with backend.store.open_writer("t/default/exports/s.bin", part_bytes=PART) as writer:
        assert writer.writable() and not writer.seekable() and not writer.readable()
        for call in (writer.tell, lambda: writer.seek(0), lambda: writer.read(1)):
            with pytest.raises(io.UnsupportedOperation):  # an OSError (and ValueError) subclass
                call()
        assert writer.write(bytearray(b"ab")) + writer.write(memoryview(b"cdef")[1:]) == 5
    assert backend.store.get("t/default/exports/s.bin").data == b"abdef"
    for bad in (MIN_PART_BYTES - 1, 0, 6 * 1024**3):
        with pytest.raises(ValueError), backend.store.open_writer("t/default/exports/p.bin", part_bytes=bad):
            pytest.fail("open_writer accepted part_bytes below S3's minimum")
    with pytest.raises(InvalidInput), backend.store.open_writer("t/default/../escape"):
        pytest.fail("open_writer accepted an unsafe key")
    assert_no_leftovers(backend, "t/default/exports/")


def test_zipfile_through_the_writer_reads_back(backend):
    key = "t/default/exports/dataset.zip"
    big = random_bytes(PART + 1024 * 1024, seed=1)  # stored: the archive spans two parts
    with backend.store.open_writer(key, "application/zip", part_bytes=PART) as writer:
        with zipfile.ZipFile(writer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", b'{"frames": 2}')
            with zf.open("frames/000000.bin", "w") as entry:
                for i in range(0, len(big), 1 << 20):
                    entry.write(big[i:i + (1 << 20)])
            zf.writestr("frames/000001.bin", b"\0" * 100_000)
    with zipfile.ZipFile(io.BytesIO(backend.store.get(key).data)) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["manifest.json", "frames/000000.bin", "frames/000001.bin"]
        assert zf.read("manifest.json") == b'{"frames": 2}'
        assert zf.read("frames/000000.bin") == big
        assert zf.read("frames/000001.bin") == b"\0" * 100_000
        assert all(info.flag_bits & 0x08 for info in zf.infolist())  # data descriptors: written as a stream


def test_s3_down_while_writing_is_unavailable(private_seaweedfs, aws_env):
    store = open_store(s3_storage_config(private_seaweedfs, connect_timeout_s=1.0, read_timeout_s=1.0,
                                         max_attempts=1))
    key = "t/default/exports/outage.zip"
    with pytest.raises(Unavailable), store.open_writer(key, part_bytes=PART) as writer:
        writer.write(random_bytes(PART + 1))  # the first part is sent
        private_seaweedfs.stop()
        writer.write(random_bytes(PART))  # the second cannot be: the abort cannot either (logged)
    private_seaweedfs.start()
    with pytest.raises(NotFound):
        store.head(key)
    # The abort was lost with the server: the upload stays open until a lifecycle rule (or this) removes it.
    (upload,) = open_uploads(store, key)
    store._client.abort_multipart_upload(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])


# -- listing helpers -------------------------------------------------------------------------------


def test_iter_list_pages_through_everything_and_usage_sums(backend, monkeypatch):
    store = backend.store
    keys = [f"t/default/sessions/s1/masks/{i:06d}.json" for i in range(7)]
    for i, key in enumerate(reversed(keys)):
        store.put(key, b"m" * (i + 1))
    store.put("t/default/sessions/s2/masks/000000.json", b"not this session")
    pages: list[tuple[str | None, int]] = []
    inner_list = store.list

    def spy_list(prefix, *, start_after=None, limit=1000):
        pages.append((start_after, limit))
        return inner_list(prefix, start_after=start_after, limit=limit)

    monkeypatch.setattr(store, "list", spy_list)
    listed = list(store.iter_list("t/default/sessions/s1/", page=3))
    assert [i.key for i in listed] == keys
    assert [i.size for i in listed] == [7, 6, 5, 4, 3, 2, 1]
    assert pages == [(None, 3), (keys[2], 3), (keys[5], 3)]
    assert store.usage("t/default/sessions/s1/") == (7, 28)
    assert store.usage("t/default/sessions/") == (8, 28 + len(b"not this session"))
    assert store.usage("t/nobody/") == (0, 0)
    assert list(store.iter_list("t/nobody/", page=1)) == []
    with pytest.raises(ValueError):
        next(store.iter_list("t/default/", page=0))


# -- conditional writes ----------------------------------------------------------------------------


def test_if_none_match_creates_only_once(backend):
    etag = backend.store.put("t/default/jobs-idem/k", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        backend.store.put("t/default/jobs-idem/k", b"second", if_none_match=True)
    blob = backend.store.get("t/default/jobs-idem/k")
    assert (blob.data, blob.etag) == (b"first", etag)


def test_if_match_requires_the_current_etag(backend):
    old = backend.store.put("t/default/rec", b"v1")
    new = backend.store.put("t/default/rec", b"v2", if_match=old)
    with pytest.raises(PreconditionFailed):
        backend.store.put("t/default/rec", b"v3", if_match=old)  # stale
    assert backend.store.get("t/default/rec").data == b"v2"
    with pytest.raises(PreconditionFailed):
        backend.store.put("t/default/absent", b"v1", if_match=new)  # If-Match on a missing key fails
    with pytest.raises(NotFound):
        backend.store.get("t/default/absent")


@pytest.mark.parametrize("mode", ["if_match", "if_none_match"])
def test_racing_conditional_writers_exactly_one_wins(backend, mode):
    key = "t/default/jobs/race/record.json"
    kwargs = {}
    if mode == "if_match":
        kwargs["if_match"] = backend.store.put(key, b"queued")
    else:
        kwargs["if_none_match"] = True
    contenders = 6
    barrier = threading.Barrier(contenders)

    def claim(i: int) -> bool:
        barrier.wait()
        try:
            backend.store.put(key, f"claimed by {i}".encode(), **kwargs)
            return True
        except PreconditionFailed:
            return False

    with concurrent.futures.ThreadPoolExecutor(contenders) as pool:
        wins = list(pool.map(claim, range(contenders)))
    assert wins.count(True) == 1
    assert backend.store.get(key).data == f"claimed by {wins.index(True)}".encode()


def _claim_in_process(root: str, i: int, start: multiprocessing.synchronize.Barrier, wins: multiprocessing.Queue) -> None:
    store = LocalStore(StorageConfig(uri=f"file://{root}"))
    start.wait(timeout=60)  # every process is up and has its store: all claim at once
    try:
        store.put("t/default/lock", str(i).encode(), if_none_match=True)
        wins.put((i, True))
    except PreconditionFailed:
        wins.put((i, False))


def test_local_conditional_writes_are_safe_across_processes(tmp_path):
    root = tmp_path / "store"
    LocalStore(StorageConfig(uri=f"file://{root}"))  # creates the directory and signing key once
    ctx = multiprocessing.get_context("spawn")
    contenders = 4
    start, results = ctx.Barrier(contenders), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(str(root), i, start, results)) for i in range(contenders)]
    for proc in procs:
        proc.start()
    try:
        outcome = dict(results.get(timeout=120) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # only on failure: a process of this test that did not finish
                proc.kill()
    assert sorted(outcome) == list(range(contenders))
    winners = [i for i, won in outcome.items() if won]
    assert len(winners) == 1
    assert LocalStore(StorageConfig(uri=f"file://{root}")).get("t/default/lock").data == str(winners[0]).encode()


# -- presigned URLs --------------------------------------------------------------------------------


def test_presigned_get_over_http(backend):
    backend.store.put("t/default/jobs/j1/overlay.png", b"\x89PNG fake", "image/png")
    url = backend.store.presign_get("t/default/jobs/j1/overlay.png", 60)
    status, body, headers = backend.http("GET", url)
    assert (status, body) == (200, b"\x89PNG fake")
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "image/png"


def test_presigned_get_of_a_missing_object_is_404(backend):
    status, _, _ = backend.http("GET", backend.store.presign_get("t/default/nothing", 60))
    assert status == 404


def test_tampered_presigned_urls_are_rejected(backend):
    backend.store.put("t/default/secret", b"s3cr3t")
    backend.store.put("t/default/other", b"other-content")
    url = backend.store.presign_get("t/default/secret", 60)
    sig_param = "X-Amz-Signature" if backend.name == "s3" else "sig"
    status, body, _ = backend.http("GET", tamper(url, sig_param))
    assert status == 403 and b"s3cr3t" not in body
    status, body, _ = backend.http("GET", url.replace("/t/default/secret?", "/t/default/other?"))
    assert status == 403 and b"other-content" not in body
    expiry_param = "X-Amz-Expires" if backend.name == "s3" else "expires"
    status, _, _ = backend.http("GET", tamper(url, expiry_param))
    assert status == 403


def test_expired_presigned_url_is_rejected(backend, monkeypatch):
    backend.store.put("t/default/brief", b"short-lived")
    url = backend.store.presign_get("t/default/brief", 1)
    if backend.name == "local":
        # The /v1/blobs route runs in this process (TestClient): move its clock past the expiry (injected
        # into the backend's module) instead of waiting for it.
        later = time.time() + 2
        monkeypatch.setattr(local_backend, "time", SimpleNamespace(time=lambda: later))
    else:
        # A real-time requirement: SeaweedFS checks X-Amz-Date + X-Amz-Expires against its own clock, both in
        # whole seconds, and S3 has no expiry below 1 s. Wait until the URL is past its expiry by that
        # resolution (X-Amz-Date is truncated to the second, so this is 1-2 s after presigning).
        query = dict(parse_qsl(urlsplit(url).query))
        signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        time.sleep(max(0.0, signed + int(query["X-Amz-Expires"]) + 1.0 - time.time()))
    status, body, _ = backend.http("GET", url)
    assert status == 403 and b"short-lived" not in body


def test_presigned_put_then_get(backend):
    data = b"\xff\xd8\xff fake jpeg" * 100
    req = backend.store.presign_put("t/default/uploads/u1", "image/jpeg", 60, content_length=len(data))
    assert req.method == "PUT"
    assert req.headers == {"Content-Type": "image/jpeg", "Content-Length": str(len(data))}
    assert req.expires_at.timestamp() > time.time() + 30
    status, _, _ = backend.http("PUT", req.url, data, req.headers)
    assert status == 200
    blob = backend.store.get("t/default/uploads/u1")
    assert (blob.data, blob.content_type) == (data, "image/jpeg")


def test_presigned_put_enforces_type_and_size(backend):
    req = backend.store.presign_put("t/default/uploads/u2", "image/png", 60, content_length=10)
    wrong_type = {**req.headers, "Content-Type": "text/html"}
    assert backend.http("PUT", req.url, b"0123456789", wrong_type)[0] == 403
    too_big = {**req.headers, "Content-Length": "11"}
    assert backend.http("PUT", req.url, b"0123456789X", too_big)[0] == 403
    assert backend.http("PUT", tamper(req.url, "X-Amz-Signature" if backend.name == "s3" else "sig"),
                        b"0123456789", req.headers)[0] == 403
    with pytest.raises(NotFound):
        backend.store.get("t/default/uploads/u2")
    assert backend.http("PUT", req.url, b"0123456789", req.headers)[0] == 200
    assert backend.store.get("t/default/uploads/u2").data == b"0123456789"


def test_local_verify_presigned(tmp_path):
    store = LocalStore(StorageConfig(uri=f"file://{tmp_path}/store"))
    url = store.presign_get("t/default/a", 60)
    assert url.startswith("http://127.0.0.1:8000/v1/blobs/t/default/a?expires=")
    query = dict(parse_qsl(urlsplit(url).query))
    store.verify_presigned("GET", "t/default/a", query["expires"], query["sig"])
    with pytest.raises(Forbidden):
        store.verify_presigned("PUT", "t/default/a", query["expires"], query["sig"])
    with pytest.raises(Forbidden):
        store.verify_presigned("GET", "t/default/b", query["expires"], query["sig"])
    with pytest.raises(Forbidden):
        store.verify_presigned("GET", "t/default/a", str(int(query["expires"]) + 1), query["sig"])
    with pytest.raises(Forbidden):
        store.verify_presigned("GET", "t/default/a", "soon", query["sig"])
    expired = dict(parse_qsl(urlsplit(store.presign_get("t/default/a", -5)).query))
    with pytest.raises(Forbidden) as info:
        store.verify_presigned("GET", "t/default/a", expired["expires"], expired["sig"])
    assert info.value.code == "expired_signature"
    # another process on the same directory verifies with the same persisted key
    other = LocalStore(StorageConfig(uri=f"file://{tmp_path}/store"))
    other.verify_presigned("GET", "t/default/a", query["expires"], query["sig"])


def test_blobs_route_is_404_when_storage_is_s3(s3_config):
    client = TestClient(blobs_app(open_store(s3_config), s3_config))
    assert client.get("/v1/blobs/t/default/a?expires=1&sig=x").status_code == 404


# -- storage outages -------------------------------------------------------------------------------


def _bounded(call: Callable[[], object], upper_bound_s: float = 60.0) -> BaseException | None:
    """Run `call` in a thread and return the exception it raised; fail the test if it hangs."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        return future.exception(timeout=upper_bound_s)


def test_s3_down_is_unavailable_then_recovers_intact(private_seaweedfs, aws_env):
    cfg = s3_storage_config(private_seaweedfs, connect_timeout_s=1.0, read_timeout_s=1.0, max_attempts=1,
                            retry_after_s=7)
    store = open_store(cfg)
    etag = store.put("t/default/jobs/j/record.json", b'{"status":"queued"}', "application/json")

    private_seaweedfs.stop()
    calls = {
        "get": lambda: store.get("t/default/jobs/j/record.json"),
        "head": lambda: store.head("t/default/jobs/j/record.json"),
        "put": lambda: store.put("t/default/jobs/j/record.json", b"corrupt?", if_match=etag),
        "list": lambda: store.list("t/default/"),
        "delete": lambda: store.delete("t/default/jobs/j/record.json"),
    }
    for name, call in calls.items():
        error = _bounded(call)
        assert isinstance(error, Unavailable), (name, error)
        assert error.status_code == 503 and error.retry_after_s == 7

    private_seaweedfs.start()
    blob = store.get("t/default/jobs/j/record.json")
    assert (blob.data, blob.etag) == (b'{"status":"queued"}', etag)
    assert store.put("t/default/jobs/j/record.json", b'{"status":"running"}', if_match=etag) != etag


def test_s3_hung_times_out_as_unavailable(private_seaweedfs, aws_env):
    store = open_store(s3_storage_config(private_seaweedfs, connect_timeout_s=1.0, read_timeout_s=1.0,
                                         max_attempts=2))
    store.put("t/default/a", b"alive")
    private_seaweedfs.freeze()
    try:
        error = _bounded(lambda: store.get("t/default/a"))
        assert isinstance(error, Unavailable), error
    finally:
        private_seaweedfs.thaw()
    assert store.get("t/default/a").data == b"alive"
