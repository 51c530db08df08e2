"""Can the configured storage be used, and if not: why, and what fixes it, in ONE line.

`StorageError` is a StartupFailure (serve_app.errors): `sam3-serve: cannot use the storage 's3://b/p'
[storage_bucket_missing]: <cause>. Fix: <fix>`. `classify_storage_error` is the one place that knows the
reasons (wrong endpoint / server down, no credentials, credentials refused, bucket missing, a directory that is
read-only or cannot be created); `check_store` writes, reads back and deletes one small object under `sys/`
and raises the classified error. The ingress opens storage without a network call and starts even while
storage is down (requests needing it answer 503); GET /readyz and `sam3-serve run` report this line.
"""

from __future__ import annotations

import errno
import logging
import os
from urllib.parse import unquote, urlparse

from serve_app.config import StorageConfig
from serve_app.errors import StartupFailure, exception_chain
from serve_app.storage.base import ArtifactStore
from serve_app.storage.keys import RESERVED_PREFIX, new_id

log = logging.getLogger(__name__)

_CREDENTIALS = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an IAM role / IRSA) in the "
                "environment Ray starts with")
_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                 "AllAccessDisabled", "AccountProblem"}
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError", "ConnectionClosedError",
                "ReadTimeoutError", "SSLError", "ConnectionError"}


class StorageError(StartupFailure):
    """Storage that cannot be used, with its cause and fix. Codes: storage_unreachable (retryable),
    storage_no_credentials, storage_access_denied, storage_bucket_missing, storage_not_writable,
    storage_unavailable (retryable: anything else on the way)."""

    code = "storage_unavailable"

    @classmethod
    def of(cls, cfg: StorageConfig, code: str, cause: str, fix: str) -> StorageError:
        return cls(f"cannot use the storage {cfg.uri!r}", code, cause, fix)


def _local_dir(cfg: StorageConfig) -> str:
    return unquote(urlparse(cfg.uri).path)


def _endpoint(cfg: StorageConfig) -> str:
    return cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") \
        or "AWS S3 (no endpoint_url)"


def classify_storage_error(exc: BaseException, cfg: StorageConfig) -> StorageError | None:
    """The known reason behind `exc` (raised while opening or using the storage of `cfg`, with its causes) as a
    StorageError with the fix; None when the reason is not known."""
    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, StorageError):
            return e
    if cfg.uri.startswith("s3://"):
        bucket = urlparse(cfg.uri).netloc
        for e in chain:
            name = type(e).__name__
            if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
                return StorageError.of(cfg, "storage_no_credentials", f"no S3 credentials were found ({name})",
                                       f"set {_CREDENTIALS}")
            if name in _UNREACHABLE:
                return StorageError.of(
                    cfg, "storage_unreachable", f"the S3 endpoint {_endpoint(cfg)} cannot be reached ({name})",
                    "check storage.endpoint_url (or AWS_ENDPOINT_URL) and that the S3 server is running")
            response = getattr(e, "response", None)
            if name == "ClientError" and isinstance(response, dict):
                code = str(response.get("Error", {}).get("Code", ""))
                status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                if code == "NoSuchBucket" or (status == 404 and code in ("", "404", "NotFound")):
                    return StorageError.of(
                        cfg, "storage_bucket_missing", f"the bucket {bucket!r} does not exist at {_endpoint(cfg)}",
                        f"create it (aws s3 mb s3://{bucket}, with --endpoint-url for an S3-compatible server) "
                        "or fix storage.uri / --storage-uri")
                if code in _ACCESS_CODES or status in (401, 403):
                    return StorageError.of(
                        cfg, "storage_access_denied", f"S3 refused the credentials or the access ({code or status})",
                        f"check {_CREDENTIALS}, and grant s3:GetObject, s3:PutObject, s3:DeleteObject and "
                        f"s3:ListBucket on s3://{bucket}")
        return None
    directory = _local_dir(cfg)
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StorageError.of(
                cfg, "storage_not_writable", f"the directory {directory} cannot be written ({e.strerror})",
                f"make {directory} writable by the user Ray runs as, or pass --storage-uri file:///a/writable/dir")
        if isinstance(e, OSError) and e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
            return StorageError.of(
                cfg, "storage_not_writable", f"the directory {directory} cannot be created ({e.strerror})",
                "pass --storage-uri file:///a/writable/dir (storage.uri)")
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return StorageError.of(cfg, "storage_unavailable", f"the disk of {directory} is full",
                                   "free space there or pass --storage-uri file:///another/dir")
    return None


def check_store(store: ArtifactStore, cfg: StorageConfig) -> None:
    """Write, read back and delete one small object under `sys/`; raise StorageError (classified, or
    storage_unavailable with what happened) when that fails."""
    key = f"{RESERVED_PREFIX}probes/readiness/{new_id()}"
    try:
        store.put(key, b"ok", "text/plain")
        store.get(key)
        store.delete(key)
    except Exception as exc:
        known = classify_storage_error(exc, cfg)
        if known is not None:
            raise known from exc
        text = " ".join(str(exc).split())[:200]
        raise StorageError.of(cfg, "storage_unavailable", f"a test write failed ({type(exc).__name__}: {text})",
                              "check storage.uri / --storage-uri and the storage server") from exc


def open_store_explained(cfg: StorageConfig) -> ArtifactStore:
    """`open_store(cfg)` (no network call). Opening fails only for a local directory that cannot be created or
    written: that is logged as its ONE line and raised as StorageError without its chain, so the replica's
    constructor fails with that line (Serve retries it, then marks the deployment DEPLOY_FAILED)."""
    from serve_app.storage import open_store

    try:
        return open_store(cfg)
    except Exception as exc:
        known = classify_storage_error(exc, cfg)
        if known is None:
            raise
        log.error("%s", known.line)
        raise known from None
