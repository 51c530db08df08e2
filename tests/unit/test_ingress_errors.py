"""The ingress app without Ray: every bad input gets its 4xx + error code + request id.

The FastAPI app is the real one; the model is the real tiny ConceptRunner called in-process through a
handle-shaped adapter (the same requests are repeated over real Serve HTTP in tests/integration).
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig
from serve_app.errors import Sam3Error, Unavailable
from serve_app.ingress.app import create_app
from serve_app.ingress.context import IngressContext
from serve_app.model.concept import ConceptRunner
from serve_app.pipelines.remote import translate_remote_error as to_sam3_error
from tests.bad_inputs import BAD_REQUESTS, send
from tests.helpers import png_bytes


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)
        return call()


class InProcessHandle:
    def __init__(self, runner):
        self.info = _Method(lambda: runner.info)
        self.segment = _Method(lambda r: runner.run([r])[0])


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    cfg = AppConfig.model_validate({"model": {"model_id": tiny_model_dir},
                                    "limits": {"max_image_bytes": 200_000, "max_image_pixels": 1_000_000},
                                    "storage": {"uri": f"file://{tmp_path_factory.mktemp('store')}"}})
    handle = InProcessHandle(ConceptRunner.from_config(cfg.model))
    app = create_app()
    app.state.ctx = IngressContext.create(cfg, handle)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c.name for c in BAD_REQUESTS])
def test_bad_input_gets_4xx_with_code_and_request_id(client, case):
    r = send(client.post, "/v1/pcs/image", case, request_id="rid-123")
    assert r.status_code == case.status, r.text
    body = r.json()
    assert body["error"]["code"] == case.code
    assert body["error"]["request_id"] == "rid-123"
    assert body["error"]["message"]


def test_good_request_still_works_after_bad_ones(client):
    r = client.post("/v1/pcs/image", files={"image": ("a.png", png_bytes(), "image/png")},
                    data={"text": "car", "threshold": "0"})
    assert r.status_code == 200
    assert len(r.json()["results"][0]["instances"]) == 32
    assert r.headers["x-request-id"] == r.json()["request_id"]


def test_unknown_route_uses_error_body(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_ray_and_serve_failures_map_to_retryable_statuses():
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    assert to_sam3_error(BackPressureError(num_queued_requests=5, max_queued_requests=4)).status_code == 429
    assert to_sam3_error(DeploymentUnavailableError("ConceptSegmenter")).status_code == 503
    assert to_sam3_error(TimeoutError()).status_code == 504
    assert to_sam3_error(KeyError("bug")) is None


def test_errors_survive_pickling_like_the_ray_boundary():
    import pickle

    err = pickle.loads(pickle.dumps(Unavailable("s3 down", "storage_unavailable", retry_after_s=7)))
    assert isinstance(err, Sam3Error) and err.status_code == 503
    assert (err.code, err.message, err.retry_after_s) == ("storage_unavailable", "s3 down", 7)


def test_openapi_documents_both_body_types(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/pcs/image"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert json.dumps(spec)  # serialisable
