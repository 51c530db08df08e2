"""What both GPU model deployments share: a runner loaded by import path, one @serve.batch queue whose
knobs follow the Serve user_config, health checks and the gated debug interface.

Runners are injected (as Ray's LLM server takes an engine class): `runner` is an import path
"module:Class" of a class with `from_config(model_cfg, section_cfg)` that implements the protocols in
serve_app.model.protocols. torch is imported in the replica only, never by the code that builds the app.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from ray import serve

from serve_app.config import BatchingConfig, ModelConfig
from serve_app.errors import Forbidden, Sam3Error
from serve_app.model.protocols import BatchResult
from serve_app.model.types import ModelInfo

R = TypeVar("R")

log = logging.getLogger(__name__)


def import_runner(path: str) -> Any:
    """'package.module:Class' -> the class."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def load_runner(path: str, model: ModelConfig, section: Any) -> Any:
    """`import_runner(path).from_config(model, section)`, in the replica (torch is imported here).

    A checkpoint that cannot be loaded for a known reason (serve_app.model.loading.ModelLoadError: no Hub, gated
    repo, unknown id, not a SAM 3 checkpoint, transformers too old) is logged as its ONE line, no traceback,
    and raised without its chain (Ray puts the constructor's traceback in the deployment's status message,
    where `errors.startup_lines` finds the line). Serve retries a failing constructor and marks the deployment
    DEPLOY_FAILED after min(max_constructor_retry_count (20), 3 x target replicas) failures in a row (Ray
    2.60, deployment_state.py `_failed_to_start_threshold`), so it does not crash-loop forever. Any other
    exception keeps its traceback."""
    from serve_app.model.loading import ModelLoadError, model_load_errors

    try:
        with model_load_errors(model):
            return import_runner(path).from_config(model, section)
    except ModelLoadError as err:
        log.error("%s", err.line)
        raise err.with_traceback(None) from None


def raise_if_error(answer: BatchResult[R]) -> R:
    """The batched runners answer a request's own failure as a value (the batch protocol of
    model.protocols): raise it here, in that request's caller only (a @serve.batch method's caller gets its
    own item of the batch's answers)."""
    if isinstance(answer, Sam3Error):
        raise answer
    return answer


class BatchedCall(Protocol):
    """What `serve.batch(...)(fn)` returns: awaited with ONE request (Serve queues them into batches), plus
    setters for the queue's knobs. Ray annotates it as a plain Callable, so the setters are invisible to mypy."""

    def __call__(self, request: Any, /) -> Awaitable[Any]: ...

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


class ModelDeployment:
    """Mixin for a deployment class holding `self.runner` (a ModelRunner) and one batched method."""

    runner: Any
    debug_enabled: bool = False

    def _init_batching(
        self,
        batching: BatchingConfig,
        fn: Callable[[list[Any]], Coroutine[Any, Any, list[Any]]],
        max_concurrent_batches: int = 1,
    ) -> None:
        self.batching = batching
        batched = serve.batch(
            max_batch_size=batching.max_batch_size,
            batch_wait_timeout_s=batching.batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches,
        )(fn)
        self._batched = cast(BatchedCall, batched)  # Ray's wrapper has the setters its annotation omits
        self._run_batch = fn
        self._in_flight = 0
        from ray.serve.metrics import Counter

        # Serve adds the `deployment` (and replica, app) tags itself
        self._model_seconds = Counter(
            "sam3_tenant_model_seconds_total", tag_keys=("tenant",),
            description="Model (GPU) seconds by tenant: each batch's model time split evenly over its requests")

    def _charge_model_time(self, tenants: list[str], seconds: float) -> None:
        """Add a batch's model wall time (`seconds`) to sam3_tenant_model_seconds_total, an equal share per
        request (`tenants`: each request's tenant, in batch order)."""
        if not tenants:
            return
        share = seconds / len(tenants)
        for tenant in set(tenants):
            self._model_seconds.inc(share * tenants.count(tenant), tags={"tenant": tenant})

    async def _submit(self, request: Any) -> Any:
        """One request's answer (the batch protocol's value, see raise_if_error). Through the @serve.batch
        queue, except when `batching.eager_when_idle` and nothing else is in flight on this replica: then it
        runs at once as a batch of one, so at low load nobody waits batch_wait_timeout_s for company that is
        not coming. Requests that arrive meanwhile queue and form batches as configured."""
        self._in_flight += 1
        try:
            if self._in_flight == 1 and self.batching.eager_when_idle:
                return (await self._run_batch([request]))[0]
            return await self._batched(request)
        finally:
            self._in_flight -= 1

    def reconfigure(self, user_config: dict) -> None:
        """Serve calls this with the deployment's user_config (a BatchingConfig) at start and on every
        change of the config: the batch queue picks the new knobs up without a restart."""
        if user_config:  # None/{}: keep the section's own values (set at construction)
            self.batching = BatchingConfig.model_validate(user_config)
        self._batched.set_max_batch_size(self.batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)

    def check_health(self) -> None:
        """Serve's periodic health check: the runner runs a tiny kernel on its device within a timeout
        (model.runtime.DeviceHealth; a no-op on the CPU), so a wedged CUDA context raises here and Serve
        replaces the replica."""
        self.runner.check_health()

    def info(self) -> ModelInfo:
        return self.runner.info

    # ------------------------------------------------------------ debug interface (observability.debug_interface)
    def _require_debug(self) -> None:
        if not self.debug_enabled:
            raise Forbidden("the debug interface is off (observability.debug_interface)", "debug_disabled")

    def debug_stats(self) -> dict[str, Any]:
        """The runner's counters plus the live batching knobs (tests, benchmarks)."""
        self._require_debug()
        return {**self.runner.debug_stats(), **self.batching.model_dump()}

    def debug_reset(self) -> None:
        """Zero the runner's counters and drop its caches."""
        self._require_debug()
        self.runner.debug_reset()
