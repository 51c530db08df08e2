"""The web playground's static files (serve_app/ingress/routers/web.py) through the ingress app, without Ray:
redirects, content types, caching headers, the Content-Security-Policy, 404s, and web.enabled false."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from starlette.testclient import TestClient

from serve_app.config import AppConfig
from serve_app.ingress.fastapi_app import create_app
from serve_app.ingress.routers.web import content_security_policy


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(AppConfig()), follow_redirects=False) as c:
        yield c


def test_root_and_ui_redirect_to_the_page(client):
    for path in ("/", "/ui"):
        r = client.get(path)
        assert r.status_code == 307 and r.headers["location"] == "ui/"
    r = client.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="app.js">' in r.text


@pytest.mark.parametrize("name, content_type", [
    ("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"), ("index.html", "text/html; charset=utf-8")])
def test_content_types_and_security_headers(client, name, content_type):
    r = client.get(f"/ui/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == content_type
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'",
                      "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    if name != "index.html":
        assert re.fullmatch(r"public, max-age=\d+", r.headers["cache-control"])
    etag = r.headers["etag"]
    again = client.get(f"/ui/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = client.head(f"/ui/{name}")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(r.content)


def test_every_packaged_file_is_served_and_the_html_has_no_inline_code(client):
    files = [f.name for f in resources.files("serve_app.web").iterdir() if f.name.endswith((".js", ".css", ".html", ".svg"))]
    assert {"index.html", "app.js", "api.js", "rle.js", "draw.js", "style.css"} <= set(files)
    for name in files:
        assert client.get(f"/ui/{name}").status_code == 200, name
    html = client.get("/ui/index.html").text
    # the CSP forbids inline scripts, inline styles and handlers: the page must not need them
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html and "<style" not in html and not re.search(r"\son[a-z]+=", html)
    for script in re.findall(r'src="([^"]+)"', html) + re.findall(r'href="([^"]+\.(?:css|svg))"', html):
        assert not script.startswith(("http:", "https:", "//")), script  # everything vendored, same origin


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/../pyproject.toml", "/ui/__init__.py", "/ui/a%2F..%2Fapp.js",
                                  "/ui/%2e%2e/config.py", "/ui/app.py", "/ui/.hidden.js", "/ui/x%00.js"])
def test_unknown_or_unsafe_names_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, path
    if r.headers.get("content-type", "").startswith("application/json"):
        assert r.json()["error"]["code"] in ("web_file_not_found", "not_found")


def test_disabled_page_is_404():
    app = create_app(AppConfig(web={"enabled": False}))
    with TestClient(app, follow_redirects=False) as c:
        for path in ("/", "/ui", "/ui/", "/ui/app.js"):
            assert c.get(path).status_code == 404, path


def test_csp_allows_the_storage_origin_of_presigned_uploads():
    s3 = AppConfig(storage={"uri": "s3://bucket/prefix", "endpoint_url": "http://seaweed:8333"})
    assert "connect-src 'self' http://seaweed:8333;" in content_security_policy(s3)
    public = AppConfig(storage={"uri": "s3://b/p", "endpoint_url": "http://minio:9000",
                                "presign_endpoint_url": "https://s3.example.com/base"})
    assert "connect-src 'self' https://s3.example.com;" in content_security_policy(public)
    local = AppConfig(storage={"uri": "file:///tmp/x", "public_base_url": "http://127.0.0.1:8000"})
    assert "connect-src 'self' http://127.0.0.1:8000;" in content_security_policy(local)
    assert "connect-src 'self';" in content_security_policy(None)


def test_redirects_stay_under_a_route_prefix():
    """Served at /auth (Serve strips the prefix into root_path): /auth and /auth/ both land on /auth/ui/."""
    with TestClient(create_app(AppConfig()), follow_redirects=False, root_path="/auth") as c:
        assert c.get("/auth/").headers["location"] == "ui/"
        assert c.get("/auth/ui").headers["location"] == "ui/"
