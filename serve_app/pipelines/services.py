"""`Services`: the CPU-side building blocks one replica (ingress or job worker) shares across requests.

    services = build_services(app_config, concept_handle)

Built once per replica from AppConfig; opening the store makes no network call, so a replica starts
even while storage is down (requests that need it then get 503 + Retry-After).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig
from serve_app.jobs.service import JobService
from serve_app.pipelines.images import ImageLibrary
from serve_app.pipelines.jobs import job_kinds
from serve_app.pipelines.pcs import PcsPipeline
from serve_app.pipelines.results import ResultPublisher
from serve_app.storage import open_store
from serve_app.storage.base import ArtifactStore


@dataclass
class Services:
    config: AppConfig
    store: ArtifactStore
    images: ImageLibrary
    pcs: PcsPipeline
    results: ResultPublisher
    jobs: JobService


def build_services(cfg: AppConfig, concept: Any) -> dict[str, Any]:
    """The Services fields for `cfg`, with `concept` the ConceptSegmenter handle (a dict, so subclasses like
    IngressContext can add their own)."""
    store = open_store(cfg.storage)
    images = ImageLibrary(store, cfg.storage, cfg.limits)
    pcs = PcsPipeline(concept, images, cfg.limits, cfg.ingress.model_timeout_s)
    jobs = JobService(store, cfg.jobs, job_kinds(pcs), tenant=cfg.storage.default_tenant)
    return dict(config=cfg, store=store, images=images, pcs=pcs,
                results=ResultPublisher(store, cfg.storage), jobs=jobs)
