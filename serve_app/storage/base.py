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

The methods block (network or disk I/O). From asyncio code call them through `asyncio.to_thread`,
e.g. `blob = await asyncio.to_thread(store.get, key)`; stores are thread-safe.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime

from serve_app.errors import InvalidInput, NotFound


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


class ArtifactStore(abc.ABC):
    """Blocking object storage; see the module docstring for the contract."""

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
