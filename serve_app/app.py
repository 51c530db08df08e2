"""`build_app(args)`: the only place that binds deployments into a Serve application.

    serve run serve_config.yaml            # import_path: serve_app.app:build_app, args: AppConfig

`args` is validated as AppConfig (typos fail the deploy), then turned into per-deployment options.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application
from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig

from serve_app.config import AppConfig, ReplicaConfig

log = logging.getLogger(__name__)


def cluster_has_gpu() -> bool:
    """True when the Ray cluster this app is being built for has at least one GPU right now."""
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def deployment_options(replica: ReplicaConfig, *, gpu: bool) -> dict[str, Any]:
    """ReplicaConfig -> kwargs for `Deployment.options`. `gpu` marks deployments that want a GPU."""
    num_gpus = replica.num_gpus
    if num_gpus == "auto":
        num_gpus = 1 if gpu and cluster_has_gpu() else 0
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


def build_app(args: dict[str, Any] | None = None) -> Application:
    from ray.serve.config import BackpressureConfig

    from serve_app.deployments.concept import ConceptSegmenter
    from serve_app.deployments.ingress import Sam3Ingress

    cfg = AppConfig.model_validate(args or {})
    concept = ConceptSegmenter.options(
        **deployment_options(cfg.concept.replica, gpu=True),
        user_config=cfg.concept.batching.model_dump(),
    ).bind(cfg.model.model_dump(), cfg.concept.model_dump())
    ingress = Sam3Ingress.options(
        **deployment_options(cfg.ingress.replica, gpu=False),
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=cfg.ingress.retry_after_s),
    )
    log.info("building sam3 app: model=%s", cfg.model.model_id)
    return ingress.bind(concept, cfg.model_dump())
