"""`Services`: the CPU-side building blocks one replica (ingress or job worker) shares across requests.

    services = Services.create(app_config, concept_handle, sessions_handle)

Built once per replica from AppConfig; opening the store makes no network call, so a replica starts
even while storage is down (requests that need it then get 503 + Retry-After). Also sizes the replica's
CPU and storage thread pools (pipelines/pools.py: ingress.cpu_threads, storage.io_threads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig
from serve_app.jobs.service import JobService
from serve_app.pipelines import pools
from serve_app.pipelines.concept import ConceptPipeline
from serve_app.pipelines.image_library import ImageLibrary
from serve_app.pipelines.job_kinds import job_kinds
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.results import ResultPublisher
from serve_app.pipelines.video import VideoSessions
from serve_app.pipelines.video_exports import VideoExports
from serve_app.storage.base import ArtifactStore
from serve_app.storage.check import open_store_explained


@dataclass(frozen=True)
class Services:
    config: AppConfig
    store: ArtifactStore
    images: ImageLibrary
    concept: ConceptPipeline
    results: ResultPublisher
    jobs: JobService
    video: VideoSessions
    exports: VideoExports

    @classmethod
    def create(cls, cfg: AppConfig, concept_handle: Any, sessions_handle: Any) -> Services:
        """`concept_handle`, `sessions_handle`: the ConceptSegmenter and SessionManager DeploymentHandles."""
        pools.configure(cfg.ingress.cpu_threads, cfg.storage.io_threads)
        store = open_store_explained(cfg.storage)  # a directory that cannot be written: one line, the fix
        images = ImageLibrary(store, cfg.storage, cfg.limits)
        concept = ConceptPipeline(ModelClient(concept_handle, cfg.ingress.model_timeout_s), images, cfg.limits)
        video = VideoSessions(sessions_handle, store, images.tenant, cfg)
        exports = VideoExports(video)
        jobs = JobService(store, cfg.jobs, job_kinds(concept, exports, cfg.jobs), tenant=cfg.storage.default_tenant)
        return cls(config=cfg, store=store, images=images, concept=concept,
                   results=ResultPublisher(store, cfg.storage), jobs=jobs, video=video, exports=exports)
