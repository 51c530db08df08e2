"""ClickSegmenter: a thin Serve deployment over a click runner (clicks, boxes, masks; automatic masks).

Callers (the ingress) route by image: `handle.options(session_id=cache_key)` with Serve's
ConsistentHashRouter (configured in serve_app.app; Ray's `session_id` routing option, not a video
session), so an image's clicks reach the replica whose embedding cache holds it. Routing is only a hint:
a replica without the embedding answers EmbeddingMiss and the caller retries with pixels. Concurrent
`segment` calls are merged by @serve.batch into one `segment_batch` of the runner (default
serve_app.model.click:ClickRunner); batching knobs follow the Serve user_config (`reconfigure`).
Cache hits/misses/evictions/bytes are exported as Ray Serve metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.config import ClickConfig, ModelConfig
from serve_app.deployments.base import ModelDeployment, load_runner, raise_if_error
from serve_app.errors import Sam3Error
from serve_app.model.protocols import ClickAnswer
from serve_app.model.types import AutoRequest, AutoResponse, ClickRequest, ClickResponse, EmbeddingMiss

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "serve_app.model.click:ClickRunner"


class CacheMetrics:
    """Turns the runner's cumulative counters into Serve metric increments (Counters only go up)."""

    def __init__(self) -> None:
        self.hits = Counter("sam3_embedding_cache_hits_total", description="Requests served from the cache")
        self.misses = Counter("sam3_embedding_cache_misses_total",
                              description="Requests whose image embedding was not cached")
        self.evictions = Counter("sam3_embedding_cache_evictions_total", description="Embeddings evicted")
        self.vision_calls = Counter("sam3_click_vision_calls_total", description="Vision-encoder forwards")
        self.bytes = Gauge("sam3_embedding_cache_bytes", description="Bytes held by the embedding cache")
        self.entries = Gauge("sam3_embedding_cache_entries", description="Images in the embedding cache")
        self._seen: dict[str, int] = {}

    def export(self, stats: dict[str, Any]) -> None:
        for key, counter in (("cache_hits", self.hits), ("cache_misses", self.misses),
                             ("cache_evictions", self.evictions), ("vision_calls", self.vision_calls)):
            delta = stats[key] - self._seen.get(key, 0)
            if delta > 0:
                counter.inc(delta)
            self._seen[key] = stats[key]  # a debug_reset lowers it: start counting from there
        for key, gauge in (("cache_bytes", self.bytes), ("cache_entries", self.entries)):
            if self._seen.get(key) != stats[key]:  # a warm click changes neither: no Ray metric call for it
                gauge.set(stats[key])
                self._seen[key] = stats[key]


def tenant_of(cache_key: str) -> str:
    """The tenant part of an embedding-cache key "{tenant}/{image sha256}"."""
    return cache_key.split("/", 1)[0]


@serve.deployment
class ClickSegmenter(ModelDeployment):
    def __init__(self, model: ModelConfig, click: ClickConfig, *, runner: str = DEFAULT_RUNNER, debug: bool = False):
        self.runner = load_runner(runner, model, click)  # torch is imported here; a bad checkpoint: one line
        self.debug_enabled = debug
        self._init_batching(click.batching, self._segment_batch)
        self._batch_size = Histogram("sam3_click_batch_size", description="Click requests per decoder batch",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64])
        self._batch_ms = Histogram("sam3_click_batch_ms", description="Model time per click batch (ms)",
                                   boundaries=[1, 2, 5, 10, 25, 50, 100, 250, 1000])
        self._cache_metrics = CacheMetrics()
        log.info("ClickSegmenter ready: %s, cache %d bytes", self.runner.info, click.cache_bytes)

    async def segment(self, request: ClickRequest) -> ClickResponse | EmbeddingMiss:
        """Masks for the objects of one request, or EmbeddingMiss (retry with pixels). Raises the request's
        own InvalidInput (prompts that do not fit the image)."""
        return raise_if_error(await self._submit(request))

    async def embed(self, cache_key: str, pixels: np.ndarray, original_hw: tuple[int, int]) -> bool:
        """Make sure `cache_key`'s embedding is cached (pixels: uint8 (S,S,3)). True if it already was."""
        out = raise_if_error(await self._submit(ClickRequest(cache_key, (), pixels, original_hw)))
        if not isinstance(out, ClickResponse):  # with pixels the runner never answers EmbeddingMiss
            raise Sam3Error(f"embedding {cache_key!r}: unexpected answer {type(out).__name__}")
        return out.cache_hit

    async def generate_masks(self, request: AutoRequest) -> AutoResponse | EmbeddingMiss:
        """Automatic mask generation on one image (not batched across requests: it is many decoder calls)."""
        started = time.perf_counter()
        out = await asyncio.to_thread(self.runner.generate_masks, request)
        self._charge_model_time([tenant_of(request.cache_key)], time.perf_counter() - started)
        self._cache_metrics.export(self.runner.debug_stats())
        return out

    async def _segment_batch(self, requests: list[ClickRequest]) -> list[ClickAnswer]:
        # The model runs in a worker thread so the replica's event loop keeps accepting requests.
        started = time.perf_counter()
        answers = await asyncio.to_thread(self.runner.segment_batch, requests)
        self._charge_model_time([tenant_of(r.cache_key) for r in requests], time.perf_counter() - started)
        self._batch_size.observe(len(requests))
        done = [a for a in answers if isinstance(a, ClickResponse)]
        if done:
            self._batch_ms.observe(sum(done[0].timings_ms.values()))
        self._cache_metrics.export(self.runner.debug_stats())
        return answers

    def forget(self, cache_key: str) -> bool:
        """Drop the embedding of a deleted image from this replica's cache; True if it was cached here."""
        dropped = self.runner.forget(cache_key)
        if dropped:
            self._cache_metrics.export(self.runner.debug_stats())
        return dropped

    def debug_resize_cache(self, max_bytes: int) -> int:
        """Resize this replica's embedding cache now (the config value applies at restart). Returns the
        number of embeddings evicted."""
        self._require_debug()
        evicted = self.runner.resize_cache(max_bytes)
        self._cache_metrics.export(self.runner.debug_stats())
        return evicted
