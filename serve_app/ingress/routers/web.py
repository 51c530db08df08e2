"""The web playground (serve_app/web/): GET / redirects to /ui/, GET /ui/{file} serves the page's static files.

Public (no API key: serve_app.ingress.auth), excluded from the OpenAPI schema, and mounted only while
`web.enabled`. The page talks to the service through the public HTTP API only."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from serve_app.errors import NotFound

router = APIRouter(include_in_schema=False)

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui")
def ui_no_slash() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui/{name:path}")
def static_file(name: str) -> Response:
    name = name or "index.html"
    suffix = name[name.rfind("."):] if "." in name else ""
    if ".." in name.split("/") or suffix not in CONTENT_TYPES:
        raise NotFound(f"no such file: /ui/{name}", "web_file_not_found")
    target = resources.files("serve_app.web").joinpath(name)
    if not target.is_file():
        raise NotFound(f"no such file: /ui/{name}", "web_file_not_found")
    return Response(target.read_bytes(), media_type=CONTENT_TYPES[suffix])
