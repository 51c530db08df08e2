"""`ArtifactStore`: the one storage interface, implemented by `s3.S3Store` and `local.LocalStore`.

Semantics every backend guarantees (tests/integration/test_storage_contract.py checks both):
- Keys are relative (see `serve_app.storage.keys`); a backend adds its own bucket prefix or directory
  and rejects unsafe keys with InvalidInput.
- A put is atomic: readers see the old object or the new one, never a mix.
- ETags are opaque strings; pass one back unchanged as `if_match`.
- Conditional writes: `if_none_match=True` creates only if the key is absent; `if_match=etag` replaces
  only if the current object has that ETag (and fails if it is absent). Losing raises PreconditionFailed.
- Errors are typed, never None: a missing key raises NotFound; a storage that is unreachable, times out,
  throttles or answers 5xx raises Unavailable (with `retry_after_s`), after the backend's own retries.
- `delete` is idempotent: deleting a missing key is not an error.
- `list` returns keys in ascending order. AWS S3 and the local backend compare bytes; SeaweedFS compares
  path segments, which differs only between sibling names like `jobs-x` and `jobs/` (a name that extends
  another with a character below `/`). The key layout never lists across such siblings.
  `iter_list` pages through all of a prefix (`list` with `start_after`); `usage` counts and sums it.
- Large objects are streamed, never held in memory: `with store.open_writer(key, content_type) as w:`
  yields a write-only, non-seekable binary file (`write`, `flush`, `bytes_written`; `tell`/`seek` raise
  io.UnsupportedOperation, so `zipfile.ZipFile(w, "w")` writes data descriptors). The object appears at
  `key` only when the block exits normally, atomically (readers see the old object or the whole new one);
  if the block raises, the write is aborted, nothing changes at `key` and the exception propagates. After
  the block `w.etag` is the new ETag (a multipart ETag on S3: not the md5 of the bytes). Memory is about
  one part (`part_bytes`, MIN_PART_BYTES..MAX_PART_BYTES, the S3 limits, checked on every backend so code
  tried on a directory also runs on S3). No conditions: the last writer to finish wins. As with a
  conditional put, a commit whose response was lost may raise although the object landed. A writer is for
  one thread; a store may have many open at once.

Conditional writes are checked, not assumed: an S3-compatible server (or an old botocore) may accept
`If-None-Match`/`If-Match` and ignore them, which would make every job transition unconditional (double
runs, lost cancels). `probe_conditional_writes` tries them on a fresh key under the reserved `sys/` prefix
(`keys.probe_key`, deleted afterwards): create-if-absent must succeed on a new key and fail on an existing
one, If-Match with a wrong ETag must fail and leave the object as it was, If-Match with the right ETag must
succeed. `conditional_writes()` caches the verdict per store (a negative one is re-checked every
CONDITIONAL_RECHECK_S, so a fixed server is picked up without a restart); `require_conditional_writes()` is
what jobs call before they create or claim anything: it raises Unavailable with code
`storage_not_conditional` (Retry-After CONDITIONAL_RECHECK_S) while the store does not enforce them.

The methods block (network or disk I/O). From asyncio code call them on a worker thread: in the pipelines the
replica's bounded storage pool, `blob = await serve_app.pipelines.pools.run_io(store.get, key)` (elsewhere
`asyncio.to_thread`); stores are thread-safe.
"""

from __future__ import annotations

import abc
import contextlib
import io
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from serve_app.errors import InvalidInput, NotFound, PreconditionFailed, Sam3Error, Unavailable
from serve_app.storage.keys import probe_key

log = logging.getLogger("serve_app.storage")

CONDITIONAL_RECHECK_S = 60  # a store found not to enforce conditional writes is probed again after this
_UNREACHABLE_RECHECK_S = 5.0  # a probe that could not reach storage is not retried sooner (callers get 503)
_PROBE_LOCK = threading.Lock()  # probes are rare (once per store, then on failure): one at a time per process

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (but the last); SeaweedFS enforces it too (EntityTooSmall)
MAX_PART_BYTES = 5 * 1024 * 1024 * 1024  # S3's largest part
DEFAULT_PART_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    """Metadata of one stored object. `content_type` is None in `list` results (S3 does not return it)."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None


@dataclass(frozen=True)
class Blob:
    """An object's bytes with its metadata."""

    data: bytes
    info: BlobInfo

    @property
    def etag(self) -> str:
        return self.info.etag

    @property
    def content_type(self) -> str | None:
        return self.info.content_type


@dataclass(frozen=True)
class PresignedRequest:
    """An HTTP request a client may make without credentials until `expires_at` (UTC).

    The client must send exactly `headers` (they are covered by the signature), e.g. for a PUT
    `{"Content-Type": "image/png", "Content-Length": "12345"}`.
    """

    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True)
class ConditionalWrites:
    """The verdict on a store's conditional writes: `enforced`, `not_enforced` (with the `reason`), or
    `unknown` (not probed yet, or storage unreachable: `reason` says which)."""

    state: Literal["enforced", "not_enforced", "unknown"]
    reason: str = ""


class BlobWriter(io.BufferedIOBase):
    """The file object `ArtifactStore.open_writer` yields: write-only and not seekable (see the module
    docstring). `close()` only stops further writes: the store's context manager commits or aborts."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.etag: str | None = None  # set when the object has been committed
        self._bytes_written = 0

    @property
    def bytes_written(self) -> int:
        return self._bytes_written

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        raise io.UnsupportedOperation("a storage writer is a stream: it cannot tell or seek")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        raise io.UnsupportedOperation("a storage writer is a stream: it cannot tell or seek")

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("a storage writer is a stream: it cannot truncate")

    def write(self, data) -> int:  # data: any bytes-like object
        if self.closed:
            raise ValueError(f"write to a closed storage writer ({self.key})")
        with memoryview(data) as view, view.cast("B") as octets:
            self._write(octets)
            self._bytes_written += len(octets)
            return len(octets)

    @abc.abstractmethod
    def _write(self, data: memoryview) -> None:
        """Take `data` (valid only during the call)."""

    @abc.abstractmethod
    def _commit(self) -> str:
        """Make the object visible at the key; return its ETag. Cleans up (aborts) itself if it fails."""

    @abc.abstractmethod
    def _abort(self) -> None:
        """Drop what was written, best effort: never raises, leaves the key as it was."""


def check_part_bytes(part_bytes: int) -> int:
    """`part_bytes` if it is within S3's part limits, else ValueError (a bug in the caller)."""
    if isinstance(part_bytes, bool) or not isinstance(part_bytes, int) or not (
        MIN_PART_BYTES <= part_bytes <= MAX_PART_BYTES
    ):
        raise ValueError(f"part_bytes must be an int from {MIN_PART_BYTES} to {MAX_PART_BYTES}, not {part_bytes!r}")
    return part_bytes


class ArtifactStore(abc.ABC):
    """Blocking object storage; see the module docstring for the contract."""

    # The cached probe verdict (set by conditional_writes, under _PROBE_LOCK): (enforced, reason, monotonic time).
    _conditional_verdict: tuple[bool, str, float] | None = None
    _conditional_unreachable: tuple[Unavailable, float] | None = None

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Store `data` at `key`; return the new ETag. Raises PreconditionFailed if a condition fails."""

    @abc.abstractmethod
    def get(self, key: str) -> Blob:
        """The object at `key`. Raises NotFound."""

    @abc.abstractmethod
    def head(self, key: str) -> BlobInfo:
        """Metadata of the object at `key` (with content_type). Raises NotFound."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` if present."""

    @abc.abstractmethod
    def list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[BlobInfo]:
        """Up to `limit` objects whose key starts with `prefix` and sorts after `start_after`, ascending.

        Page through a prefix by passing the last key of one page as `start_after` of the next.
        """

    @abc.abstractmethod
    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL that GETs `key` over plain HTTP for `expires_s` seconds (the object need not exist yet)."""

    def location(self) -> tuple[str, str] | None:
        """(bucket, root prefix without slashes) of an S3 store; None for stores that are not in a bucket."""
        return None

    def get_from_bucket(self, bucket: str, key: str, max_bytes: int) -> Blob:
        """An object of ANOTHER bucket (s3:// inputs), refused above `max_bytes`. Only the S3 backend reads
        foreign buckets; the others raise InvalidInput (code url_not_allowed)."""
        raise InvalidInput("s3:// urls need the S3 storage backend", "url_not_allowed")

    def verify_presigned(self, method: str, key: str, expires: str | int, sig: str, *,
                         content_type: str | None = None, content_length: int | None = None) -> None:
        """Check a presigned URL this service serves itself (the /v1/blobs route of the file:// backend).
        Backends whose URLs point at object storage serve nothing here: NotFound."""
        raise NotFound("blobs are served by object storage in this deployment", "not_found")

    @abc.abstractmethod
    def presign_put(
        self, key: str, content_type: str, expires_s: int, content_length: int | None = None
    ) -> PresignedRequest:
        """A PUT request that writes `key` for `expires_s` seconds.

        The signature covers `content_type` and, when given, the exact `content_length`: a client that
        sends another type or size is rejected by the storage (403), which is how a size limit is enforced.
        """

    # -- streaming writes and listing helpers ------------------------------------------------------

    @contextlib.contextmanager
    def open_writer(
        self, key: str, content_type: str = "application/octet-stream", *, part_bytes: int = DEFAULT_PART_BYTES
    ) -> Iterator[BlobWriter]:
        """A context manager yielding a non-seekable file that streams an object to `key`: visible, atomically,
        when the block exits normally; aborted (nothing changes at `key`) if it raises. Memory ~ `part_bytes`.
        Raises InvalidInput for an unsafe key and ValueError for `part_bytes` outside S3's part limits."""
        writer = self._new_writer(key, content_type, check_part_bytes(part_bytes))
        try:
            yield writer
            writer.close()  # no more writes (flushes)
        except BaseException:
            writer._abort()
            with contextlib.suppress(Exception):
                writer.close()
            raise
        writer.etag = writer._commit()

    def _new_writer(self, key: str, content_type: str, part_bytes: int) -> BlobWriter:
        """The backend's BlobWriter for `open_writer` (checks `key`); a store that cannot stream raises."""
        raise NotImplementedError(f"{type(self).__name__} cannot stream objects (open_writer)")

    def iter_list(self, prefix: str, *, page: int = 1000) -> Iterator[BlobInfo]:
        """Every object under `prefix`, ascending (as `list`), fetched `page` at a time."""
        if page < 1:
            raise ValueError(f"page must be positive, not {page!r}")
        start_after: str | None = None
        while True:
            batch = self.list(prefix, start_after=start_after, limit=page)
            yield from batch
            if len(batch) < page:
                return
            start_after = batch[-1].key

    def usage(self, prefix: str) -> tuple[int, int]:
        """(number of objects, total bytes) under `prefix`: a full listing, no object is read."""
        count = total = 0
        for info in self.iter_list(prefix):
            count += 1
            total += info.size
        return count, total

    # -- conditional writes: checked at start, not assumed ----------------------------------------

    def probe_conditional_writes(self) -> str | None:
        """Check now that this store enforces If-None-Match / If-Match on put; None if it does, else what it
        failed to enforce. Uses and then deletes a fresh key under `sys/`. Raises Unavailable if storage
        cannot be reached (no verdict)."""
        key = probe_key()
        try:
            try:
                etag = self.put(key, b"probe-1", "text/plain", if_none_match=True)
            except PreconditionFailed:
                return "a create-if-absent write (If-None-Match: *) of a new key was refused"
            try:
                self.put(key, b"probe-2", "text/plain", if_none_match=True)
                return "If-None-Match: * on an existing key was not enforced (the write replaced the object)"
            except PreconditionFailed:
                pass
            try:
                self.put(key, b"probe-3", "text/plain", if_match=f'"{secrets.token_hex(16)}"')
                return "If-Match with a wrong ETag was not enforced (the write replaced the object)"
            except PreconditionFailed:
                pass
            if self.get(key).data != b"probe-1":
                return "a write refused with 412 Precondition Failed changed the object anyway"
            try:
                self.put(key, b"probe-4", "text/plain", if_match=etag)
            except PreconditionFailed:
                return "If-Match with the object's own ETag (as returned by the put) was refused"
            return None
        finally:
            with contextlib.suppress(Sam3Error):
                self.delete(key)

    def conditional_writes(self, probe: bool = True) -> ConditionalWrites:
        """The cached verdict; with `probe`, runs the probe first when there is none yet (or a negative one is
        older than CONDITIONAL_RECHECK_S). Never raises: storage unreachable is `unknown`."""
        try:
            enforced, reason = self._verdict(probe)
        except Unavailable as exc:
            return ConditionalWrites("unknown", f"object storage is unreachable: {exc.message}")
        except _NotProbed:
            return ConditionalWrites("unknown", "not probed yet")
        return ConditionalWrites("enforced") if enforced else ConditionalWrites("not_enforced", reason)

    def require_conditional_writes(self) -> None:
        """Return if this store enforces conditional writes (probing once if needed), else raise Unavailable
        (code `storage_not_conditional`, Retry-After CONDITIONAL_RECHECK_S). Raises Unavailable
        (storage_unavailable) while storage cannot be reached to find out."""
        enforced, reason = self._verdict(True)
        if not enforced:
            raise Unavailable(
                f"jobs are refused: object storage does not enforce conditional writes ({reason}); "
                "use an S3-compatible server that does", "storage_not_conditional",
                retry_after_s=CONDITIONAL_RECHECK_S,
            )

    def _verdict(self, probe: bool) -> tuple[bool, str]:
        with _PROBE_LOCK:
            now = time.monotonic()
            cached = self._conditional_verdict
            if cached is not None and (cached[0] or not probe or now - cached[2] < CONDITIONAL_RECHECK_S):
                return cached[0], cached[1]
            if not probe:
                raise _NotProbed()
            unreachable = self._conditional_unreachable
            if unreachable is not None and now - unreachable[1] < _UNREACHABLE_RECHECK_S:
                raise unreachable[0]
            try:
                problem = self.probe_conditional_writes()
            except Unavailable as exc:
                self._conditional_unreachable = (exc, time.monotonic())
                raise
            self._conditional_unreachable = None
            self._conditional_verdict = (problem is None, problem or "", time.monotonic())
            if problem is not None:
                log.error("object storage does not enforce conditional writes: %s; jobs are refused", problem)
            return problem is None, problem or ""


class _NotProbed(Exception):
    """conditional_writes(probe=False) before any probe ran."""
