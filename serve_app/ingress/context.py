"""What the routes of one ingress replica share: config, pipelines, storage, model handles. Set at replica start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from serve_app.config import AppConfig
from serve_app.pipelines.pvs import PromptPipeline
from serve_app.pipelines.services import Services, build_services


@dataclass
class IngressContext(Services):
    job_worker: Any = None  # DeploymentHandle to JobWorker (None: jobs are only run by recovery)
    prompts: PromptPipeline | None = None  # uploads' precompute, clicks, automatic masks

    @classmethod
    def create(cls, cfg: AppConfig, concept: Any, job_worker: Any = None, prompt: Any = None) -> IngressContext:
        services = build_services(cfg, concept)
        prompts = PromptPipeline(prompt, services["images"], cfg.prompt, cfg.ingress.model_timeout_s)
        return cls(**services, job_worker=job_worker, prompts=prompts)


def get_context(request: Request) -> IngressContext:
    """FastAPI dependency: the replica's IngressContext."""
    return request.app.state.ctx
