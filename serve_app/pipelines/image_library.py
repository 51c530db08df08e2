"""`ImageLibrary`: every way a request can name an image, resolved to bytes; stored images by sha256.

    lib = ImageLibrary(store, cfg.storage, cfg.limits)
    image = await lib.save(data)                  # decode (validates), write t/{tenant}/images/{sha256}
    data = await lib.load(ImageRef(image_id=...))  # base64 | image_id | upload_id | s3://bucket/key
    entries, cursor = await lib.list_stored(limit, cursor)   # GET /v1/images: in image_id order
    await lib.delete_stored(image_id)                        # DELETE /v1/images/{image_id}

Image ids are the sha256 of the file's bytes, so storing the same file twice writes one object. Uploads
(POST /v1/uploads, then a presigned PUT) are checked when first used: size and declared content type
here, decodability by `decode`. An `s3://bucket/key` url is read only from `storage.allowed_url_buckets`
and only with the S3 backend. Storage I/O runs on the replica's storage pool and decoding on its CPU pool
(pipelines/pools.py); storage faults surface as Unavailable (503 + Retry-After), missing objects as NotFound
with a specific code. No torch here.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import timezone

from serve_app.codecs.image_decode import DecodedImage, check_content_type, decode_image
from serve_app.config import LimitsConfig, StorageConfig
from serve_app.errors import InvalidInput, NotFound, PayloadTooLarge, PreconditionFailed
from serve_app.pipelines.pools import run_cpu, run_io
from serve_app.schemas import ImageEntry, ImageRef
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore

_IMAGE_ID = re.compile(r"[0-9a-f]{64}")


def base64_chars(max_bytes: int) -> int:
    """Most base64 characters that can encode `max_bytes` bytes (padding included)."""
    return (max_bytes * 4) // 3 + 8


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Bytes of a base64 image, refusing (413) text that would decode to more than `max_bytes`."""
    if len(text) > base64_chars(max_bytes):
        raise PayloadTooLarge(f"image is over {max_bytes} bytes", "image_too_large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("image.base64 is not valid base64", "invalid_base64") from exc


MAX_S3_KEY_BYTES = 1024  # S3's own limit on a key (UTF-8)
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key). Raises InvalidInput for anything else: unsupported_url (not
    s3://bucket/key), url_key_too_long (key over 1024 UTF-8 bytes), invalid_url_key (not UTF-8, control
    characters, or `.`/`..`/empty path segments that a server or proxy could normalise)."""
    if not url.startswith("s3://"):
        raise InvalidInput("image.url must be s3://bucket/key", "unsupported_url")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket or not key:
        raise InvalidInput("image.url must be s3://bucket/key", "unsupported_url")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("the url's key is not valid Unicode", "invalid_url_key") from None
    if size > MAX_S3_KEY_BYTES:
        raise InvalidInput(f"the url's key is {size} bytes, S3 allows {MAX_S3_KEY_BYTES}", "url_key_too_long")
    if _KEY_CONTROL.search(key) or any(seg in ("", ".", "..") for seg in key.split("/")):
        raise InvalidInput("the url's key has control characters or empty, '.' or '..' segments",
                           "invalid_url_key")
    return bucket, key


def check_url_allowed(storage: StorageConfig, store: ArtifactStore, tenant: str, bucket: str, key: str) -> None:
    """Raise InvalidInput url_not_allowed unless `tenant` may read s3://bucket/key: it must match one of the
    tenant's storage.tenant_url_prefixes entries ("bucket/prefix") if it has any, else its bucket must be in
    storage.allowed_url_buckets; and inside this store's own bucket only the caller's own `t/{tenant}/` keys
    are readable (another tenant's objects and the service's own answer exactly like a bucket not allowed)."""
    refused = InvalidInput(f"s3://{bucket}/... is not an allowed input location for this tenant", "url_not_allowed")
    listed = storage.tenant_url_prefixes.get(tenant)
    if listed is not None:
        if not any(f"{bucket}/{key}".startswith(entry) for entry in listed):
            raise refused
    elif bucket not in storage.allowed_url_buckets:
        raise refused
    own = store.location()
    if own is not None and bucket == own[0]:
        root = f"{own[1]}/" if own[1] else ""
        if not key.startswith(f"{root}{keys.tenant_prefix(tenant)}"):
            raise refused


class ImageLibrary:
    def __init__(self, store: ArtifactStore, storage: StorageConfig, limits: LimitsConfig, tenant: str | None = None):
        """`tenant`: whose images these are (default storage.default_tenant)."""
        self.store = store
        self.tenant = keys.validate_tenant(tenant or storage.default_tenant)
        self.storage = storage
        self.limits = limits

    async def decode(self, data: bytes) -> DecodedImage:
        """Validate and decode (RGB uint8 (H,W,3), EXIF applied). Raises 413/415/400 types."""
        return await run_cpu(
            decode_image, data, max_bytes=self.limits.max_image_bytes, max_pixels=self.limits.max_image_pixels
        )

    async def save(self, data: bytes) -> DecodedImage:
        """Decode `data` (so only images are stored) and keep it at `images/{sha256}`; idempotent."""
        image = await self.decode(data)
        key = keys.image_key(self.tenant, image.sha256)
        try:
            await run_io(self.store.put, key, data, f"image/{image.format.lower()}",
                                    if_none_match=True)
        except PreconditionFailed:
            pass  # already stored: same sha256, same bytes
        return image

    async def load(self, ref: ImageRef) -> bytes:
        """The bytes `ref` names (exactly one of its fields is set)."""
        if ref.base64 is not None:
            return decode_base64_image(ref.base64, self.limits.max_image_bytes)
        if ref.image_id is not None:
            return await self.load_id(ref.image_id)
        if ref.upload_id is not None:
            return await self.load_upload(ref.upload_id)
        assert ref.url is not None  # ImageRef's validator: exactly one field is set
        return await self.load_url(ref.url)

    async def load_id(self, image_id: str) -> bytes:
        """A stored image. Raises InvalidInput (not a sha256) or NotFound (code image_not_found)."""
        key = keys.image_key(self.tenant, keys.validate_sha256(image_id))
        try:
            blob = await run_io(self.store.get, key)
        except NotFound:
            raise NotFound(f"no image {image_id}; upload it with POST /v1/images", "image_not_found") from None
        return blob.data

    async def load_upload(self, upload_id: str) -> bytes:
        """A presigned-PUT upload, checked now: present, within the image size limit, an image type."""
        key = keys.upload_key(self.tenant, upload_id)
        try:
            info = await run_io(self.store.head, key)
        except NotFound:
            raise NotFound(f"no upload {upload_id}: PUT the file to the upload URL first",
                           "upload_not_found") from None
        if info.size > self.limits.max_image_bytes:
            raise PayloadTooLarge(f"upload is {info.size} bytes, image limit {self.limits.max_image_bytes}",
                                  "image_too_large")
        check_content_type(info.content_type)
        return (await run_io(self.store.get, key)).data

    async def load_url(self, url: str) -> bytes:
        """An `s3://bucket/key` object from an allowed bucket (S3 backend only)."""
        bucket, key = parse_s3_url(url)
        check_url_allowed(self.storage, self.store, self.tenant, bucket, key)
        try:
            blob = await run_io(self.store.get_from_bucket, bucket, key, self.limits.max_image_bytes)
        except NotFound:
            raise NotFound(f"no object at {url}", "image_not_found") from None
        return blob.data

    async def list_stored(self, limit: int = 50, cursor: str | None = None) -> tuple[list[ImageEntry], str | None]:
        """Stored images in image_id order (ids are content hashes: no time order) after `cursor` (a previous
        page's next_cursor: an image id), and the next cursor (None at the end). created_at is the object's
        last-modified time."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", "invalid_limit")
        if cursor is not None and not _IMAGE_ID.fullmatch(cursor):
            raise InvalidInput("cursor must be a next_cursor returned by GET /v1/images", "invalid_cursor")
        prefix = keys.tenant_prefix(self.tenant) + "images/"
        start_after = prefix + cursor if cursor is not None else None
        page = await run_io(self.store.list, prefix, start_after=start_after, limit=limit + 1)
        entries = [ImageEntry(image_id=info.key[len(prefix):], size_bytes=info.size,
                              created_at=info.last_modified.astimezone(timezone.utc).isoformat(timespec="seconds"))
                   for info in page[:limit] if _IMAGE_ID.fullmatch(info.key[len(prefix):])]
        return entries, (page[limit - 1].key[len(prefix):] if len(page) > limit else None)

    async def delete_stored(self, image_id: str) -> None:
        """Delete a stored image. NotFound image_not_found; InvalidInput invalid_image_id. (Its cached
        embedding is dropped by the route: ClickPipeline.forget.)"""
        key = keys.image_key(self.tenant, keys.validate_sha256(image_id))
        try:
            await run_io(self.store.head, key)
        except NotFound:
            raise NotFound(f"no image {image_id}", "image_not_found") from None
        await run_io(self.store.delete, key)
