"""What both GPU model deployments share: a runner loaded by import path, one @serve.batch queue whose
knobs follow the Serve user_config, health checks and the gated debug interface.

Runners are injected (as Ray's LLM server takes an engine class): `runner` is an import path
"module:Class" of a class with `from_config(model_cfg, section_cfg)` that implements the protocols in
serve_app.model.protocols. torch is imported in the replica only, never by the code that builds the app.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from ray import serve

from serve_app.config import BatchingConfig
from serve_app.errors import Forbidden, Sam3Error
from serve_app.model.protocols import BatchResult
from serve_app.model.types import ModelInfo

R = TypeVar("R")


def import_runner(path: str) -> Any:
    """'package.module:Class' -> the class."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


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
