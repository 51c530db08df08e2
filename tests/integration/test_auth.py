"""API keys over real Serve HTTP (the `auth_url` app of tests/conftest.py: auth.mode api_keys, two tenants, one
CORS origin). Every route of the app's own OpenAPI, with each of its methods, refuses a request without a key
(401 missing_api_key) and with a wrong key (401 invalid_api_key): the route list is read from the running app,
so a new route is covered without touching this file. The public routes answer without a key; valid keys reach
the routes; WebSockets take the key as a query parameter; CORS preflights are answered for the allowed origin only.

The main app (auth.mode none) answers without keys: the rest of the suite proves that."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest import ACME_KEY, AUTH_CORS_ORIGIN, GLOBEX_KEY
from tests.helpers import png_bytes

PUBLIC = {("/healthz", "get"), ("/readyz", "get")}
METHODS = ("get", "post", "put", "patch", "delete")
WRONG_KEY = "not-a-configured-key"


@pytest.fixture(scope="module")
def client(auth_url):
    with httpx.Client(base_url=auth_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client) -> dict:
    r = client.get("/openapi.json", headers={"X-API-Key": ACME_KEY})
    assert r.status_code == 200, r.text
    return r.json()


def operations(spec: dict) -> list[tuple[str, str, str]]:
    """(method, OpenAPI path, concrete URL path) of every operation; path parameters get valid-looking dummies."""
    found = []
    for path, item in spec["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            params = {p["name"]: p.get("schema", {}) for p in op.get("parameters", []) + item.get("parameters", [])
                      if p.get("in") == "path"}

            def dummy(m: re.Match) -> str:
                kind = params.get(m.group(1).split(":")[0], {}).get("type")
                return "0" if kind == "integer" else "dummy-id-1"

            found.append((method, path, re.sub(r"\{([^}]+)\}", dummy, path)))
    return found


def assert_401(r: httpx.Response, code: str, what: str) -> None:
    assert r.status_code == 401, (what, r.status_code, r.text)
    assert r.headers.get("www-authenticate") == 'Bearer realm="sam3"', what
    error = r.json()["error"]
    assert error["code"] == code, (what, error)
    assert error["request_id"] and error["request_id"] == r.headers.get("x-request-id"), (what, error, r.headers)
    assert ACME_KEY not in r.text and WRONG_KEY not in r.text


def test_the_openapi_lists_the_api(spec):
    ops = operations(spec)
    paths = {path for _, path, _ in ops}
    assert {"/v1/pcs/image", "/v1/jobs", "/v1/video/sessions/{sid}", "/healthz"} <= paths, sorted(paths)
    assert len(ops) >= 20


def test_every_route_refuses_requests_without_a_valid_key(client, spec):
    checked = 0
    for method, path, url in operations(spec):
        if (path, method) in PUBLIC:
            continue
        what = f"{method.upper()} {path}"
        assert_401(client.request(method, url), "missing_api_key", what)
        assert_401(client.request(method, url, headers={"X-API-Key": WRONG_KEY}), "invalid_api_key", what)
        assert_401(client.request(method, url, headers={"Authorization": f"Bearer {WRONG_KEY}"}), "invalid_api_key",
                   what)
        checked += 1
    assert checked >= 20


def test_public_routes_answer_without_a_key(client, spec):
    for method, path, url in operations(spec):
        if (path, method) in PUBLIC:
            r = client.request(method, url)
            assert r.status_code != 401, (path, r.text)
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/docs", "/redoc", "/openapi.json"):  # auth.public_docs defaults to true
        assert client.get(path).status_code == 200, path
    # presigned-URL route of the file:// backend (this app stores on S3: 404, but not a 401)
    r = client.get("/v1/blobs/t/acme/images/x", params={"expires": "1", "sig": "x"})
    assert r.status_code != 401, r.text


def test_readyz_tells_an_anonymous_caller_nothing_about_tenants(client):
    r = client.get("/readyz")
    assert r.status_code in (200, 503), r.text
    body = r.json()
    assert set(body) <= {"state", "deployments", "reason", "jobs", "storage"}, body
    for tenant in ("acme", "globex"):
        assert f"t/{tenant}" not in r.text and f'"{tenant}"' not in r.text


def test_valid_keys_reach_the_routes(client):
    for headers in ({"Authorization": f"Bearer {ACME_KEY}"}, {"X-API-Key": GLOBEX_KEY}):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["jobs"], list)
    r = client.post("/v1/pcs/image", headers={"X-API-Key": ACME_KEY},
                    files={"image": ("a.png", png_bytes(seed=5), "image/png")}, data={"text": "car", "threshold": "0"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (130, 90) and body["results"][0]["instances"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_websocket_needs_a_key(auth_url):
    from websockets.exceptions import InvalidHandshake
    from websockets.sync.client import connect

    ws_url = auth_url.replace("http", "ws", 1) + "/v1/video/sessions/no-such-session/ws"
    for url in (ws_url, f"{ws_url}?api_key={WRONG_KEY}"):
        with pytest.raises(InvalidHandshake) as refused:  # the handshake is answered 401 (or 403), never opened
            with connect(url, open_timeout=60):
                pass
        status = getattr(getattr(refused.value, "response", None), "status_code", None)
        assert status in (401, 403), refused.value
    with connect(f"{ws_url}?api_key={ACME_KEY}", open_timeout=60) as ws:  # browsers cannot set headers: query
        ws.send(json.dumps({"action": "start", "direction": "forward"}))
        message = json.loads(ws.recv(timeout=60))
    assert message["type"] == "error" and "not_found" in message["error"]["code"], message
    with connect(ws_url, additional_headers={"X-API-Key": GLOBEX_KEY}, open_timeout=60) as ws:
        ws.send(json.dumps({"action": "cancel"}))
        message = json.loads(ws.recv(timeout=60))
    assert message["type"] == "error" and "not_found" in message["error"]["code"], message


PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def test_cors_preflight_for_the_allowed_origin_only(client):
    r = client.options("/v1/pcs/image", headers={"Origin": AUTH_CORS_ORIGIN, **PREFLIGHT})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == AUTH_CORS_ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = client.options("/v1/pcs/image", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/jobs", headers={"Origin": AUTH_CORS_ORIGIN})  # the 401 is readable by the page
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == AUTH_CORS_ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
