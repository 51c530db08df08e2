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
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from serve_app.model.concept import ConceptRunner
from serve_app.pipelines.remote import translate_handle_error as to_sam3_error
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
    """The ConceptSegmenter's two methods, in-process (raise_if_error: the deployment's error protocol)."""

    def __init__(self, runner):
        from serve_app.deployments.base import raise_if_error

        self.info = _Method(lambda: runner.info)
        self.segment = _Method(lambda r: raise_if_error(runner.segment_batch([r])[0]))

    def options(self, **_):
        return self


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    cfg = AppConfig.model_validate({"model": {"model_id": tiny_model_dir},
                                    "limits": {"max_image_bytes": 200_000, "max_image_pixels": 1_000_000},
                                    "storage": {"uri": f"file://{tmp_path_factory.mktemp('store')}"}})
    handle = InProcessHandle(ConceptRunner.from_config(cfg.model))
    app = create_app()
    app.state.ctx = IngressContext.create(cfg, handle, click=None, job_worker=None, sessions=None)
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
    for media_type in ("application/json", "multipart/form-data"):  # both describe the image field
        assert "image" in content[media_type]["schema"]["properties"], media_type


def test_openapi_error_responses_are_the_error_body_with_a_request_id(client):
    """Every documented 4xx/5xx is {"error": {code, message, request_id}} (what the handlers send), and the
    spec itself gets a generated x-request-id like every response (standalone, no Serve proxy)."""
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["x-request-id"]
    spec = r.json()
    schemas = spec["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert schemas["ErrorBody"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "request_id"}
    documented, wrong = 0, []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    documented += 1
                    schema = response.get("content", {}).get("application/json", {}).get("schema")
                    if schema != error_ref:
                        wrong.append(f"{method.upper()} {path} {status}: {json.dumps(schema)}")
    assert documented and not wrong, "error responses not documented as ErrorBody:\n" + "\n".join(wrong)


def _app_raising(exc: BaseException, retry_after_s: int = 7) -> TestClient:
    """The real error handling on a one-route app whose route raises `exc`; config Retry-After = 7."""
    from types import SimpleNamespace

    app = create_app()
    app.state.ctx = SimpleNamespace(config=AppConfig.model_validate({"ingress": {"retry_after_s": retry_after_s}}))

    @app.get("/boom")
    async def boom():
        raise exc

    return TestClient(app, raise_server_exceptions=False)


def test_bugs_are_500_with_the_message_hidden(caplog):
    from serve_app.errors import Sam3Error

    class Internal(Sam3Error):
        status_code = 500
        code = "storage_bug"

    for exc in (KeyError("secret detail"), Internal("secret detail")):
        r = _app_raising(exc).get("/boom", headers={"x-request-id": "rid-500"})
        assert r.status_code == 500, r.text
        assert r.json()["error"] == {"code": "internal_error", "request_id": "rid-500",
                                     "message": "internal error; quote the request id when reporting it"}
        assert "secret detail" not in r.text
    assert any(rec.exc_info for rec in caplog.records if "rid-500" in rec.getMessage())  # stack logged


def test_retry_after_comes_from_config_unless_the_error_has_its_own():
    from serve_app.errors import Overloaded

    r = _app_raising(Unavailable("model replicas are unavailable", "model_unavailable")).get("/boom")
    assert (r.status_code, r.headers["Retry-After"]) == (503, "7")
    r = _app_raising(Overloaded("busy")).get("/boom")
    assert (r.status_code, r.headers["Retry-After"]) == (429, "7")
    r = _app_raising(Unavailable("s3 down", "storage_unavailable", retry_after_s=3)).get("/boom")
    assert (r.status_code, r.headers["Retry-After"]) == (503, "3")


def test_a_stray_timeout_outside_a_model_call_is_a_bug_not_a_504():
    r = _app_raising(TimeoutError("socket")).get("/boom")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


def test_chunked_multipart_without_content_length_is_cut_off_at_the_limit(client):
    """No Content-Length to check up front: the body is counted while it streams and refused once over the
    limit (200 kB image + 1 MiB of form fields here), not spooled to the end first."""
    boundary = "sam3boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    def body():
        yield head
        for _ in range(64):  # 64 x 64 kB = 4 MiB, far over the limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/pcs/image", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    # body_too_large (the stream's cap), not image_too_large (what reading the spooled file would say)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert r.headers["x-request-id"]
    ok = client.post("/v1/pcs/image", files={"image": ("x.png", png_bytes(), "image/png")}, data={"text": "car"})
    assert ok.status_code == 200  # the replica serves on


def test_large_json_bodies_are_parsed_off_the_event_loop(client, monkeypatch):
    """Bodies over INLINE_PARSE_BYTES are parsed and validated on the CPU pool; small ones inline."""
    from serve_app.ingress import body as body_module

    calls = []
    real = body_module.run_cpu

    async def counting(fn, *args, **kwargs):
        calls.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(body_module, "run_cpu", counting)
    from tests.helpers import b64

    small = {"image": {"base64": b64(png_bytes())}, "prompts": [{"text": "car"}]}
    assert client.post("/v1/pcs/image", json=small).status_code == 200
    assert calls == []
    big = {**small, "padding_that_is_not_a_field": "x" * (body_module.INLINE_PARSE_BYTES + 1)}
    r = client.post("/v1/pcs/image", json=big)
    assert r.status_code == 422 and len(calls) == 1  # an unknown field: rejected, by the pool's parse


def _app_with_inner_middleware(inner) -> TestClient:
    """create_app's app with `inner` (a pure ASGI wrapper) put around its router: inside every middleware and
    past the exception handlers' reach (Starlette's ExceptionMiddleware handles only what routes raise)."""
    app = create_app()

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    app.router = inner(app.router)  # type: ignore[assignment]  # the router is the innermost ASGI app
    return TestClient(app, raise_server_exceptions=False)


def test_request_id_is_echoed_exactly_once_even_when_a_route_sets_its_own():
    app = create_app()

    @app.get("/own")
    async def own():
        from fastapi.responses import JSONResponse
        return JSONResponse({}, headers={"x-request-id": "route-made"})

    client = TestClient(app)
    r = client.get("/own", headers={"x-request-id": "client-rid"})
    assert r.headers.get_list("x-request-id") == ["client-rid"]
    long = "a" * 300
    assert client.get("/own", headers={"x-request-id": long}).headers.get_list("x-request-id") == [long[:128]]
    generated = client.get("/own").headers.get_list("x-request-id")
    assert len(generated) == 1 and len(generated[0]) == 32 and generated[0] != "route-made"


def test_request_id_middleware_sends_nothing_extra_behind_the_proxy():
    """echo=False (inside a Serve replica): the proxy appends the header; the app must not add a second."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from serve_app.ingress.error_handling import RequestIdMiddleware

    async def seen(request):
        return PlainTextResponse(request.state.request_id)

    app = RequestIdMiddleware(Starlette(routes=[Route("/", seen)]), echo=False)
    r = TestClient(app).get("/", headers={"x-request-id": "from-proxy"})
    assert r.text == "from-proxy" and "x-request-id" not in r.headers


def test_an_error_raised_in_the_middleware_chain_gets_the_error_body_and_request_id(caplog):
    """Raised past the exception handlers (in a middleware, before any response): 500 internal_error with the
    request id, not a bare 'Internal Server Error'; the next request is served."""

    def failing(app):
        async def asgi(scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/ok" and scope.get("query_string") == b"fail=1":
                raise RuntimeError("secret middleware detail")
            await app(scope, receive, send)
        return asgi

    client = _app_with_inner_middleware(failing)
    r = client.get("/ok?fail=1", headers={"x-request-id": "rid-mw"})
    assert r.status_code == 500
    assert r.json()["error"] == {"code": "internal_error", "request_id": "rid-mw",
                                 "message": "internal error; quote the request id when reporting it"}
    assert r.headers.get_list("x-request-id") == ["rid-mw"] and "secret" not in r.text
    assert client.get("/ok").json() == {"ok": True}
