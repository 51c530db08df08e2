"""What the routes of one ingress replica share: config, pipelines, model handles. Set at replica start."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from serve_app.config import AppConfig
from serve_app.errors import InvalidInput, PayloadTooLarge
from serve_app.pipelines.pcs import PcsPipeline
from serve_app.schemas import ImageRef


@dataclass
class IngressContext:
    config: AppConfig
    concept: Any  # DeploymentHandle to ConceptSegmenter
    pcs: PcsPipeline

    async def image_bytes(self, ref: ImageRef) -> bytes:
        """The bytes an ImageRef points to. Base64 is decoded here; references need the storage layer."""
        if ref.base64 is not None:
            limit = self.config.limits.max_image_bytes
            if len(ref.base64) > (limit * 4) // 3 + 8:
                raise PayloadTooLarge(f"image is over {limit} bytes", "image_too_large")
            try:
                return base64.b64decode(ref.base64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput("image.base64 is not valid base64", "invalid_base64") from exc
        raise InvalidInput("only image.base64 is supported by this deployment", "unsupported_image_source")


def get_context(request: Request) -> IngressContext:
    """FastAPI dependency: the replica's IngressContext."""
    return request.app.state.ctx
