"""ConceptSegmenter: a thin Serve deployment over ConceptRunner, with dynamic request batching.

Concurrent `segment` calls are merged by @serve.batch into one `ConceptRunner.run` (one vision-encoder
call for all images, detector calls over all (image, prompt) pairs). max_batch_size and
batch_wait_timeout_s come from the Serve user_config and change live through `reconfigure`.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.metrics import Counter, Histogram

from serve_app.config import BatchingConfig, ConceptConfig, ModelConfig
from serve_app.model.types import ConceptRequest, ConceptResponse, ModelInfo

log = logging.getLogger(__name__)


@serve.deployment
class ConceptSegmenter:
    def __init__(self, model: dict, concept: dict):
        from serve_app.model.concept import ConceptRunner  # torch is imported in the replica only

        model_cfg = ModelConfig.model_validate(model)
        concept_cfg = ConceptConfig.model_validate(concept)
        self.runner = ConceptRunner.from_config(model_cfg, max_pairs_per_forward=concept_cfg.max_pairs_per_forward)
        self._batched = serve.batch(
            max_batch_size=concept_cfg.batching.max_batch_size,
            batch_wait_timeout_s=concept_cfg.batching.batch_wait_timeout_s,
            max_concurrent_batches=concept_cfg.max_concurrent_batches,
        )(self._run_batch)
        self._batch_size = Histogram("sam3_concept_batch_size", description="Requests per model batch",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64])
        self._forward_ms = Histogram("sam3_concept_batch_ms", description="Model time per batch (ms)",
                                     boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000])
        self._requests = Counter("sam3_concept_requests_total", description="Images segmented")
        log.info("ConceptSegmenter ready: %s", self.runner.info)

    def reconfigure(self, user_config: dict) -> None:
        """Live batching knobs (Serve user_config = BatchingConfig)."""
        cfg = BatchingConfig.model_validate(user_config or {})
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def segment(self, request: ConceptRequest) -> ConceptResponse:
        return await self._batched(request)

    async def _run_batch(self, requests: list[ConceptRequest]) -> list[ConceptResponse]:
        # Run the model in a worker thread: the replica's event loop keeps accepting requests (and
        # max_concurrent_batches > 1 overlaps one batch's CPU work with another's GPU work).
        results = await asyncio.to_thread(self.runner.run, requests)
        self._batch_size.observe(len(requests))
        self._forward_ms.observe(sum(results[0].timings_ms.values()))
        self._requests.inc(len(requests))
        return results

    def info(self) -> ModelInfo:
        return self.runner.info

    def stats(self) -> dict:
        """Counters of model calls since start (or the last reset): batches, vision/text/detector calls."""
        return {**self.runner.stats.as_dict(), "text_cache_size": len(self.runner.text_cache),
                "text_cache_hits": self.runner.text_cache.hits, "text_cache_misses": self.runner.text_cache.misses,
                "max_batch_size": self._batched._get_max_batch_size(),
                "batch_wait_timeout_s": self._batched._get_batch_wait_timeout_s()}

    def reset_stats(self) -> None:
        from serve_app.model.concept import RunnerStats

        self.runner.stats = RunnerStats()
