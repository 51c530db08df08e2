"""What the routes of one ingress replica share, set at replica start (serve_app.ingress.deployment), as seen by
the request's tenant: `get_context` returns the view of the tenant that serve_app.ingress.auth authenticated
(`request.state.tenant`; storage.default_tenant with auth.mode none)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.requests import HTTPConnection

from serve_app.config import AppConfig
from serve_app.pipelines.click import ClickPipeline
from serve_app.pipelines.quotas import QuotaGate
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.services import Services
from serve_app.pipelines.video import VideoSessions


@dataclass(frozen=True)
class IngressContext:
    services: Services  # one tenant's config, store, images, concept, results, jobs, video, exports (as JobWorker's)
    click: ClickPipeline  # uploads' precompute, clicks, automatic masks
    job_worker: Any  # DeploymentHandle to JobWorker: runs submitted jobs (its replicas also recover them)
    quotas: QuotaGate = field(default_factory=QuotaGate.disabled)  # the QuotaKeeper's client
    _views: dict[str, IngressContext] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def video(self) -> VideoSessions:
        """Video sessions (through the SessionManager deployment and the session actors)."""
        return self.services.video

    @property
    def config(self) -> AppConfig:
        return self.services.config

    @property
    def tenant(self) -> str:
        return self.services.tenant

    @classmethod
    def create(cls, cfg: AppConfig, concept: Any, click: Any, job_worker: Any, sessions: Any,
               quotas: Any = None) -> IngressContext:
        """`concept`, `click`, `job_worker`, `sessions`, `quotas`: the DeploymentHandles of ConceptSegmenter,
        ClickSegmenter, JobWorker, SessionManager and QuotaKeeper (None: no limits). Returns the view of
        storage.default_tenant."""
        services = Services.create(cfg, concept, sessions)
        click_pipeline = ClickPipeline(ModelClient(click, cfg.ingress.model_timeout_s), services.images, cfg.click)
        return cls(services=services, click=click_pipeline, job_worker=job_worker,
                   quotas=QuotaGate(quotas, cfg.auth.quota_of))

    def for_tenant(self, tenant: str) -> IngressContext:
        """The same replica's context for `tenant` (built once, then cached; shares the handles and pools)."""
        if tenant == self.tenant:
            return self
        with self._lock:
            view = self._views.get(tenant)
            if view is None:
                services = self.services.for_tenant(tenant)
                click = ClickPipeline(self.click.model, services.images, self.config.click) if self.click else None
                view = IngressContext(services, click, self.job_worker, self.quotas,  # type: ignore[arg-type]
                                      self._views, self._lock)
                self._views[tenant] = view
            return view


def context_of(conn: HTTPConnection) -> IngressContext:
    """The context of a request or WebSocket's authenticated tenant (`conn.state.tenant`, set by
    serve_app.ingress.auth; none set: the replica's default tenant)."""
    ctx: IngressContext = conn.app.state.ctx
    tenant = getattr(conn.state, "tenant", None)
    return ctx if tenant is None else ctx.for_tenant(tenant)


async def get_context(request: Request) -> IngressContext:
    """FastAPI dependency: the replica's IngressContext for the request's tenant (async: FastAPI runs a sync
    dependency in its thread pool, a hand-off per request for a dict lookup)."""
    return context_of(request)
