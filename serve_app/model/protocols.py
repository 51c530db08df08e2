"""The runner interfaces the thin model deployments are written against (no torch here).

A deployment receives its runner class by import path (as Ray's LLM server receives an engine class), so a
test or a new backend can inject another implementation.

The batch error protocol, the one for every batched runner (`BatchResult`): `segment_batch(requests)`
returns one answer per request, answer i for request i, each either that request's result or the
`Sam3Error` of that request ALONE:
- a request that fails validation (bad pixels, prompts outside the image, text the tokenizer rejects) gets
  its 4xx error and is left out of the batched forward;
- a request whose own pre/post-processing raises gets a 500 `model_error` (stack logged on the replica);
- a batched forward that fails is run again in halves down to single requests (model.runtime.run_isolated):
  an out-of-memory that persists for a request alone answers `ModelOutOfMemory` (503 + Retry-After), any
  other failure a 500 `model_error`, and the other requests get their results.
`segment_batch` never raises for one request's fault, so one bad request in a @serve.batch batch fails
only itself: the deployment re-raises each request's error to that request's caller only
(deployments.base.raise_if_error).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias, TypeVar

from serve_app.config import ClickConfig, ConceptConfig, ModelConfig
from serve_app.errors import Sam3Error
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    ClickRequest,
    ClickResponse,
    ConceptRequest,
    ConceptResponse,
    EmbeddingMiss,
    ModelInfo,
)

R = TypeVar("R")

BatchResult: TypeAlias = R | Sam3Error
"""One request's answer from a batched runner: its result, or its own error (the protocol above)."""

ConceptAnswer: TypeAlias = BatchResult[ConceptResponse]
ClickAnswer: TypeAlias = BatchResult[ClickResponse | EmbeddingMiss]  # EmbeddingMiss: send again with pixels


class ModelRunner(Protocol):
    """What every runner offers besides its model work."""

    info: ModelInfo

    def check_health(self) -> None:
        """Raise if the device can no longer run a kernel (Serve then restarts the replica)."""

    def debug_stats(self) -> dict[str, Any]:
        """Counters of model calls (vision/text/decoder calls, batches, cache) for tests and benchmarks."""

    def debug_reset(self) -> None:
        """Zero the counters (and drop caches), so a benchmark starts cold."""


class ConceptRunnerProtocol(ModelRunner, Protocol):
    @classmethod
    def from_config(cls, model: ModelConfig, concept: ConceptConfig) -> ConceptRunnerProtocol: ...

    def segment_batch(self, requests: list[ConceptRequest]) -> list[ConceptAnswer]:
        """Answer i belongs to request i."""

    def debug_poison_text(self, text: str | None) -> None:
        """Make the tokenizer fail on prompt `text` (None: stop) until debug_reset: the stand-in for an input
        that passes the ingress but fails in its own processing on the replica (batch-isolation tests)."""


class ClickRunnerProtocol(ModelRunner, Protocol):
    @classmethod
    def from_config(cls, model: ModelConfig, click: ClickConfig) -> ClickRunnerProtocol: ...

    def segment_batch(self, requests: list[ClickRequest]) -> list[ClickAnswer]:
        """Answer i belongs to request i; EmbeddingMiss = send again with pixels."""

    def generate_masks(self, request: AutoRequest) -> AutoResponse | EmbeddingMiss:
        """Automatic mask generation on one image. Raises Sam3Error for bad knobs, ModelOutOfMemory (503)
        when the device runs out of memory."""

    def resize_cache(self, max_bytes: int) -> int:
        """Set the embedding cache's byte budget now; returns how many embeddings were evicted."""
