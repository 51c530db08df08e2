"""PromptSegmenter: a thin Serve deployment over PromptRunner (clicks, boxes, automatic masks).

Callers (the ingress) route by image: `handle.options(session_id=image_id)` with Serve's
ConsistentHashRouter (configured in serve_app.app), so an image's clicks reach the replica whose
embedding cache holds it. Routing is only a hint: a replica without the embedding answers EmbeddingMiss
and the caller retries with pixels. Concurrent `segment` calls are merged by @serve.batch into one
`PromptRunner.run`; batching knobs come from the Serve user_config and change live (`reconfigure`).
Cache hits/misses/evictions/bytes are exported as Ray Serve metrics.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.config import BatchingConfig, ModelConfig, PromptConfig
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    EmbeddingMiss,
    ModelInfo,
    PromptRequest,
    PromptResponse,
)

log = logging.getLogger(__name__)


@serve.deployment
class PromptSegmenter:
    def __init__(self, model: dict, prompt: dict):
        # torch is imported in the replica only
        from serve_app.model.prompt import PromptRunner

        model_cfg = ModelConfig.model_validate(model)
        prompt_cfg = PromptConfig.model_validate(prompt)
        self.runner = PromptRunner.from_config(model_cfg, cache_bytes=prompt_cfg.cache_bytes,
                                               max_objects_per_forward=prompt_cfg.max_objects_per_forward)
        self._batched = serve.batch(
            max_batch_size=prompt_cfg.batching.max_batch_size,
            batch_wait_timeout_s=prompt_cfg.batching.batch_wait_timeout_s,
        )(self._run_batch)
        self._batch_size = Histogram("sam3_prompt_batch_size", description="Click requests per decoder batch",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64])
        self._batch_ms = Histogram("sam3_prompt_batch_ms", description="Model time per click batch (ms)",
                                   boundaries=[1, 2, 5, 10, 25, 50, 100, 250, 1000])
        self._cache_hits = Counter("sam3_embedding_cache_hits_total", description="Requests served from the cache")
        self._cache_misses = Counter("sam3_embedding_cache_misses_total",
                                     description="Requests whose image embedding was not cached")
        self._cache_evictions = Counter("sam3_embedding_cache_evictions_total", description="Embeddings evicted")
        self._cache_bytes = Gauge("sam3_embedding_cache_bytes", description="Bytes held by the embedding cache")
        self._cache_entries = Gauge("sam3_embedding_cache_entries", description="Images in the embedding cache")
        self._vision_calls = Counter("sam3_prompt_vision_calls_total", description="Vision-encoder forwards")
        self._seen = self.runner.cache.stats()
        self._seen_vision = 0
        log.info("PromptSegmenter ready: %s, cache %d bytes", self.runner.info, prompt_cfg.cache_bytes)

    def reconfigure(self, user_config: dict) -> None:
        """Live batching knobs (Serve user_config = BatchingConfig)."""
        cfg = BatchingConfig.model_validate(user_config or {})
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def segment(self, request: PromptRequest) -> PromptResponse | EmbeddingMiss:
        """Masks for the objects of one request, or EmbeddingMiss (retry with pixels). Raises InvalidInput
        for prompts that do not fit the image."""
        out = await self._batched(request)
        if isinstance(out, Exception):
            raise out
        return out

    async def embed(self, image_id: str, pixels, original_hw: tuple[int, int]) -> bool:
        """Make sure `image_id`'s embedding is cached (pixels: uint8 (S,S,3)). True if it already was."""
        out = await self._batched(PromptRequest(image_id, (), pixels, original_hw))
        if isinstance(out, Exception):
            raise out
        return out.cache_hit

    async def auto(self, request: AutoRequest) -> AutoResponse | EmbeddingMiss:
        """Automatic mask generation on one image (not batched across requests: it is many decoder calls)."""
        out = await asyncio.to_thread(self.runner.auto, request)
        self._export_cache_metrics()
        return out

    async def _run_batch(self, requests: list[PromptRequest]) -> list:
        # The model runs in a worker thread so the replica's event loop keeps accepting requests.
        results = await asyncio.to_thread(self.runner.run, requests)
        self._batch_size.observe(len(requests))
        done = [r for r in results if isinstance(r, PromptResponse)]
        if done:
            self._batch_ms.observe(sum(done[0].timings_ms.values()))
        self._export_cache_metrics()
        return results

    def _export_cache_metrics(self) -> None:
        now = self.runner.cache.stats()
        prev, self._seen = self._seen, now
        if now.hits > prev.hits:
            self._cache_hits.inc(now.hits - prev.hits)
        if now.misses > prev.misses:
            self._cache_misses.inc(now.misses - prev.misses)
        if now.evictions > prev.evictions:
            self._cache_evictions.inc(now.evictions - prev.evictions)
        self._cache_bytes.set(now.bytes)
        self._cache_entries.set(now.entries)
        vision = self.runner.stats.vision_calls
        if vision > self._seen_vision:
            self._vision_calls.inc(vision - self._seen_vision)
        self._seen_vision = vision

    def info(self) -> ModelInfo:
        return self.runner.info

    def stats(self) -> dict:
        """Model-call counters (vision_calls = vision-encoder forwards) and embedding-cache counters."""
        cache = self.runner.cache.stats().as_dict()
        return {**self.runner.stats.as_dict(), **{f"cache_{k}": v for k, v in cache.items()},
                "max_batch_size": self._batched._get_max_batch_size(),
                "batch_wait_timeout_s": self._batched._get_batch_wait_timeout_s()}

    def set_cache_bytes(self, max_bytes: int) -> int:
        """Resize this replica's embedding cache now (ops/tests; the config value applies at restart).
        Returns the number of embeddings evicted."""
        evicted = self.runner.cache.resize(max_bytes)
        self._export_cache_metrics()
        return len(evicted)

    def reset_stats(self, clear_cache: bool = False) -> None:
        from serve_app.model.prompt import PromptStats

        self.runner.stats = PromptStats()
        if clear_cache:
            self.runner.cache.clear()
        self.runner.cache.reset_stats()
        self._seen = self.runner.cache.stats()
        self._seen_vision = 0
