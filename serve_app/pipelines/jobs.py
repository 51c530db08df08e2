"""The job kinds this app runs (`POST /v1/jobs {"kind", "input"}`), and the registry that holds them.

- `pcs_image`: the body of POST /v1/pcs/image, run by a JobWorker replica with the same PcsPipeline as
  the synchronous route (identical results). The image may be given inline (base64) or by reference
  (image_id, upload_id, s3 url); references are resolved when the job runs. The result JSON is the
  PcsImageResponse without the inline overlay; the overlay (overlay=true) is stored as a PNG beside it.

A new kind (video exports, …) is a class with `name`, `validate(input)` and `async run(input, ctx)`,
registered in `job_kinds`.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from serve_app.errors import ValidationFailed, format_validation_errors
from serve_app.jobs.kinds import JobContext, JobKindRegistry, JobOutput
from serve_app.pipelines.pcs import PcsPipeline, validate_options
from serve_app.schemas import PcsImageRequest, PcsOptions


def parse_pcs_input(input: dict) -> PcsImageRequest:
    """The job input as a PcsImageRequest (422 with the first problem otherwise) with its limits checked."""
    try:
        request = PcsImageRequest.model_validate(input)
    except ValidationError as exc:
        raise ValidationFailed("input: " + format_validation_errors(exc.errors()), "invalid_job_input") from None
    return request


class PcsImageJob:
    """Concept segmentation of one image as a job."""

    name = "pcs_image"

    def __init__(self, pipeline: PcsPipeline):
        self.pipeline = pipeline

    def validate(self, input: dict) -> None:
        validate_options(parse_pcs_input(input), self.pipeline.limits)

    async def run(self, input: dict, ctx: JobContext) -> JobOutput:
        request = parse_pcs_input(input)
        data = await self.pipeline.images.load(request.image)
        opts = PcsOptions.model_validate(request.model_dump(exclude={"image"}))
        body, overlay_png = await self.pipeline.run_parts(data, opts, request_id=ctx.job_id)
        return JobOutput(json.dumps(body).encode(), overlay_png)


def job_kinds(pipeline: PcsPipeline) -> JobKindRegistry:
    """Every kind this app knows; the ingress validates submissions with it, JobWorker runs them."""
    registry = JobKindRegistry()
    registry.register(PcsImageJob(pipeline))
    return registry
