"""The FastAPI app of the ingress: routers, authentication, CORS, error handling, OpenAPI. Built once per
replica process."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from serve_app.config import AppConfig, AuthConfig
from serve_app.ingress.accounting import AccountingMiddleware
from serve_app.ingress.auth import API_KEY_HEADER, HEALTH_PATHS, AuthMiddleware, AuthPolicy
from serve_app.ingress.error_handling import REQUEST_ID_HEADER, install_error_handling
from serve_app.ingress.quotas import QuotaMiddleware
from serve_app.ingress.routers import (
    automatic,
    blobs,
    click,
    cluster,
    concept,
    exports,
    health,
    images,
    jobs,
    quotas,
    uploads,
    video,
    videos,
    web,
)
from serve_app.pipelines import tenant_log

CORS_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
CORS_REQUEST_HEADERS = ["Authorization", API_KEY_HEADER, "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER]
CORS_EXPOSED_HEADERS = [REQUEST_ID_HEADER, "Location", "Retry-After"]


def create_app(config: AppConfig | None = None) -> FastAPI:
    """The ingress app. `config` (the replica's AppConfig) sets authentication and CORS and is read here, so a
    missing or malformed auth.keys_file fails the replica's start (StartupFailure). Without it (tests that build
    the app around a context of their own) the auth policy comes from `app.state.ctx.config` on first use, and
    no CORS middleware is installed.

    Middleware, outermost first: request id (error_handling) -> CORS (when auth.cors_origins) ->
    AccountingMiddleware (per-tenant metrics) -> AuthMiddleware (the tenant) -> QuotaMiddleware (the tenant's
    limits) -> routes; so a 401 or 429 carries the request id and, for an allowed origin, the CORS headers a
    browser needs to read it, a CORS preflight is answered before authentication, and every answer (401 and
    429 included) is counted for its tenant."""
    app = FastAPI(
        title="sam3-serve",
        version="0.1.0",
        description="SAM 3 (Segment Anything with Concepts) over HTTP. Boxes are xyxy pixels of the original "
        "(EXIF-rotated) image; masks are COCO RLE (pycocotools, column-major, counts as str). "
        "Errors: {\"error\": {\"code\", \"message\", \"request_id\"}}. "
        "Authentication (when enabled): `Authorization: Bearer <key>` or `X-API-Key: <key>`; 401 "
        "missing_api_key / invalid_api_key otherwise.",
    )
    policy = AuthPolicy.from_config(config) if config is not None else None
    docs_paths = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
    tenant_log.install()
    # add_middleware puts each new middleware OUTSIDE the ones added before it
    app.add_middleware(QuotaMiddleware)
    app.add_middleware(AuthMiddleware, policy=policy, docs_paths=docs_paths)
    app.add_middleware(AccountingMiddleware)
    if config is not None and config.auth.cors_origins:
        install_cors(app, config.auth)
    if config is not None and config.auth.mode == "api_keys":
        document_api_keys(app)
    install_error_handling(app)
    app.include_router(health.router)
    app.include_router(concept.router)
    app.include_router(images.router)
    app.include_router(click.router)
    app.include_router(automatic.router)
    app.include_router(uploads.router)
    app.include_router(jobs.router)
    app.include_router(blobs.router)
    app.include_router(cluster.router)
    app.include_router(video.router)
    app.include_router(exports.router)
    app.include_router(videos.router)
    app.include_router(quotas.router)
    if config is None or config.web.enabled:
        app.include_router(web.router)
    return app


def install_cors(app: FastAPI, auth: AuthConfig) -> None:
    """Starlette's CORSMiddleware for auth.cors_origins. Credentials (cookies) are never allowed with '*'; the
    API needs none anyway (keys travel in headers a page sets itself)."""
    origins = list(auth.cors_origins)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        max_age=600,
    )


def document_api_keys(app: FastAPI) -> None:
    """OpenAPI: the two ways to send a key as security schemes, required by every operation but the public
    health routes (Swagger UI's "Authorize" button then sends the key with its calls)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # also cached as app.openapi_schema: the additions below stay
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        for path in HEALTH_PATHS:
            for operation in schema.get("paths", {}).get(path, {}).values():
                operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
