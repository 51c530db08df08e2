"""The job kinds this app runs (`POST /v1/jobs {"kind", "input"}`), and the registry that holds them.

- `video_export`, `pcs_video`: serve_app.pipelines.video_jobs.
- `pcs_image` (the kind name is part of the HTTP API): the body of POST /v1/pcs/image, executed by a
  JobWorker replica with the same ConceptPipeline as the synchronous route (identical results). The image
  may be given inline (base64) or by reference (image_id, upload_id, s3 url); references are resolved
  when the job runs. The result JSON is the ConceptImageResponse without the inline overlay; the overlay
  (overlay=true) is stored as a PNG beside it.

A new kind (video exports, …) is a class with `name`, `validate(input)` and `async execute(input, ctx)`,
registered in `job_kinds`.
"""

from __future__ import annotations

import asyncio

from serve_app.config import JobsConfig
from serve_app.jobs.kinds import JobContext, JobKindRegistry, JobOutput, parse_job_input
from serve_app.pipelines.concept import ConceptPipeline, validate_options
from serve_app.pipelines.video_exports import VideoExports
from serve_app.pipelines.video_jobs import PcsVideoJob, VideoExportJob
from serve_app.schemas import ConceptImageRequest


class ConceptImageJob:
    """Concept segmentation of one image as a job."""

    name = "pcs_image"

    def __init__(self, pipeline: ConceptPipeline):
        self.pipeline = pipeline

    def validate(self, input: dict) -> None:
        validate_options(parse_job_input(ConceptImageRequest, input), self.pipeline.limits)

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        request = parse_job_input(ConceptImageRequest, input)
        data = await self.pipeline.images.load(request.image)
        response, overlay_png = await self.pipeline.segment(data, request, request_id=ctx.job_id)
        return JobOutput(response.model_dump_json(exclude_none=True, by_alias=True).encode(), overlay_png)


def job_kinds(pipeline: ConceptPipeline, exports: VideoExports, jobs: JobsConfig,
              video_slots: asyncio.Semaphore) -> JobKindRegistry:
    """Every kind this app knows, for one tenant; the ingress validates submissions with it, JobWorker executes
    them. `video_slots`: the worker's pcs_video runs at once, shared by the registries of all tenants."""
    registry = JobKindRegistry()
    registry.register(ConceptImageJob(pipeline))
    registry.register(VideoExportJob(exports))
    registry.register(PcsVideoJob(exports, jobs, video_slots))
    return registry
