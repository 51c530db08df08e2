"""`LocalStore`: the ArtifactStore on a local directory, for single-machine development (`file:///abs/dir`).

Same contract as S3 (see `base.py`), with these mechanics:
- Object `key` is the file `{dir}/{key}`: one JSON header line `{"etag", "content_type"}` + `\\n`, then the
  bytes. ETags are the quoted md5 of the bytes, as S3 gives for single-part uploads.
- Writes go to a temp file in `{dir}/.tmp` and are renamed into place: atomic for readers. `open_writer`
  streams into such a temp file behind a header with a placeholder ETag (the md5 is known only at the end; a
  quoted md5 always has the same length) and overwrites the placeholder before the rename; an aborted writer
  deletes its temp file. `list` skips `.tmp` (hidden names never are keys). `part_bytes` is checked against
  the S3 limits (so code tried here runs on S3) but not otherwise used.
- Every write and delete holds an exclusive `fcntl.flock` on `{dir}/.lock` while it checks its condition
  and renames, so conditional writes are race-free between threads and between processes on this machine.
  Durable against a process crash, not against power loss (no fsync).
- A key cannot be both an object and a "directory" of other keys (a filesystem limit; raises Conflict).
- Presigned URLs point at this service's `/v1/blobs/{key}` route (serve_app.ingress.routers.blobs):
  `?expires={unix s}[&content_length={n}]&sig={hex}` with sig = HMAC-SHA256 over method, key, expires,
  content type (PUT) and content length. The secret is env SAM3_LOCAL_SIGNING_KEY, else a random key
  created once in `{dir}/.signing-key` (so every process sharing the directory agrees).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlparse

from serve_app.config import StorageConfig
from serve_app.errors import Conflict, Forbidden, NotFound, PreconditionFailed, Unavailable
from serve_app.storage.base import ArtifactStore, Blob, BlobInfo, BlobWriter, PresignedRequest
from serve_app.storage.keys import check_key

SIGNING_KEY_ENV = "SAM3_LOCAL_SIGNING_KEY"
BLOBS_ROUTE = "/v1/blobs/"
_ETAG_PLACEHOLDER = '"' + "0" * 32 + '"'  # as long as every etag here: a quoted md5 hex digest


def _header(etag: str, content_type: str) -> bytes:
    """The JSON line that precedes an object's bytes in its file."""
    return json.dumps({"etag": etag, "content_type": content_type}).encode() + b"\n"


class LocalStore(ArtifactStore):
    def __init__(self, cfg: StorageConfig):
        parsed = urlparse(cfg.uri)
        if parsed.scheme != "file" or parsed.netloc or not parsed.path.startswith("/"):
            raise ValueError(f"not a file:///absolute/dir URI: {cfg.uri!r}")
        self.root = Path(unquote(parsed.path))
        self.max_upload_bytes = cfg.max_upload_bytes
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / ".lock"
        self._base_url = cfg.public_base_url.rstrip("/")
        self._retry_after_s = cfg.retry_after_s
        self._secret = self._signing_key()

    # -- files -------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _translate(self, op: str, key: str) -> Iterator[None]:
        """Missing file -> NotFound (reads) or Conflict (writes: a path component is a file); other OSError
        (disk full, permissions, I/O error) -> Unavailable."""
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            if op in ("get", "head"):
                raise NotFound(f"no object at {key}", "object_not_found") from exc
            raise Conflict(f"key {key} collides with the path of other keys", "key_collision") from exc
        except OSError as exc:
            raise Unavailable(
                f"local storage failed during {op} ({exc.strerror})", "storage_unavailable",
                retry_after_s=self._retry_after_s,
            ) from exc

    def _read_info(self, key: str, f, with_content_type: bool = True) -> BlobInfo:
        header = f.readline()
        meta = json.loads(header)
        st = os.fstat(f.fileno())
        return BlobInfo(
            key, st.st_size - len(header), meta["etag"], datetime.fromtimestamp(st.st_mtime, timezone.utc),
            meta["content_type"] if with_content_type else None,
        )

    def _current_etag(self, path: Path) -> str | None:
        try:
            with open(path, "rb") as f:
                return json.loads(f.readline())["etag"]
        except FileNotFoundError:
            return None

    # -- ArtifactStore -----------------------------------------------------------------------------

    def put(self, key, data, content_type="application/octet-stream", *, if_none_match=False, if_match=None):
        if if_none_match and if_match is not None:
            raise ValueError("use if_none_match or if_match, not both")
        path = self._path(key)
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        header = _header(etag, content_type)
        with self._translate("put", key):
            fd, tmp = tempfile.mkstemp(dir=self._tmp)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(header)
                    f.write(data)
                with self._locked():
                    current = self._current_etag(path) if (if_none_match or if_match is not None) else None
                    if if_none_match and current is not None:
                        raise PreconditionFailed(f"conditional put of {key} lost: the object exists")
                    if if_match is not None and current != if_match:
                        raise PreconditionFailed(f"conditional put of {key} lost: the object changed")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return etag

    def _new_writer(self, key: str, content_type: str, part_bytes: int) -> BlobWriter:
        return _LocalWriter(self, key, content_type)

    def get(self, key):
        with self._translate("get", key), open(self._path(key), "rb") as f:
            info = self._read_info(key, f)
            data = f.read()
        return Blob(data, info)

    def head(self, key):
        with self._translate("head", key), open(self._path(key), "rb") as f:
            return self._read_info(key, f)

    def delete(self, key):
        path = self._path(key)
        with self._translate("delete", key), self._locked():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(path)
            for parent in path.parents:  # prune empty directories, as S3 has none
                if parent == self.root:
                    break
                try:
                    os.rmdir(parent)
                except OSError:
                    break

    def list(self, prefix, *, start_after=None, limit=1000):
        check_key(prefix, prefix=True)
        keys = []
        with self._translate("list", prefix):
            for dirpath, dirnames, filenames in os.walk(self.root / prefix.rpartition("/")[0]):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    key = name if rel == "." else f"{rel}/{name}"
                    if not name.startswith(".") and key.startswith(prefix) and (
                        start_after is None or key > start_after
                    ):
                        keys.append(key)
            found: list[BlobInfo] = []
            for key in sorted(keys):
                if len(found) == limit:
                    break
                with contextlib.suppress(FileNotFoundError), open(self.root / key, "rb") as f:
                    found.append(self._read_info(key, f, with_content_type=False))
        return found

    # -- presigned URLs ----------------------------------------------------------------------------

    def _signing_key(self) -> bytes:
        if os.environ.get(SIGNING_KEY_ENV):
            return os.environ[SIGNING_KEY_ENV].encode()
        path = self.root / ".signing-key"
        if not path.exists():  # first process wins; link() fails if another process created it first
            fd, tmp = tempfile.mkstemp(dir=self._tmp)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            os.unlink(tmp)
        return path.read_bytes().strip()

    def _signature(self, method: str, key: str, expires: int, content_type: str | None,
                   content_length: int | None) -> str:
        message = "\n".join(
            [method, key, str(expires), content_type or "", "" if content_length is None else str(content_length)]
        )
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def _url(self, key: str, query: dict) -> str:
        return f"{self._base_url}{BLOBS_ROUTE}{quote(check_key(key), safe='/')}?{urlencode(query)}"

    def presign_get(self, key, expires_s):
        expires = int(time.time()) + expires_s
        return self._url(key, {"expires": expires, "sig": self._signature("GET", key, expires, None, None)})

    def presign_put(self, key, content_type, expires_s, content_length=None):
        expires = int(time.time()) + expires_s
        query: dict = {"expires": expires}
        headers = {"Content-Type": content_type}
        if content_length is not None:
            query["content_length"] = content_length
            headers["Content-Length"] = str(content_length)
        query["sig"] = self._signature("PUT", key, expires, content_type, content_length)
        expires_at = datetime.fromtimestamp(expires, timezone.utc)
        return PresignedRequest(self._url(key, query), "PUT", headers, expires_at)

    def verify_presigned(self, method: str, key: str, expires: str | int, sig: str, *,
                         content_type: str | None = None, content_length: int | None = None) -> None:
        """Check a request to a URL from `presign_get`/`presign_put`; raise Forbidden unless it is valid now.

        `content_type` is the request's Content-Type header (PUT); `content_length` the URL's
        `content_length` parameter (the route must then also check the body has exactly that length).
        """
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            raise Forbidden("presigned URL has no valid expiry", "invalid_signature") from None
        expected = self._signature(method, key, expires_at, content_type if method == "PUT" else None,
                                   content_length)
        if not hmac.compare_digest(expected, str(sig)):
            raise Forbidden("presigned URL signature does not match", "invalid_signature")
        if expires_at < time.time():
            raise Forbidden("presigned URL has expired", "expired_signature")


class _LocalWriter(BlobWriter):
    """`LocalStore.open_writer`: a temp file in `{dir}/.tmp`, renamed to the key's path on commit."""

    def __init__(self, store: LocalStore, key: str, content_type: str):
        super().__init__(key)
        self._store = store
        self._path = store._path(key)  # checks the key
        self._content_type = content_type
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._placeholder = _header(_ETAG_PLACEHOLDER, content_type)
        with store._translate("put", key):
            fd, self._tmp = tempfile.mkstemp(dir=store._tmp)
            self._file = os.fdopen(fd, "wb")
            try:
                self._file.write(self._placeholder)
            except BaseException:
                self._discard()
                raise

    def _write(self, data: memoryview) -> None:
        with self._store._translate("put", self.key):
            self._file.write(data)
        self._md5.update(data)

    def flush(self) -> None:
        if not self._file.closed:
            with self._store._translate("put", self.key):
                self._file.flush()

    def _commit(self) -> str:
        etag = f'"{self._md5.hexdigest()}"'
        header = _header(etag, self._content_type)
        if len(header) != len(self._placeholder):  # cannot happen: an md5 digest has a fixed length
            self._discard()
            raise AssertionError("local writer: the header changed length")
        try:
            with self._store._translate("put", self.key):
                self._file.seek(0)
                self._file.write(header)
                self._file.close()
                with self._store._locked():  # ordered with conditional puts, which check and rename under it
                    self._path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self._tmp, self._path)
        finally:
            self._discard()  # after the rename only closes (already closed) and finds no temp file
        return etag

    def _abort(self) -> None:
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
