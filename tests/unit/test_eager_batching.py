"""batching.eager_when_idle: a request that finds its replica idle runs at once as a batch of one; requests
that arrive while it runs queue and form one batch; with the knob off every request waits in the queue.
The real ConceptSegmenter class and @serve.batch queue, outside a replica (as tests/unit/test_batch_errors.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ray import serve

from serve_app.config import BatchingConfig, ConceptConfig, ModelConfig
from serve_app.model.types import ConceptResponse
from tests.unit.test_batch_errors import request


@pytest.fixture
def segmenter(tiny_model_dir, monkeypatch):
    from serve_app.deployments.concept import ConceptSegmenter

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=32))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)

    def build(eager: bool):
        batching = BatchingConfig(max_batch_size=8, batch_wait_timeout_s=0.2, eager_when_idle=eager)
        return ConceptSegmenter.func_or_class(ModelConfig(model_id=tiny_model_dir), ConceptConfig(batching=batching),
                                              debug=True)

    return build


def burst(seg, n: int) -> list[ConceptResponse]:
    async def run():
        return await asyncio.gather(*(seg.segment(request(i)) for i in range(n)))

    return asyncio.run(run())


def test_idle_replica_runs_a_lone_request_at_once_and_batches_the_rest(segmenter):
    seg = segmenter(True)
    out = burst(seg, 4)
    # the first found the replica idle: alone; the three that came while it ran waited and shared one batch
    assert [r.batch_size for r in out] == [1, 3, 3, 3]
    stats = seg.debug_stats()
    assert (stats["calls"], stats["largest_call"]) == (2, 3)
    assert [r.batch_size for r in burst(seg, 1)] == [1]  # idle again: a single request never queues


def test_without_eager_every_request_goes_through_the_queue(segmenter):
    seg = segmenter(False)
    assert [r.batch_size for r in burst(seg, 4)] == [4, 4, 4, 4]
    assert seg.debug_stats()["calls"] == 1
