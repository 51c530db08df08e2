"""ConceptSegmenter: a thin Serve deployment over a concept runner, with dynamic request batching.

Concurrent `segment` calls are merged by @serve.batch into one `segment_batch` of the runner (default
serve_app.model.concept:ConceptRunner: one vision-encoder call for all images, detector calls over all
(image, prompt) pairs). max_batch_size and batch_wait_timeout_s come from the Serve user_config and change
live through `reconfigure`. A request's own error fails only that request (the batch protocol of
serve_app.model.protocols: invalid input 4xx, out of memory even alone 503, anything else 500).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve.metrics import Counter, Histogram

from serve_app.config import ConceptConfig, ModelConfig
from serve_app.deployments.base import ModelDeployment, load_runner, raise_if_error
from serve_app.model.protocols import ConceptAnswer
from serve_app.model.types import ConceptRequest, ConceptResponse

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "serve_app.model.concept:ConceptRunner"


@serve.deployment
class ConceptSegmenter(ModelDeployment):
    def __init__(self, model: ModelConfig, concept: ConceptConfig, *, runner: str = DEFAULT_RUNNER,
                 debug: bool = False):
        self.runner = load_runner(runner, model, concept)  # torch is imported here; a bad checkpoint: one line
        self.debug_enabled = debug
        self._init_batching(concept.batching, self._segment_batch, concept.max_concurrent_batches)
        self._batch_size = Histogram("sam3_concept_batch_size", description="Requests per model batch",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64])
        self._forward_ms = Histogram("sam3_concept_batch_ms", description="Model time per batch (ms)",
                                     boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000])
        self._requests = Counter("sam3_concept_requests_total", description="Images segmented")
        log.info("ConceptSegmenter ready: %s", self.runner.info)

    async def segment(self, request: ConceptRequest) -> ConceptResponse:
        """Instances for every prompt of one image. Raises the request's own Sam3Error."""
        return raise_if_error(await self._submit(request))

    async def _segment_batch(self, requests: list[ConceptRequest]) -> list[ConceptAnswer]:
        # The model runs in a worker thread: the replica's event loop keeps accepting requests (and
        # max_concurrent_batches > 1 overlaps one batch's CPU work with another's GPU work).
        started = time.perf_counter()
        answers = await asyncio.to_thread(self.runner.segment_batch, requests)
        self._charge_model_time([r.tenant for r in requests], time.perf_counter() - started)
        self._batch_size.observe(len(requests))
        done = [a for a in answers if isinstance(a, ConceptResponse)]
        if done:
            self._forward_ms.observe(sum(done[0].timings_ms.values()))
        self._requests.inc(len(requests))
        return answers

    def debug_poison_text(self, text: str | None) -> None:
        """Make this replica's tokenizer fail on prompt `text` (None: stop; debug_reset also stops it): a
        request that passes the ingress and fails in its own processing here, for batch-isolation tests."""
        self._require_debug()
        self.runner.debug_poison_text(text)
