"""The web playground (serve_app/web/): GET / redirects to /ui/, GET /ui/{file} serves the page's static files.

Public (no API key: serve_app.ingress.auth), excluded from the OpenAPI schema, and mounted only while
`web.enabled`. The page talks to the service through the public HTTP API only.

Every /ui/ answer carries a Content-Security-Policy (no inline scripts or styles, no other origin but the
storage endpoint that presigned uploads PUT to), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
no-referrer`, and an ETag; index.html is `no-cache` (always revalidated), the other files may be reused for
CACHE_MAX_AGE_S, then revalidated (304 when the ETag still matches).
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from serve_app.config import AppConfig
from serve_app.errors import NotFound

router = APIRouter(include_in_schema=False)

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json",
                 ".png": "image/png"}
CACHE_MAX_AGE_S = 300
AWS_S3_ORIGINS = "https://*.amazonaws.com"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")


def _origin(url: str | None) -> str | None:
    """scheme://host[:port] of an absolute http(s) URL, else None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def storage_origins(config: AppConfig | None) -> list[str]:
    """Origins the browser may have to reach besides the page's own: where presigned PUT URLs
    (POST /v1/uploads) point. s3:// storage: storage.presign_endpoint_url, else storage.endpoint_url, else
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS itself; file:// storage: storage.public_base_url (its
    /v1/blobs route)."""
    if config is None:
        return []
    storage = config.storage
    if storage.uri.startswith("s3://"):
        endpoint = (storage.presign_endpoint_url or storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        origin = _origin(endpoint) if endpoint else AWS_S3_ORIGINS
    else:
        origin = _origin(storage.public_base_url)
    return [origin] if origin else []


def content_security_policy(config: AppConfig | None) -> str:
    connect = " ".join(["'self'", *storage_origins(config)])
    return ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
            f"connect-src {connect}; style-src 'self'; script-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _config_of(request: Request) -> AppConfig | None:
    ctx = getattr(request.app.state, "ctx", None)
    return getattr(ctx, "config", None) if ctx is not None else None


def _read(name: str) -> tuple[bytes, str] | None:
    """(bytes, ETag) of a packaged file, or None (read on each request: the files are small)."""
    target = resources.files("serve_app.web").joinpath(name)
    if not target.is_file():
        return None
    data = target.read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _headers(request: Request, name: str, etag: str | None) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(_config_of(request)),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache" if name == "index.html" else f"public, max-age={CACHE_MAX_AGE_S}",
    }
    if etag:
        headers["ETag"] = etag
    return headers


@router.get("/")
def root(request: Request) -> RedirectResponse:
    """Relative, so it works under a route prefix and behind proxies: from ".../" to "ui/"; from a prefix
    without its slash (Serve answers "/auth" with this route too) to "auth/ui/"."""
    path = request.url.path
    return RedirectResponse("ui/" if path.endswith("/") else f"{path.rsplit('/', 1)[-1]}/ui/", status_code=307)


@router.get("/ui")
def ui_no_slash() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


@router.api_route("/ui/{name:path}", methods=["GET", "HEAD"])
def static_file(name: str, request: Request) -> Response:
    name = name or "index.html"
    suffix = name[name.rfind("."):] if "." in name.rsplit("/", 1)[-1] else ""
    parts = name.split("/")
    if (suffix not in CONTENT_TYPES or not set(name) <= _NAME_CHARS or any(p in ("", ".", "..") for p in parts)
            or name.startswith("__")):
        raise NotFound(f"no such file: /ui/{name[:200]}", "web_file_not_found")
    found = _read(name)
    if found is None:
        raise NotFound(f"no such file: /ui/{name[:200]}", "web_file_not_found")
    data, etag = found
    headers = _headers(request, name, etag)
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else data
    response = Response(body, media_type=CONTENT_TYPES[suffix], headers=headers)
    if request.method == "HEAD":
        response.headers["content-length"] = str(len(data))
    return response
