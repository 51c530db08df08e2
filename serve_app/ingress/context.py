"""What the routes of one ingress replica share, set at replica start (serve_app.ingress.deployment)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from serve_app.config import AppConfig
from serve_app.pipelines.click import ClickPipeline
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.services import Services
from serve_app.pipelines.video import VideoSessions


@dataclass(frozen=True)
class IngressContext:
    services: Services  # config, store, images, concept pipeline, results, jobs, video sessions, exports (shared with JobWorker)
    click: ClickPipeline  # uploads' precompute, clicks, automatic masks
    job_worker: Any  # DeploymentHandle to JobWorker: runs submitted jobs (its replicas also recover them)

    @property
    def video(self) -> VideoSessions:
        """Video sessions (through the SessionManager deployment and the session actors)."""
        return self.services.video

    @property
    def config(self) -> AppConfig:
        return self.services.config

    @classmethod
    def create(cls, cfg: AppConfig, concept: Any, click: Any, job_worker: Any, sessions: Any) -> IngressContext:
        """`concept`, `click`, `job_worker`, `sessions`: the DeploymentHandles of ConceptSegmenter,
        ClickSegmenter, JobWorker, SessionManager."""
        services = Services.create(cfg, concept, sessions)
        click_pipeline = ClickPipeline(ModelClient(click, cfg.ingress.model_timeout_s), services.images, cfg.click)
        return cls(services=services, click=click_pipeline, job_worker=job_worker)


def get_context(request: Request) -> IngressContext:
    """FastAPI dependency: the replica's IngressContext."""
    return request.app.state.ctx
