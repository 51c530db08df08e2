"""`S3Store`: the ArtifactStore on AWS S3 or an S3-compatible server (MinIO, SeaweedFS), through boto3.

- Location: `storage.uri = s3://bucket/prefix`; every key is stored as `prefix/key`.
- Endpoint: `storage.endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (read by botocore), else AWS.
- Credentials: the default AWS chain (env, profile, IRSA web identity, instance metadata); never config.
- Resilience: botocore "adaptive" retries (`storage.max_attempts` attempts, client-side rate limiting when
  throttled), per-attempt `connect_timeout_s` / `read_timeout_s`, a pool of `max_pool_connections`.
- Conditional writes: `IfNoneMatch="*"` / `IfMatch=etag` on PutObject (AWS since 2024, MinIO, SeaweedFS).
  botocore knows IfNoneMatch from 1.35.2 and IfMatch from 1.35.69 (hence `boto3>=1.35.69`); the start-up
  probe (base.py) reports an older botocore, and a server that ignores the headers, as not enforced.
  A conditional write retried after a lost response may report PreconditionFailed although it landed:
  callers treat PreconditionFailed as "re-read and decide" (JobService does), never as "nothing changed".
- Presigned URLs: SigV4 query signatures; a PUT signs Content-Type (and Content-Length when given).
  With temporary credentials (IRSA) a URL also dies when those credentials expire.
- Streaming writes (`open_writer`): an object of at most one part is one PutObject at the end; a larger one
  is a multipart upload (CreateMultipartUpload when the second part begins, UploadPart per `part_bytes`,
  all parts the same size but the last, CompleteMultipartUpload on success), aborted on failure, best effort
  and logged. Give the bucket a lifecycle rule AbortIncompleteMultipartUpload for uploads whose abort was
  lost (a killed process): their parts are billed storage until then. At most MAX_PARTS parts: an object
  larger than MAX_PARTS * part_bytes raises PayloadTooLarge. SeaweedFS, like AWS, refuses parts under
  5 MiB (EntityTooSmall at CompleteMultipartUpload).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from botocore.utils import determine_content_length

from serve_app.config import StorageConfig
from serve_app.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Sam3Error,
    Unavailable,
)
from serve_app.storage.base import ArtifactStore, Blob, BlobInfo, BlobWriter, PresignedRequest
from serve_app.storage.keys import check_key

if TYPE_CHECKING:  # boto3-stubs (dev extra): request shapes as TypedDicts
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ListObjectsV2RequestTypeDef

log = logging.getLogger("serve_app.storage")

MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
# GetObject on an `s3://` input: the client's object or key is the problem (4xx), not our storage.
_FOREIGN_STATE_CODES = {"InvalidObjectState", "InvalidRequest"}  # archived; SSE-C object without its key
_FOREIGN_KEY_CODES = {"KeyTooLongError", "InvalidURI", "InvalidObjectName", "InvalidArgument"}
_UNAVAILABLE_CODES = {  # throttling and server-side trouble that a later retry can fix
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "ServiceUnavailable", "InternalError", "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix") (prefix without surrounding slashes)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return bucket, prefix


def _no_continue_for_empty_body(params: dict, **_) -> None:
    """Drop botocore's `Expect: 100-continue` from requests with an empty body: some S3-compatible servers
    (SeaweedFS) answer those so that the pooled connection stalls the next request for a read timeout."""
    body = params.get("body")
    if "Expect" in params.get("headers", {}) and hasattr(body, "read") and determine_content_length(body) == 0:
        del params["headers"]["Expect"]


class S3Store(ArtifactStore):
    def __init__(self, cfg: StorageConfig):
        self.bucket, self._prefix = parse_s3_uri(cfg.uri)
        self._retry_after_s = cfg.retry_after_s
        session = boto3.session.Session()
        client_cfg = Config(
            signature_version="s3v4",
            retries={"mode": "adaptive", "max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            max_pool_connections=cfg.max_pool_connections,
            s3={"addressing_style": cfg.addressing_style},
        )
        self._client = session.client(
            "s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url, config=client_cfg
        )
        self._client.meta.events.register_last("before-call.s3", _no_continue_for_empty_body)
        self._presigner = self._client
        if cfg.presign_endpoint_url:
            self._presigner = session.client(
                "s3", region_name=cfg.region, endpoint_url=cfg.presign_endpoint_url, config=client_cfg
            )

    # -- key mapping -------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self._prefix) + 1:] if self._prefix else full_key

    # -- error mapping -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, op: str, key: str) -> Iterator[None]:
        """Map botocore failures to NotFound / PreconditionFailed / Unavailable (anything else: a 500)."""
        try:
            yield
        except ClientError as exc:
            raise self._from_client_error(exc, op, key) from exc
        except ParamValidationError:
            raise  # a bug in how we call boto3
        except BotoCoreError as exc:  # connection refused/reset, timeouts, no credentials, broken stream
            raise Unavailable(
                f"object storage is unreachable ({type(exc).__name__} during {op})",
                "storage_unavailable", retry_after_s=self._retry_after_s,
            ) from exc

    def _from_client_error(self, exc: ClientError, op: str, key: str) -> Sam3Error:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        # AWS answers 403 instead of 404 for a missing key when the role lacks s3:ListBucket: grant it.
        if code in _PRECONDITION_CODES or status == 412:
            return PreconditionFailed(f"conditional {op} of {key} lost: the object changed")
        if code == "NoSuchUpload":  # aborted under us (a lifecycle rule; or completed by a retry whose answer was lost)
            return Unavailable(f"the multipart upload of {key} is gone ({op})", "storage_unavailable",
                               retry_after_s=self._retry_after_s)
        if code in _UNAVAILABLE_CODES or status >= 500 or status in (401, 403, 429):
            return Unavailable(
                f"object storage refused {op} ({code or status})", "storage_unavailable",
                retry_after_s=self._retry_after_s,
            )
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(f"no object at {key}", "object_not_found")
        return Sam3Error(f"object storage rejected {op} ({code or status})", "storage_error")

    def _from_foreign_error(self, exc: ClientError, url: str) -> Sam3Error:
        """Any other refusal to read an `s3://` input (codes not mapped in get_from_bucket): never a 500.
        Throttling, server errors and our own credentials failing are the dependency's trouble (503 +
        Retry-After); otherwise the reference is the client's problem: 404 object_not_found, 403
        url_forbidden, and 400 url_rejected for the rest (AuthorizationHeaderMalformed or PermanentRedirect:
        a bucket in another region or on another endpoint; InvalidBucketName; ...)."""
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            return Unavailable(f"object storage refused get of {url} ({code or status})", "storage_unavailable",
                               retry_after_s=self._retry_after_s)
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(f"no object at {url}", "object_not_found")
        if status in (401, 403):
            return Forbidden(f"the service may not read {url} ({code or status})", "url_forbidden")
        return InvalidInput(f"object storage rejected the request for {url} ({code or status})", "url_rejected")

    # -- ArtifactStore -----------------------------------------------------------------------------

    def probe_conditional_writes(self) -> str | None:
        """As the base probe, after checking that this botocore can send the conditions at all (an older one
        raises ParamValidationError on every conditional put)."""
        shape = self._client.meta.service_model.operation_model("PutObject").input_shape
        members = shape.members if shape is not None else {}
        missing = [name for name in ("IfNoneMatch", "IfMatch") if name not in members]
        if missing:
            return (f"botocore {botocore.__version__} cannot send {' or '.join(missing)} on PutObject "
                    "(install boto3>=1.35.69)")
        return super().probe_conditional_writes()

    def put(self, key, data, content_type="application/octet-stream", *, if_none_match=False, if_match=None):
        if if_none_match and if_match is not None:
            raise ValueError("use if_none_match or if_match, not both")
        args = {"Bucket": self.bucket, "Key": self._full(check_key(key)), "Body": data, "ContentType": content_type}
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match
        with self._translate("put", key):
            return self._client.put_object(**args)["ETag"]

    def _new_writer(self, key: str, content_type: str, part_bytes: int) -> BlobWriter:
        return _S3Writer(self, key, content_type, part_bytes)

    def get(self, key):
        with self._translate("get", key):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._full(check_key(key)))
            data = resp["Body"].read()
        info = BlobInfo(key, len(data), resp["ETag"], resp["LastModified"], resp.get("ContentType"))
        return Blob(data, info)

    def location(self) -> tuple[str, str] | None:
        return self.bucket, self._prefix

    def get_from_bucket(self, bucket: str, key: str, max_bytes: int) -> Blob:
        """An object of another bucket (an `s3://bucket/key` input), read with this store's client and
        credentials. The caller checks that `bucket` is allowed; `key` is the raw S3 key. Raises
        PayloadTooLarge, before reading the body, for an object over `max_bytes`."""
        url = f"s3://{bucket}/{key}"
        with self._translate("get", url):
            try:
                resp = self._client.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:  # the caller's bucket, not ours: its 403/404 are the client's problem
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("AccessDenied", "AllAccessDisabled", "403"):
                    raise Forbidden(f"the service may not read {url}", "url_forbidden") from exc
                if code == "NoSuchBucket":
                    raise NotFound(f"no bucket {bucket}", "object_not_found") from exc
                if code in _FOREIGN_STATE_CODES:  # e.g. archived (Glacier) until restored: never a 503 to retry
                    raise Conflict(f"{url} cannot be read in its current state ({code})", "url_object_unreadable") \
                        from exc
                if code in _FOREIGN_KEY_CODES:
                    raise InvalidInput(f"object storage rejected the key of {url} ({code})", "invalid_url_key") from exc
                raise self._from_foreign_error(exc, url) from exc
            if resp["ContentLength"] > max_bytes:
                resp["Body"].close()
                raise PayloadTooLarge(f"s3://{bucket}/{key} is {resp['ContentLength']} bytes, limit {max_bytes}",
                                      "image_too_large")
            data = resp["Body"].read()
        return Blob(data, BlobInfo(key, len(data), resp["ETag"], resp["LastModified"], resp.get("ContentType")))

    def head(self, key):
        with self._translate("head", key):
            resp = self._client.head_object(Bucket=self.bucket, Key=self._full(check_key(key)))
        return BlobInfo(key, resp["ContentLength"], resp["ETag"], resp["LastModified"], resp.get("ContentType"))

    def delete(self, key):
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(check_key(key)))

    def list(self, prefix, *, start_after=None, limit=1000):
        check_key(prefix, prefix=True)
        args: ListObjectsV2RequestTypeDef = {"Bucket": self.bucket, "Prefix": self._full(prefix)}
        if start_after is not None:
            args["StartAfter"] = self._full(check_key(start_after, prefix=True))
        found: list[BlobInfo] = []
        while len(found) < limit:
            args["MaxKeys"] = min(1000, limit - len(found))
            with self._translate("list", prefix):
                resp = self._client.list_objects_v2(**args)
            for obj in resp.get("Contents", []):
                found.append(BlobInfo(self._relative(obj["Key"]), obj["Size"], obj["ETag"], obj["LastModified"]))
            if not resp.get("IsTruncated"):
                break
            args["ContinuationToken"] = resp["NextContinuationToken"]
        return found[:limit]

    def presign_get(self, key, expires_s):
        params = {"Bucket": self.bucket, "Key": self._full(check_key(key))}
        with self._translate("presign", key):
            return self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    def presign_put(self, key, content_type, expires_s, content_length=None):
        params = {"Bucket": self.bucket, "Key": self._full(check_key(key)), "ContentType": content_type}
        headers = {"Content-Type": content_type}
        if content_length is not None:
            params["ContentLength"] = content_length
            headers["Content-Length"] = str(content_length)
        with self._translate("presign", key):
            url = self._presigner.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_s)
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=expires_s)
        return PresignedRequest(url, "PUT", headers, expires_at)


class _S3Writer(BlobWriter):
    """`S3Store.open_writer`: buffers one part; PutObject for a single part, else a multipart upload."""

    def __init__(self, store: S3Store, key: str, content_type: str, part_bytes: int):
        super().__init__(key)
        self._store = store
        self._client = store._client
        self._full_key = store._full(check_key(key))
        self._content_type = content_type
        self._part_bytes = part_bytes
        self._buf = io.BytesIO()  # at most part_bytes; sent as a part only once more data follows
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    def _write(self, data: memoryview) -> None:
        while data:
            if self._buffered == self._part_bytes:
                self._send_part()
            take = min(self._part_bytes - self._buffered, len(data))
            self._buf.write(data[:take])
            self._buffered += take
            data = data[take:]

    def _send_part(self) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise PayloadTooLarge(
                f"{self.key} is larger than {MAX_PARTS} parts of {self._part_bytes} bytes (raise part_bytes)",
                "object_too_large",
            )
        with self._store._translate("put", self.key):
            if self._upload_id is None:
                self._upload_id = self._client.create_multipart_upload(
                    Bucket=self._store.bucket, Key=self._full_key, ContentType=self._content_type
                )["UploadId"]
            etag = self._client.upload_part(
                Bucket=self._store.bucket, Key=self._full_key, UploadId=self._upload_id, PartNumber=number,
                Body=self._body(),
            )["ETag"]
        self._parts.append({"ETag": etag, "PartNumber": number})
        self._drop_buffer()

    def _body(self) -> io.BytesIO:
        self._buf.seek(0)
        return self._buf

    def _drop_buffer(self) -> None:
        self._buf = io.BytesIO()
        self._buffered = 0

    def _commit(self) -> str:
        try:
            if self._upload_id is None:
                with self._store._translate("put", self.key):
                    return self._client.put_object(
                        Bucket=self._store.bucket, Key=self._full_key, Body=self._body(), ContentType=self._content_type
                    )["ETag"]
            self._send_part()  # the last one: never empty, a full part is sent only when more data follows
            with self._store._translate("put", self.key):
                return self._client.complete_multipart_upload(
                    Bucket=self._store.bucket, Key=self._full_key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )["ETag"]
        except BaseException:
            self._abort()
            raise
        finally:
            self._drop_buffer()

    def _abort(self) -> None:
        self._drop_buffer()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._full_key, UploadId=upload_id)
        except Exception as exc:  # best effort: the caller's own error is the one to raise
            log.warning("could not abort the multipart upload of %s (%s): its parts stay until the bucket's "
                        "lifecycle rule removes them", self.key, exc)
