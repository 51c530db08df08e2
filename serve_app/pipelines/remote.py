"""Calling model deployments: one client per model deployment, with the Ray Serve / asyncio failures of a
handle call turned into our typed errors at the call site.

Serve installs its own FastAPI handlers for BackPressureError / DeploymentUnavailableError (plain-text
503s), so they must be translated before they reach FastAPI. Only handle calls go through this
translation: any other exception that reaches the error handler is a bug (500). Status codes live on the
error classes; serve_app.ingress.error_handling turns them into responses (and adds the configured Retry-After).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from serve_app.errors import Overloaded, Sam3Error, Timeout, Unavailable
from serve_app.model.types import ModelInfo

_TIMEOUT_CM = sys.version_info >= (3, 11)  # asyncio.timeout


def translate_handle_error(exc: BaseException) -> Sam3Error | None:
    """A Sam3Error for the failures a DeploymentHandle call can raise (and Sam3Errors a replica raised);
    None for anything else."""
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    cause = getattr(exc, "cause", None)  # a RayTaskError raised in a replica carries the original
    if isinstance(cause, Sam3Error):
        return cause
    if isinstance(exc, Sam3Error):
        return exc
    if isinstance(exc, serve_exc.BackPressureError):
        return Overloaded("the model replicas are saturated, retry later")
    if isinstance(exc, (serve_exc.DeploymentUnavailableError, ray_exc.RayActorError, ray_exc.ActorUnavailableError)):
        return Unavailable("model replicas are unavailable, retry later", "model_unavailable")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, serve_exc.RequestCancelledError)):
        return Timeout("the model did not answer in time", "model_timeout")
    return None


class ModelClient:
    """Calls one model deployment through its DeploymentHandle, with a deadline per call and the
    checkpoint facts (ModelInfo) fetched once per replica process."""

    def __init__(self, handle: Any, timeout_s: float):
        self.handle = handle
        self.timeout_s = timeout_s
        self._info: ModelInfo | None = None

    async def info(self) -> ModelInfo:
        if self._info is None:
            self._info = await self.call("info")
        return self._info

    async def call(self, method: str, *args: Any, routing_key: str | None = None) -> Any:
        """`handle.<method>.remote(*args)` awaited within timeout_s; `routing_key` is the
        ConsistentHashRouter key (Serve's `session_id` option). Raises Sam3Errors for known failures.

        A call that times out, or whose caller is cancelled (client gone, job cancelled), is cancelled on the
        model replica too (best effort: Serve drops it if still queued, else cancels the replica's task).
        Serve does that by itself only for requests of an ingress deployment, and never on our timeout."""
        handle = self.handle.options(session_id=routing_key) if routing_key is not None else self.handle
        response = getattr(handle, method).remote(*args)
        try:
            if _TIMEOUT_CM:  # the deadline on this task: no extra task per call as wait_for makes (< 3.12)
                async with asyncio.timeout(self.timeout_s):
                    return await response
            return await asyncio.wait_for(response, self.timeout_s)
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):  # = asyncio.TimeoutError: our deadline
                response.cancel()
            err = translate_handle_error(exc)
            if err is None or err is exc:
                raise
            raise err from exc
