"""HTTP wire models (requests, responses, error body). Documented here, shown in OpenAPI at /docs.

Coordinates are pixels of the original image after EXIF rotation, boxes are [x0, y0, x1, y1].
Static checks live here (types, ranges, NaN/inf); checks that depend on config limits or on the image
size live in serve_app.pipelines.pcs. This module imports nothing else from serve_app.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
BoxXYXY = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] pixels")]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageRef(WireModel):
    """Exactly one way to give the image."""

    base64: str | None = Field(None, description="The image file's bytes, base64-encoded (JPEG, PNG, WebP...).")
    url: str | None = Field(None, description="s3://bucket/key inside an allowed bucket.")
    image_id: str | None = Field(None, description="sha256 id returned by POST /v1/images.")
    upload_id: str | None = Field(None, description="id returned by POST /v1/uploads, after the PUT.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageRef":
        given = [k for k in ("base64", "url", "image_id", "upload_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of base64, url, image_id, upload_id (got {given or 'none'})")
        return self


class Prompt(WireModel):
    """A concept: free text, exemplar boxes (positive/negative), or both."""

    text: str | None = Field(None, description='Noun phrase, e.g. "car" or "person in red shirt".')
    boxes: list[BoxXYXY] | None = Field(None, description="Exemplar boxes, xyxy pixels of the original image.")
    box_labels: list[Literal[0, 1]] | None = Field(
        None, description="One per box: 1 = positive exemplar, 0 = negative. Default: all positive."
    )


class PcsOptions(WireModel):
    """Everything of a concept-segmentation request except the image."""

    prompts: list[Prompt] = Field(..., description="1 to limits.max_prompts (16) prompts, each answered in order.")
    threshold: FiniteFloat = Field(0.5, ge=0, le=1, description="Minimum instance score.")
    mask_threshold: FiniteFloat = Field(0.5, ge=0, le=1, description="Mask probability cut-off.")
    max_instances: int | None = Field(None, ge=1, description="Per prompt, highest scores first (default: limit).")
    mask_format: Literal["rle", "polygon", "none"] = Field("rle", description="How masks are returned.")
    overlay: bool = Field(False, description="Also return an annotated PNG (base64).")


class PcsImageRequest(PcsOptions):
    """JSON body of POST /v1/pcs/image."""

    image: ImageRef


class RleMask(WireModel):
    size: list[int] = Field(..., description="[height, width]")
    counts: str = Field(..., description="COCO compressed RLE (pycocotools, column-major)")


class Instance(WireModel):
    id: int = Field(..., description="Unique within the response.")
    score: float
    box: list[float] = Field(..., description="[x0, y0, x1, y1] pixels")
    area: int = Field(..., description="Mask pixels at the original resolution.")
    mask: RleMask | None = None
    polygons: list[list[float]] | None = Field(None, description="Outer contours [x0,y0,x1,y1,...] (mask_format=polygon)")


class PromptResult(WireModel):
    prompt: Prompt
    instances: list[Instance]


class PcsImageResponse(WireModel):
    request_id: str
    image_id: str = Field(..., description="sha256 of the image bytes")
    width: int
    height: int
    results: list[PromptResult]
    overlay_png_base64: str | None = None
    timings_ms: dict[str, float]
    batch_size: int = Field(..., description="Requests the model replica ran in the same batch as this one.")


class ErrorDetail(WireModel):
    code: str
    message: str
    request_id: str


class ErrorBody(WireModel):
    error: ErrorDetail
