"""`build_app(args)`: the only place that binds deployments into a Serve application.

    serve run serve_config.yaml            # import_path: serve_app.app:build_app, args: AppConfig

`args` is validated as AppConfig (typos fail the deploy), then turned into per-deployment options.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from ray.serve import Application, Deployment
from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig

from serve_app.config import AppConfig, ClickConfig, ReplicaConfig

log = logging.getLogger(__name__)

QUOTA_KEEPER_CPUS = 0.1  # a dict lookup per request: it needs no core of its own


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this app is being built for, right now (0 without Ray)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def cluster_has_gpu() -> bool:
    """True when the Ray cluster this app is being built for has at least one GPU right now."""
    return cluster_gpus() > 0


def auto_gpu_share(cfg: AppConfig) -> float:
    """What num_gpus 'auto' means for each model deployment: one GPU, or half of it when the cluster has a
    single GPU and both ConceptSegmenter and ClickSegmenter are 'auto' (else one would wait forever)."""
    both_auto = cfg.concept.replica.num_gpus == "auto" and cfg.click.replica.num_gpus == "auto"
    return 0.5 if both_auto and 0 < cluster_gpus() < 2 else 1.0


def deployment_options(replica: ReplicaConfig, *, gpu: bool, auto_gpus: float = 1.0) -> dict[str, Any]:
    """ReplicaConfig -> kwargs for `Deployment.options`. `gpu` marks deployments that want a GPU; 'auto'
    then resolves to `auto_gpus` when the cluster has a GPU, else 0."""
    num_gpus = replica.num_gpus
    if num_gpus == "auto":
        num_gpus = auto_gpus if gpu and cluster_has_gpu() else 0
    actor_options: dict[str, Any] = {"num_cpus": replica.num_cpus, "num_gpus": num_gpus}
    if replica.accelerator_type:
        actor_options["accelerator_type"] = replica.accelerator_type
    opts: dict[str, Any] = {
        "ray_actor_options": actor_options,
        "max_ongoing_requests": replica.max_ongoing_requests,
        "max_queued_requests": replica.max_queued_requests,
        "graceful_shutdown_timeout_s": replica.graceful_shutdown_timeout_s,
    }
    if replica.autoscaling is not None:
        opts["autoscaling_config"] = ServeAutoscalingConfig(**replica.autoscaling.model_dump(exclude_none=True))
    else:
        opts["num_replicas"] = replica.num_replicas
    return opts


def click_routing(cfg: ClickConfig) -> dict[str, Any]:
    """ClickSegmenter routing: consistent hashing on the image (callers pass `session_id=cache_key`), so an
    image's clicks reach the replica whose embedding cache holds it. Chosen over @serve.multiplexed, whose
    per-replica LRU counts models (not bytes) and only learns an id after a `get_model(id)` load on that
    replica: the cache would have to load pixels it does not get on a hit. Affinity is a hint either way:
    replica-set changes and back-pressure fallbacks move images, and a miss recomputes (see pipelines/click)."""
    if cfg.routing != "consistent_hash":
        return {}
    from ray.serve.config import RequestRouterConfig

    # a typed dict first: Ray annotates RequestRouterConfig(**kwargs: dict[str, Any]), i.e. every value a dict
    router_args: dict[str, Any] = {
        "request_router_class": "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter",
        "request_router_kwargs": {"num_fallback_replicas": cfg.num_fallback_replicas},
    }
    return {"request_router_config": RequestRouterConfig(**router_args)}


def as_deployment(cls: object) -> Deployment:
    """A `@serve.deployment` class as what it is at run time (the decorator's result is invisible to mypy)."""
    return cast(Deployment, cls)


def build_app(args: dict[str, Any] | None = None) -> Application:
    from ray.serve.config import BackpressureConfig

    from serve_app.deployments.click import ClickSegmenter
    from serve_app.deployments.concept import ConceptSegmenter
    from serve_app.deployments.job_worker import JobWorker
    from serve_app.deployments.quota_keeper import QuotaKeeper
    from serve_app.deployments.session_manager import SessionManager
    from serve_app.ingress.deployment import Sam3Ingress

    cfg = AppConfig.model_validate(args or {})
    gpu_share = auto_gpu_share(cfg)
    debug = cfg.observability.debug_interface
    concept = as_deployment(ConceptSegmenter).options(
        **deployment_options(cfg.concept.replica, gpu=True, auto_gpus=gpu_share),
        user_config=cfg.concept.batching.model_dump(),
    ).bind(cfg.model, cfg.concept, debug=debug)
    click = as_deployment(ClickSegmenter).options(
        **deployment_options(cfg.click.replica, gpu=True, auto_gpus=gpu_share),
        **click_routing(cfg.click),
        user_config=cfg.click.batching.model_dump(),
    ).bind(cfg.model, cfg.click, debug=debug)
    ingress = as_deployment(Sam3Ingress).options(
        **deployment_options(cfg.ingress.replica, gpu=False),
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=cfg.ingress.retry_after_s),
    )
    sessions = as_deployment(SessionManager).options(**deployment_options(cfg.video.manager, gpu=False)).bind(cfg)
    job_worker = as_deployment(JobWorker).options(**deployment_options(cfg.jobs.worker, gpu=False)).bind(
        cfg, concept, sessions)
    # one replica: the single ledger every ingress replica asks (pipelines/quotas.py); only when a limit is set
    quotas = as_deployment(QuotaKeeper).options(
        num_replicas=1, ray_actor_options={"num_cpus": QUOTA_KEEPER_CPUS}, max_ongoing_requests=1000,
    ).bind(cfg) if cfg.auth.any_quota else None
    log.info("building sam3 app: model=%s storage=%s", cfg.model.model_id, cfg.storage.uri)
    return ingress.bind(cfg, concept, click, job_worker, sessions, quotas)
