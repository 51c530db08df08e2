"""The FastAPI app of the ingress: routers, error handling, OpenAPI. Built once per replica process."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.ingress.error_handling import install_error_handling
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
    uploads,
    video,
    videos,
)


def create_app() -> FastAPI:
    app = FastAPI(
        title="sam3-serve",
        version="0.1.0",
        description="SAM 3 (Segment Anything with Concepts) over HTTP. Boxes are xyxy pixels of the original "
        "(EXIF-rotated) image; masks are COCO RLE (pycocotools, column-major, counts as str). "
        "Errors: {\"error\": {\"code\", \"message\", \"request_id\"}}.",
    )
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
    return app
