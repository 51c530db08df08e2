"""HTTP wire models (requests, responses, error body). Documented here, shown in OpenAPI at /docs.

Coordinates are pixels of the original image after EXIF rotation, boxes are [x0, y0, x1, y1].
Static checks live here (types, ranges, NaN/inf); checks that depend on config limits or on the image
size live in the pipelines (serve_app.pipelines.concept / click) and the click model (points inside the
image, known only to the replica when a request names the image by id). This module imports nothing else from serve_app.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Hard ceilings of the wire format (OpenAPI maxItems / maxLength). They bound what one request can make a
# replica parse and validate, whatever the config says; the configured limits (config `limits`, `click`,
# `video.limits`) are checked in the pipelines and can only be lower (their `le` bounds are these values).
# Crossing a ceiling gets the same 400 code as crossing the configured limit (serve_app.ingress.body).
MAX_PROMPTS = 64  # limits.max_prompts
MAX_TEXT_CHARS = 1024  # limits.max_text_chars
MAX_BOXES_PER_PROMPT = 256  # limits.max_boxes_per_prompt
MAX_OBJECTS = 256  # click.max_objects, video.limits.max_objects_per_call
MAX_POINTS_PER_OBJECT = 256  # click.max_points_per_object, video.limits.max_points_per_object
MAX_URL_CHARS = 2048  # s3://bucket/key: S3 keys are at most 1024 UTF-8 bytes (checked when resolved)
MAX_OBJECT_ID = 2**31 - 1

# Lone surrogates (not encodable as UTF-8) and control characters other than tab, newline and carriage return.
_BAD_TEXT_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_text(value: str) -> str:
    """Prompt text must be proper Unicode text before it reaches a tokenizer or OpenCV (error type invalid_text)."""
    bad = _BAD_TEXT_CHARS.search(value)
    if bad is not None:
        what = "a lone surrogate (not valid Unicode)" if "\ud800" <= bad.group() <= "\udfff" else \
            f"the control character U+{ord(bad.group()):04X}"
        raise PydanticCustomError("invalid_text", "text contains {what} at position {pos}",
                                  {"what": what, "pos": bad.start()})
    return value


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
BoxXYXY = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] pixels")]
PromptText = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_check_text)]
S3Url = Annotated[str, Field(max_length=MAX_URL_CHARS)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageRef(WireModel):
    """Exactly one way to give the image.

    Pixels are read as 8-bit RGB: 16-bit images are scaled (65535 -> 255), float images must hold values in
    [0, 1], CMYK/YCbCr/palette/grayscale/1-bit are converted, transparency is composited over white, and
    animated images (GIF, APNG, WebP) and multi-page TIFFs use their first frame. Other pixel formats get
    415 unsupported_image_mode.
    """

    base64: str | None = Field(None, description="The image file's bytes, base64-encoded (JPEG, PNG, WebP...).")
    url: S3Url | None = Field(None, description="s3://bucket/key inside an allowed bucket (key <= 1024 UTF-8 bytes).")
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

    text: PromptText | None = Field(
        None, description='Noun phrase, e.g. "car" or "person in red shirt" (Unicode text: no control characters '
        f'but tab/newline, at most limits.max_text_chars <= {MAX_TEXT_CHARS} characters).')
    boxes: list[BoxXYXY] | None = Field(
        None, max_length=MAX_BOXES_PER_PROMPT,
        description="Exemplar boxes, xyxy pixels of the original image (at most limits.max_boxes_per_prompt).")
    box_labels: list[Literal[0, 1]] | None = Field(
        None, max_length=MAX_BOXES_PER_PROMPT,
        description="One per box: 1 = positive exemplar, 0 = negative. Default: all positive."
    )


class ConceptOptions(WireModel):
    """Everything of a concept-segmentation request except the image."""

    prompts: list[Prompt] = Field(..., max_length=MAX_PROMPTS,
                                  description="1 to limits.max_prompts (16) prompts, each answered in order.")
    threshold: FiniteFloat = Field(0.5, ge=0, le=1, description="Minimum instance score.")
    mask_threshold: FiniteFloat = Field(0.5, ge=0, le=1, description="Mask probability cut-off.")
    max_instances: int | None = Field(None, ge=1, description="Per prompt, highest scores first (default: limit).")
    mask_format: Literal["rle", "polygon", "none"] = Field("rle", description="How masks are returned.")
    overlay: bool = Field(False, description="Also return an annotated PNG (base64, or a URL with return=url).")
    return_: Literal["inline", "url"] = Field(
        "inline", alias="return",
        description='"inline": results in the response. "url": results JSON (and overlay PNG) are written to '
        "storage and the response carries presigned GET URLs (valid storage.presign_expiry_s).",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ConceptImageRequest(ConceptOptions):
    """JSON body of POST /v1/pcs/image."""

    image: ImageRef


class RleMask(WireModel):
    size: list[int] = Field(..., min_length=2, max_length=2, description="[height, width]")
    counts: str = Field(..., description="COCO compressed RLE (pycocotools, column-major)")


class Instance(WireModel):
    id: int = Field(..., description="Unique within the response.")
    score: float
    box: list[float] = Field(..., description="[x0, y0, x1, y1] pixels")
    area: int = Field(..., description="Mask pixels at the original resolution.")
    mask: RleMask | None = None
    polygons: list[list[float]] | None = Field(None, description="Outer contours [x0,y0,x1,y1,...] (mask_format=polygon)")


class ConceptResult(WireModel):
    prompt: Prompt
    instances: list[Instance]


# The output budget (config limits.max_output_pixels): masks x width x height of the original image, counted
# before encoding. Concept and automatic answers over it are truncated to their highest-scoring masks that fit
# (these fields say so; absent when nothing was left out); clicks drop multimask candidates first, and
# answer 413 output_too_large when even one mask per object does not fit.
Truncated = Annotated[bool | None, Field(
    description="true when masks were left out to stay within the output budget (limits.max_output_pixels: "
    "masks x width x height of the original image); absent otherwise.")]
TruncatedReason = Annotated[Literal["max_output_pixels"] | None, Field(
    description="Why masks were left out (with truncated=true): max_output_pixels.")]
OmittedMasks = Annotated[int | None, Field(description="How many masks were left out (with truncated=true).")]


class ConceptImageResponse(WireModel):
    request_id: str
    image_id: str = Field(..., description="sha256 of the image bytes")
    width: int
    height: int
    results: list[ConceptResult]
    overlay_png_base64: str | None = Field(
        None, description="The overlay PNG (overlay=true), at the image's size up to limits.max_overlay_pixels; "
        "larger images get a proportionally downscaled overlay.")
    timings_ms: dict[str, float]
    batch_size: int = Field(..., description="Requests the model replica ran in the same batch as this one.")
    truncated: Truncated = None
    truncated_reason: TruncatedReason = None
    omitted_masks: OmittedMasks = Field(
        None, description="Instances left out (with truncated=true): the highest-scoring instances over all "
        "prompts are kept, the rest are not in `results` (instance ids stay consecutive). With "
        "mask_format=polygon each mask counts 4 times against the budget.")


class ConceptUrlResponse(WireModel):
    """POST /v1/pcs/image with "return": "url": where the full ConceptImageResponse JSON was stored."""

    request_id: str
    image_id: str
    width: int
    height: int
    result_url: str = Field(..., description="Presigned GET of the ConceptImageResponse JSON.")
    overlay_url: str | None = Field(None, description="Presigned GET of the overlay PNG (overlay=true).")
    expires_at: str = Field(..., description="When the URLs stop working (UTC, ISO 8601).")
    timings_ms: dict[str, float]
    batch_size: int
    truncated: Truncated = None
    truncated_reason: TruncatedReason = None
    omitted_masks: OmittedMasks = None


class UploadRequest(WireModel):
    """POST /v1/uploads: announce a file that the client will PUT straight to storage."""

    content_type: str = Field(..., description="MIME type the PUT must send, e.g. image/jpeg or video/mp4.")
    content_length: int = Field(..., ge=1, description="Exact size in bytes the PUT must send (<= the limit).")


class UploadResponse(WireModel):
    upload_id: str = Field(..., description='Use as {"image": {"upload_id": ...}} once the PUT succeeded.')
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(..., description="Send exactly these headers with the PUT (signed).")
    expires_at: str = Field(..., description="UTC, ISO 8601.")
    max_bytes: int = Field(..., description="Largest upload storage.max_upload_bytes allows.")


class JobRequest(WireModel):
    """POST /v1/jobs."""

    kind: str = Field(..., description='A registered job kind, e.g. "pcs_image".')
    input: dict = Field(..., description="The kind's input; for pcs_image the body of POST /v1/pcs/image.")


class JobErrorView(WireModel):
    code: str
    message: str


class JobProgressOut(WireModel):
    done: int
    total: int
    unit: str = Field("frames", description="What is counted.")


class JobView(WireModel):
    """A job as clients see it. Result URLs appear once it succeeded (GET /v1/jobs/{id})."""

    job_id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = Field(..., description="Runs started so far (a replica that died mid-run counts).")
    max_attempts: int
    error: JobErrorView | None = None
    result_url: str | None = Field(None, description="Presigned GET of the result JSON (succeeded jobs).")
    overlay_url: str | None = Field(None, description="Presigned GET of the overlay PNG, if one was made.")
    export_url: str | None = Field(None, description="Presigned GET of the export ZIP (video_export, pcs_video).")
    urls_expire_at: str | None = None
    progress: JobProgressOut | None = Field(None, description="The running attempt's latest progress report.")


class JobList(WireModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page.")


class ErrorDetail(WireModel):
    code: str
    message: str
    request_id: str
    limit: str | None = Field(
        None, description="429 rate_limited / quota_exceeded only: the tenant limit that was hit "
        "(requests_per_s, max_inflight_model_requests, upload_bytes_per_day, max_concurrent_jobs).")


class ErrorBody(WireModel):
    error: ErrorDetail


# ------------------------------------------------------------------------------------------------------
# Images, visual prompts (clicks/boxes) and automatic masks: POST /v1/images, /v1/pvs/image, /v1/auto/image.

PointXY = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2, description="[x, y] pixels")]


class ImageUploadRequest(WireModel):
    """JSON body of POST /v1/images (multipart: a `file` or `image` field, plus `precompute`)."""

    image: ImageRef
    precompute: bool | None = Field(None, description="Compute the image embedding now (default: click."
                                    "precompute_on_upload) so the first click is fast.")


class ImageUploadResponse(WireModel):
    request_id: str
    image_id: str = Field(..., description="sha256 of the image bytes: uploading the same file again gives the same id.")
    width: int
    height: int
    precomputed: bool = Field(..., description="The embedding is cached on a ClickSegmenter replica now (false when "
                              "not asked for, or when the model replicas were busy: the first click then computes it).")
    timings_ms: dict[str, float]


class ClickObjectIn(WireModel):
    """The prompts of one object: clicks and/or a box, optionally the previous mask of this object."""

    points: list[PointXY] | None = Field(None, max_length=MAX_POINTS_PER_OBJECT,
                                         description="Clicks [[x, y], ...], pixels of the original image.")
    point_labels: list[Literal[0, 1]] | None = Field(
        None, max_length=MAX_POINTS_PER_OBJECT,
        description="One per point: 1 = on the object, 0 = not on it. Default: all 1.")
    box: BoxXYXY | None = Field(None, description="[x0, y0, x1, y1] pixels of the original image.")
    mask_input: str | None = Field(
        None, description="The `mask_input` this service returned for this object on the previous click: "
        "refines that mask instead of starting over. Opaque; valid for the same model only.")


class ClickOptions(WireModel):
    objects: list[ClickObjectIn] = Field(..., max_length=MAX_OBJECTS,
                                         description="1 to click.max_objects objects, answered in order.")
    multimask_output: bool = Field(
        False, description="Also return three candidate masks per object (sorted by score); useful for a "
        "single ambiguous click.")
    return_mask_input: bool = Field(True, description="Return the `mask_input` handle(s) for the next click.")


class ImageByIdOrRef(WireModel):
    """An uploaded image by id (fast: its embedding is cached) or any ImageRef (stored on first use)."""

    image_id: str | None = Field(None, description="sha256 id from POST /v1/images.")
    image: ImageRef | None = Field(None, description="The image itself or a reference (instead of image_id); "
                                   "stored like POST /v1/images, so the returned image_id keeps working.")

    @model_validator(mode="after")
    def _one_image(self) -> "ImageByIdOrRef":
        if (self.image_id is None) == (self.image is None):
            raise ValueError("give exactly one of image_id, image")
        return self


class ClickImageRequest(ClickOptions, ImageByIdOrRef):
    """JSON body of POST /v1/pvs/image."""


class MaskCandidate(WireModel):
    score: float = Field(..., description="Predicted IoU of the mask with the object.")
    box: list[float] = Field(..., description="Tight box of the mask [x0, y0, x1, y1] pixels (x1/y1 exclusive).")
    area: int = Field(..., description="Mask pixels at the original resolution.")
    mask: RleMask | None = None
    mask_input: str | None = Field(None, description="Send back as objects[i].mask_input to refine this mask.")


class ClickObjectResult(MaskCandidate):
    id: int = Field(..., description="Index of the object in the request.")
    object_score: float = Field(..., description="Probability that the prompts point at an object at all.")
    candidates: list[MaskCandidate] | None = Field(
        None, description="multimask_output: the three candidates, best first (the object's fields repeat the first).")


class ClickImageResponse(WireModel):
    request_id: str
    image_id: str
    width: int
    height: int
    objects: list[ClickObjectResult]
    cache_hit: bool = Field(..., description="The image embedding was already cached (no vision-encoder run).")
    timings_ms: dict[str, float]
    batch_size: int = Field(..., description="Requests the model replica decoded together with this one.")
    truncated: Truncated = Field(
        None, description="true when multimask_output candidates were left out to stay within the output budget "
        "(limits.max_output_pixels; objects then carry their best mask only). An answer that does not fit even "
        "with one mask per object is refused: 413 output_too_large.")
    truncated_reason: TruncatedReason = None
    omitted_masks: OmittedMasks = None


class AutoOptions(WireModel):
    """Automatic mask generation knobs; None = the server default (click.auto)."""

    points_per_side: int | None = Field(None, ge=1, description="Grid of points_per_side^2 clicks.")
    points_per_batch: int | None = Field(None, ge=1, le=1024, description="Grid points per decoder call.")
    pred_iou_thresh: FiniteFloat | None = Field(None, ge=0, le=1, description="Minimum predicted IoU.")
    stability_score_thresh: FiniteFloat | None = Field(None, ge=0, le=1, description="Minimum stability score.")
    box_nms_thresh: FiniteFloat | None = Field(None, gt=0, le=1, description="Box IoU above which masks are suppressed.")
    min_mask_area: int | None = Field(None, ge=0, description="Minimum mask pixels (original resolution).")
    max_masks: int | None = Field(None, ge=1, description="At most this many masks (highest score first).")
    sort_by: Literal["score", "area"] = Field("score", description="Order of the returned masks (descending).")


class AutoImageRequest(AutoOptions, ImageByIdOrRef):
    """JSON body of POST /v1/auto/image."""


class AutoMask(WireModel):
    id: int
    score: float = Field(..., description="Predicted IoU.")
    stability_score: float
    box: list[float] = Field(
        ..., description="[x0, y0, x1, y1] pixels (x1/y1 exclusive), the box NMS used: the mask's tight box, "
        "computed on the replica at most at 1 megapixel and scaled (exact for images up to 1 MP).")
    area: int = Field(..., description="Mask pixels at the original resolution.")
    point: list[float] = Field(..., description="The grid click [x, y] that produced the mask.")
    mask: RleMask


class AutoImageResponse(WireModel):
    request_id: str
    image_id: str
    width: int
    height: int
    masks: list[AutoMask]
    candidates: int = Field(..., description="Masks the grid produced before filtering and NMS.")
    cache_hit: bool
    timings_ms: dict[str, float]
    truncated: Truncated = Field(
        None, description="true when masks were left out to stay within the output budget "
        "(limits.max_output_pixels): the highest-scoring masks that fit are kept.")
    truncated_reason: TruncatedReason = None
    omitted_masks: OmittedMasks = None


# ---------------------------------------------------------------------------------------------------------
# Video sessions (/v1/video/sessions). Frame indices are 0-based positions in the session's frames (after
# fps sub-sampling); coordinates are pixels of the frame as displayed (rotation applied).


class VideoRef(WireModel):
    """Exactly one way to give the video (multipart uploads use the `video` file field instead)."""

    upload_id: str | None = Field(None, description="id returned by POST /v1/uploads, after the PUT.")
    url: S3Url | None = Field(None, description="s3://bucket/key inside an allowed bucket (key <= 1024 UTF-8 bytes).")
    video_id: str | None = Field(None, description="sha256 id of a video stored by an earlier session.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "VideoRef":
        given = [k for k in ("upload_id", "url", "video_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of upload_id, url, video_id (got {given or 'none'})")
        return self


class SessionOptionsIn(WireModel):
    max_frames: int | None = Field(None, ge=1, description="Process at most this many frames (<= video.limits.max_frames).")
    fps: FiniteFloat | None = Field(None, gt=0, le=240, description="Processing frame rate (<= the source's).")


class SessionCreateRequest(SessionOptionsIn):
    """JSON body of POST /v1/video/sessions (multipart: a `video` file plus optional `max_frames`, `fps`)."""

    video: VideoRef


class IngestProgressView(WireModel):
    done: int
    total: int | None = None


class SessionView(WireModel):
    session_id: str
    state: Literal["ingesting", "ready", "failed", "parked", "deleted"] = Field(
        ..., description="ready: prompts and propagation work (the actor may still be starting: 409 + "
        "Retry-After); parked: idle, revived by the next request.")
    num_frames: int | None = None
    fps: float | None = None
    source_fps: float | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    video_id: str | None = Field(None, description="sha256 of the source video (reuse it with video.video_id).")
    progress: IngestProgressView | None = None
    created_at: str
    last_used_at: str


class SessionList(WireModel):
    sessions: list[SessionView]
    next_cursor: str | None = None


class VideoObjectIn(WireModel):
    """Prompts of one object on one frame: clicks and/or a box, or an exact mask."""

    obj_id: int | None = Field(None, ge=0, le=MAX_OBJECT_ID,
                               description="An existing object to refine, or a new id; None = next free id.")
    points: list[PointXY] | None = Field(None, max_length=MAX_POINTS_PER_OBJECT,
                                         description="Clicks [[x, y], ...], pixels of the frame.")
    point_labels: list[Literal[0, 1]] | None = Field(None, max_length=MAX_POINTS_PER_OBJECT,
                                                     description="1 = on the object, 0 = not. Default: all 1.")
    box: BoxXYXY | None = None
    mask: RleMask | None = Field(None, description="The object's exact mask on this frame (COCO RLE, frame size).")
    clear_old_points: bool = Field(False, description="Replace this object's earlier clicks on this frame.")


class VideoPromptRequest(WireModel):
    """POST /v1/video/sessions/{sid}/prompts: a text prompt (detect + track every instance) or objects."""

    frame_index: int = Field(..., ge=0)
    text: PromptText | None = Field(None, description='A concept, e.g. "person in red".')
    objects: list[VideoObjectIn] | None = Field(None, max_length=MAX_OBJECTS,
                                                description="Clicks/boxes/masks, one entry per object.")

    @model_validator(mode="after")
    def _one_kind(self) -> "VideoPromptRequest":
        if (self.text is None) == (not self.objects):
            raise ValueError("give exactly one of text, objects (non-empty)")
        return self


class PropagateRequest(WireModel):
    direction: Literal["forward", "backward", "both"] = "both"
    start_frame_index: int = Field(0, ge=0)
    max_frames: int | None = Field(None, ge=1, description="Frames beyond the start in each direction (None: to the end).")


class VideoObject(WireModel):
    id: int = Field(..., description="Object id, stable across frames.")
    score: float
    box: list[float] = Field(..., description="[x0, y0, x1, y1] pixels of the frame.")
    area: int = Field(..., description="Mask pixels at the frame's resolution.")
    mask: RleMask


class FrameResult(WireModel):
    frame_index: int
    objects: list[VideoObject]


class VideoPromptResponse(FrameResult):
    request_id: str
    prompt_to_obj_ids: dict[str, list[int]] = Field(default_factory=dict)
    prompted_obj_ids: list[int] = Field(default_factory=list, description="Objects this call created or refined.")
    rebuilt: bool = Field(False, description="The session's actor had to be rebuilt from its journal first.")


class MasksResponse(WireModel):
    frames: list[FrameResult] = Field(..., description="Frames of the range that were computed, in order.")
    missing: list[int] = Field(default_factory=list, description="Frames of the range not computed yet.")


class SessionActionResponse(WireModel):
    session_id: str
    request_id: str
    rebuilt: bool = False


# -- exports (video_export / pcs_video jobs) --------------------------------------------------------------
EXPORT_FORMATS: tuple[str, ...] = ("coco_instance", "yolo_segmentation", "binary_masks_png", "overlay_mp4")


def _check_format(value: str) -> str:
    if value not in EXPORT_FORMATS:
        raise PydanticCustomError("unknown_export_format", "unknown export format '{value}' (known: {known})",
                                  {"value": value[:64], "known": ", ".join(EXPORT_FORMATS)})
    return value


ExportFormatName = Annotated[str, AfterValidator(_check_format)]
MAX_EXPORT_OBJECTS = 1024
MAX_NAME_CHARS = 128


class ObjectMeta(WireModel):
    """Names of one tracked object in an export (unnamed objects: class "object", instance "object_{id}")."""

    obj_id: int = Field(..., ge=0, le=MAX_OBJECT_ID)
    class_name: PromptText | None = Field(None, max_length=MAX_NAME_CHARS, description="COCO category / YOLO class.")
    instance_name: PromptText | None = Field(None, max_length=MAX_NAME_CHARS,
                                             description="Per-object label (COCO annotation `instance_name`).")


class MergeGroup(WireModel):
    name: PromptText = Field(..., min_length=1, max_length=MAX_NAME_CHARS)
    obj_ids: list[Annotated[int, Field(ge=0, le=MAX_OBJECT_ID)]] = Field(..., min_length=1, max_length=256)


class MergeSpec(WireModel):
    """mode none: one instance per object; group: each group's objects become ONE instance per frame (the union
    of their masks), named by the group; objects in no group stay as they are."""

    mode: Literal["none", "group"] = "none"
    groups: list[MergeGroup] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _groups_need_group_mode(self) -> "MergeSpec":
        if self.groups and self.mode != "group":
            raise PydanticCustomError("invalid_merge_groups", "merge.groups need merge.mode \"group\"")
        return self


class FrameScope(WireModel):
    frame_start: int = Field(0, ge=0)
    frame_end: int | None = Field(None, ge=0, description="Inclusive; None = the last frame.")


class ExportOptions(WireModel):
    """What goes into an export ZIP (see README "Exports" for the layout)."""

    formats: list[ExportFormatName] = Field(..., min_length=1, max_length=len(EXPORT_FORMATS),
                                            json_schema_extra={"items": {"enum": list(EXPORT_FORMATS)}})
    include_images: bool = Field(False, description="Also the frames as JPEG (images/{frame:06d}.jpg).")
    object_meta: list[ObjectMeta] = Field(default_factory=list, max_length=MAX_EXPORT_OBJECTS)
    merge: MergeSpec = Field(default_factory=MergeSpec)
    scope: FrameScope = Field(default_factory=FrameScope)


class VideoExportRequest(ExportOptions):
    """POST /v1/video/sessions/{sid}/exports (and the `video_export` job input, with `session_id`)."""

    auto_propagate_if_incomplete: bool = Field(
        False, description="Frames of the scope with no stored masks are first propagated (forward from the first "
        "missing frame); without it such an export is a 409 session_incomplete.")


class PcsVideoJobInput(WireModel):
    """Input of the `pcs_video` job: detect and track text prompts through a video, then export."""

    video: VideoRef
    prompts: list[PromptText] = Field(..., min_length=1, max_length=MAX_PROMPTS)
    fps: FiniteFloat | None = Field(None, gt=0, le=240, description="Processing frame rate (<= the source's).")
    max_frames: int | None = Field(None, ge=1, description="Process at most this many frames.")
    export: ExportOptions


# -- media library ---------------------------------------------------------------------------------------
# /v1/videos (the tenant's video library), /v1/images listing and deletion, /v1/storage/usage.
MAX_MEDIA_NAME_CHARS = 128


def _check_media_name(value: str) -> str:
    """A display name: printable Unicode (no control, format or line-separator characters), surrounding
    whitespace dropped, not empty (error type invalid_name)."""
    value = value.strip()
    if not value or not value.isprintable():
        raise PydanticCustomError("invalid_name", "name must be 1-128 printable characters")
    return value


MediaName = Annotated[str, Field(min_length=1, max_length=MAX_MEDIA_NAME_CHARS), AfterValidator(_check_media_name)]


class VideoEntry(WireModel):
    """A video of the library (GET /v1/videos/{video_id}). Probe facts are of the source file: `width`/`height`
    as displayed (rotation applied), `fps` the source frame rate."""

    video_id: str = Field(..., description="sha256 of the video's bytes; use it as {\"video\": {\"video_id\": ...}} "
                          "to create sessions from it.")
    name: str = Field(..., description="Display name (1-128 printable characters).")
    size_bytes: int
    width: int
    height: int
    duration_s: float
    fps: float = Field(..., description="Source frame rate (frames per second).")
    num_frames: int | None = Field(None, description="Frames in the source (from its packets), if known.")
    codec: str | None = Field(None, description='Codec of the video stream, e.g. "h264", if known.')
    created_at: str = Field(..., description="When the video entered the library (UTC, ISO 8601).")


class VideoList(WireModel):
    videos: list[VideoEntry] = Field(..., description="Newest first.")
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page.")


class VideoCreateRequest(VideoRef):
    """JSON body of POST /v1/videos: exactly one source (multipart: a `video` file plus an optional `name`). A
    `video_id` names a video already stored by a session create: it is registered in the library."""

    name: MediaName | None = Field(None, description='Display name; default "video-{first 12 hex of the id}". Not '
                                   "applied when the video is already in the library.")


class VideoPatchRequest(WireModel):
    """PATCH /v1/videos/{video_id}."""

    name: MediaName


class ImageEntry(WireModel):
    image_id: str = Field(..., description="sha256 of the image's bytes (POST /v1/images).")
    size_bytes: int
    created_at: str = Field(..., description="When it was stored (the object's last-modified time, UTC ISO 8601).")


class ImageList(WireModel):
    images: list[ImageEntry] = Field(..., description="In image_id order (content-addressed ids: no time order).")
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page.")


class UsageCount(WireModel):
    bytes: int = Field(..., ge=0)
    objects: int = Field(..., ge=0)


class StorageUsage(WireModel):
    """Bytes and object counts of one tenant's stored objects, by category (total = their sum)."""

    tenant: str
    images: UsageCount = Field(..., description="Uploaded images (POST /v1/images).")
    videos: UsageCount = Field(..., description="Source videos with their library metadata and index.")
    sessions: UsageCount = Field(..., description="Video sessions: records, frames, masks, journals, checkpoints.")
    jobs: UsageCount = Field(..., description="Job inputs, records, results, overlays and markers.")
    results: UsageCount = Field(..., description='Synchronous results stored with "return": "url".')
    exports: UsageCount = Field(..., description="Dataset export ZIPs.")
    uploads: UsageCount = Field(..., description="Presigned-PUT uploads.")
    other: UsageCount = Field(..., description="Objects moved to quarantine (unreadable records).")
    total: UsageCount


class VideoExportJobInput(VideoExportRequest):
    """Input of the `video_export` job (what POST /v1/video/sessions/{sid}/exports submits)."""

    session_id: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")


# ------------------------------------------------------------------------------------------------------
# GET /v1/quotas: the caller's own limits and what it uses of them.


class QuotaLimits(WireModel):
    """A tenant's limits (config auth.quotas + auth.tenant_quotas); null = unlimited."""

    requests_per_s: float | None = None
    burst: int | None = None
    max_inflight_model_requests: int | None = None
    upload_bytes_per_day: int | None = None
    max_concurrent_jobs: int | None = None


class QuotaUsage(WireModel):
    """What the tenant uses now (null where the limit is unset or the quota keeper did not answer)."""

    rate_tokens: float | None = Field(None, description="Requests the tenant may send at once right now.")
    inflight_model_requests: int | None = None
    upload_bytes_today: int | None = Field(None, description="Bytes charged this UTC day.")
    active_jobs: int | None = Field(None, description="Jobs queued or running (counted up to the limit + 1).")


class QuotaView(WireModel):
    tenant: str
    limits: QuotaLimits
    usage: QuotaUsage
