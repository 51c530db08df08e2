"""Sam3Ingress: the FastAPI front door on CPU replicas. Holds handles to the model deployments."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app


@serve.deployment
@serve.ingress()
class Sam3Ingress:
    def __init__(self, config: AppConfig, concept: DeploymentHandle, click: DeploymentHandle,
                 job_worker: DeploymentHandle, sessions: DeploymentHandle, quotas: DeploymentHandle | None = None):
        """`quotas`: the QuotaKeeper's handle, None when no tenant has a limit."""
        self.ctx = IngressContext.create(config, concept, click, job_worker, sessions, quotas)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after __init__ in each replica: the app's routes reach the context via app.state; the
        config sets authentication and CORS (a bad auth.keys_file fails the replica's start here)."""
        app = create_app(self.ctx.config)
        app.state.ctx = self.ctx
        return app
