"""The runner interfaces the thin model deployments are written against (no torch here).

A deployment receives its runner class by import path (as Ray's LLM server receives an engine class), so a
test or a new backend can inject another implementation. One error protocol for every batched runner:
`segment_batch` answers each request with its result or with the `Sam3Error` of that request alone (bad
pixels, prompts outside the image...). It never raises for one request's fault, so one bad request in a
@serve.batch batch fails only itself; the deployment re-raises that request's error to its caller.
"""

from __future__ import annotations

from typing import Any, Protocol

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

    def segment_batch(self, requests: list[ConceptRequest]) -> list[ConceptResponse | Sam3Error]:
        """Answer i belongs to request i."""


class ClickRunnerProtocol(ModelRunner, Protocol):
    @classmethod
    def from_config(cls, model: ModelConfig, click: ClickConfig) -> ClickRunnerProtocol: ...

    def segment_batch(self, requests: list[ClickRequest]) -> list[ClickResponse | EmbeddingMiss | Sam3Error]:
        """Answer i belongs to request i; EmbeddingMiss = send again with pixels."""

    def generate_masks(self, request: AutoRequest) -> AutoResponse | EmbeddingMiss:
        """Automatic mask generation on one image. Raises Sam3Error for bad knobs."""

    def resize_cache(self, max_bytes: int) -> int:
        """Set the embedding cache's byte budget now; returns how many embeddings were evicted."""
