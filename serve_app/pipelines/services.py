"""`Services`: the CPU-side building blocks one replica (ingress or job worker) shares across requests, as
seen by ONE tenant.

    services = Services.create(app_config, concept_handle, sessions_handle)   # the default tenant's
    acme = services.for_tenant("acme")        # the same store, model handles and pools; acme's keys only

Every object here that touches storage is bound to its tenant (`t/{tenant}/…` keys, the embedding-cache key
`{tenant}/{image}`), so code that holds a tenant's Services cannot reach another tenant's objects: an id of
another tenant is simply not found (404, no existence oracle). `for_tenant` builds a tenant's view once per
replica (cheap: no I/O) and caches it; the ingress picks the view of the request's authenticated tenant
(serve_app.ingress.auth sets it), JobWorker the view of the job's tenant.

Built once per replica from AppConfig; opening the store makes no network call, so a replica starts
even while storage is down (requests that need it then get 503 + Retry-After). Also sizes the replica's
CPU and storage thread pools (pipelines/pools.py: ingress.cpu_threads, storage.io_threads).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
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
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore
from serve_app.storage.check import open_store_explained


@dataclass(frozen=True)
class _Shared:
    """What every tenant's view shares: config, store, deployment handles, and the views built so far."""

    config: AppConfig
    store: ArtifactStore
    concept_handle: Any
    sessions_handle: Any
    video_job_slots: asyncio.Semaphore  # pcs_video runs at once on this replica, all tenants together
    views: dict[str, Services] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Services:
    tenant: str
    images: ImageLibrary
    concept: ConceptPipeline
    results: ResultPublisher
    jobs: JobService
    video: VideoSessions
    exports: VideoExports
    shared: _Shared

    @property
    def config(self) -> AppConfig:
        return self.shared.config

    @property
    def store(self) -> ArtifactStore:
        return self.shared.store

    @classmethod
    def create(cls, cfg: AppConfig, concept_handle: Any, sessions_handle: Any) -> Services:
        """`concept_handle`, `sessions_handle`: the ConceptSegmenter and SessionManager DeploymentHandles.
        Returns the view of storage.default_tenant."""
        pools.configure(cfg.ingress.cpu_threads, cfg.storage.io_threads)
        store = open_store_explained(cfg.storage)  # a directory that cannot be written: one line, the fix
        shared = _Shared(cfg, store, concept_handle, sessions_handle,
                         asyncio.Semaphore(cfg.jobs.max_concurrent_video_jobs))
        return cls._build(shared, cfg.storage.default_tenant)

    def for_tenant(self, tenant: str) -> Services:
        """The view of `tenant` (validated), built on first use and cached for the replica's lifetime."""
        if tenant == self.tenant:
            return self
        with self.shared.lock:
            return self.shared.views.get(tenant) or Services._build(self.shared, keys.validate_tenant(tenant))

    @classmethod
    def _build(cls, shared: _Shared, tenant: str) -> Services:
        cfg, store = shared.config, shared.store
        images = ImageLibrary(store, cfg.storage, cfg.limits, tenant)
        concept = ConceptPipeline(ModelClient(shared.concept_handle, cfg.ingress.model_timeout_s), images, cfg.limits)
        video = VideoSessions(shared.sessions_handle, store, tenant, cfg)
        exports = VideoExports(video)
        kinds = job_kinds(concept, exports, cfg.jobs, shared.video_job_slots)
        jobs = JobService(store, cfg.jobs, kinds, tenant=tenant)
        view = cls(tenant=tenant, images=images, concept=concept, results=ResultPublisher(store, cfg.storage, tenant),
                   jobs=jobs, video=video, exports=exports, shared=shared)
        return shared.views.setdefault(tenant, view)  # every view, the default tenant's included, once
