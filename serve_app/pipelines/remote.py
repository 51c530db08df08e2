"""Calling model deployments: Ray Serve / asyncio failures become our typed errors at the call site.

Serve installs its own FastAPI handlers for BackPressureError / DeploymentUnavailableError (plain-text
503s), so they must be translated before they reach FastAPI. Status codes live on the error classes;
serve_app.ingress.errors turns them into responses.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from serve_app.errors import Overloaded, Sam3Error, Timeout, Unavailable

T = TypeVar("T")
RETRY_AFTER_S = 2


def translate_remote_error(exc: BaseException) -> Sam3Error | None:
    """A Sam3Error for known Ray/Serve/asyncio failures (and wrapped Sam3Errors); None for bugs."""
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    cause = getattr(exc, "cause", None)  # a RayTaskError raised in a replica carries the original
    if isinstance(cause, Sam3Error):
        return cause
    if isinstance(exc, Sam3Error):
        return exc
    if isinstance(exc, serve_exc.BackPressureError):
        return Overloaded("the model replicas are saturated, retry later", retry_after_s=RETRY_AFTER_S)
    if isinstance(exc, (serve_exc.DeploymentUnavailableError, ray_exc.RayActorError, ray_exc.ActorUnavailableError)):
        return Unavailable("model replicas are unavailable, retry later", "model_unavailable",
                           retry_after_s=RETRY_AFTER_S)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, serve_exc.RequestCancelledError)):
        return Timeout("the model did not answer in time", "model_timeout")
    return None


async def call_remote(awaitable: Awaitable[T], timeout_s: float) -> T:
    """Await a DeploymentResponse with a deadline; raise Sam3Errors for known failures."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except Exception as exc:
        err = translate_remote_error(exc)
        if err is None or err is exc:
            raise
        raise err from exc
