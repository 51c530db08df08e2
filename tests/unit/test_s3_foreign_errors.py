"""`s3://` inputs on buckets that are not ours: every refusal S3 can answer maps to a 4xx with a stable code
(the client's reference is wrong) or to 503 + Retry-After (throttling, S3 failing, our credentials), never
to a 500 storage_error. A botocore Stubber answers instead of a server, so any S3 error code can be played;
tests/integration/test_hostile_edges_http.py checks the same over HTTP against SeaweedFS."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.config import LimitsConfig, StorageConfig
from serve_app.errors import Forbidden, InvalidInput, NotFound, Unavailable
from serve_app.pipelines.image_library import ImageLibrary
from serve_app.schemas import ImageRef


@pytest.fixture
def stubbed(aws_env):
    """(S3Store whose client answers from a Stubber, the ImageLibrary reading `s3://inputs/...` with it)."""
    from botocore.stub import Stubber

    from serve_app.storage.s3 import S3Store

    cfg = StorageConfig(uri="s3://own-bucket/p", endpoint_url="http://127.0.0.1:9", region="us-east-1",
                        allowed_url_buckets=["inputs"], max_attempts=1, retry_after_s=4)
    store = S3Store(cfg)
    with Stubber(store._client) as stubber:
        yield stubber, ImageLibrary(store, cfg, LimitsConfig())
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize("s3_code, http, error, status, code", [
    # the client's reference: 4xx
    ("AuthorizationHeaderMalformed", 400, InvalidInput, 400, "url_rejected"),  # a bucket in another region
    ("PermanentRedirect", 301, InvalidInput, 400, "url_rejected"),  # ... or behind another endpoint
    ("InvalidBucketName", 400, InvalidInput, 400, "url_rejected"),
    ("MethodNotAllowed", 405, InvalidInput, 400, "url_rejected"),
    ("AccessDenied", 403, Forbidden, 403, "url_forbidden"),
    ("AllAccessDisabled", 403, Forbidden, 403, "url_forbidden"),
    ("AccountProblem", 403, Forbidden, 403, "url_forbidden"),
    ("NoSuchBucket", 404, NotFound, 404, "image_not_found"),
    ("NoSuchKey", 404, NotFound, 404, "image_not_found"),
    ("SomethingNew", 404, NotFound, 404, "image_not_found"),
    # the dependency: 503 with the store's Retry-After
    ("SlowDown", 503, Unavailable, 503, "storage_unavailable"),
    ("InternalError", 500, Unavailable, 503, "storage_unavailable"),
    ("SomethingNew", 502, Unavailable, 503, "storage_unavailable"),
    ("TooManyRequests", 429, Unavailable, 503, "storage_unavailable"),
    ("InvalidAccessKeyId", 403, Unavailable, 503, "storage_unavailable"),  # our credentials
    ("SignatureDoesNotMatch", 403, Unavailable, 503, "storage_unavailable"),
    ("ExpiredToken", 400, Unavailable, 503, "storage_unavailable"),
])
def test_foreign_bucket_errors_are_4xx_or_503_never_500(stubbed, s3_code, http, error, status, code):
    stubber, library = stubbed
    stubber.add_client_error("get_object", service_error_code=s3_code, http_status_code=http,
                             expected_params={"Bucket": "inputs", "Key": "a/b.png"})
    with pytest.raises(error) as exc:
        asyncio.run(library.load(ImageRef(url="s3://inputs/a/b.png")))
    assert (exc.value.status_code, exc.value.code) == (status, code), exc.value.message
    assert "s3://inputs/a/b.png" in exc.value.message
    if status == 503:
        assert exc.value.retry_after_s == 4
