"""One request never fails another: the batch error protocol (serve_app.model.protocols), out-of-memory
splitting (serve_app.model.runtime.run_isolated), the device health check, and the review defects around
them (bounded counters, text-cache entries that own their memory, no private Ray Serve API).

Runs on the CPU with the tiny checkpoint. Out-of-memory can only be provoked by injection: the model's
forward is wrapped to raise torch.OutOfMemoryError for big batches or for a marked input (a test-only fake,
the only one here); every other failure is a real one (the real tokenizer on a lone surrogate, the debug
poison through the real runner code)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.codecs.image_decode import resize_square
from serve_app.config import BatchingConfig, ClickConfig, ConceptConfig, ModelConfig
from serve_app.errors import Forbidden, InvalidInput, ModelOutOfMemory, Sam3Error, Unavailable
from serve_app.model import concept as concept_module
from serve_app.model.click import ClickRunner
from serve_app.model.concept import ConceptRunner
from serve_app.model.loading import Placement
from serve_app.model.runtime import BatchCounters, DeviceHealth, DeviceUnhealthy, run_isolated
from serve_app.model.types import (
    AutoRequest,
    ClickObject,
    ClickRequest,
    ClickResponse,
    ConceptPrompt,
    ConceptRequest,
    ConceptResponse,
)
from tests.helpers import rgb_image

REPO = Path(__file__).resolve().parents[2]
CPU = Placement(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def concept(tiny_model_dir) -> ConceptRunner:
    return ConceptRunner.from_config(ModelConfig(model_id=tiny_model_dir), ConceptConfig(max_pairs_per_forward=4))


@pytest.fixture
def runner(concept) -> ConceptRunner:
    """A runner of its own (counters, text cache, poison) on the module's read-only model."""
    return ConceptRunner(concept.model, concept.tokenizer, concept.placement, "tiny", max_pairs_per_forward=4)


def request(seed: int, *texts: str, threshold: float = 0.0) -> ConceptRequest:
    img = rgb_image(100 + seed, 80, seed)
    return ConceptRequest(resize_square(img, 112), (80, 100 + seed), tuple(ConceptPrompt(t) for t in texts or ("car",)),
                          threshold, 5)


def same(a: ConceptResponse, b: ConceptResponse) -> None:
    assert len(a.results) == len(b.results)
    for x, y in zip(a.results, b.results):
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
        np.testing.assert_allclose(x.boxes_xyxy, y.boxes_xyxy, atol=1e-3)


def alone(runner: ConceptRunner, req: ConceptRequest) -> ConceptResponse:
    out = runner.segment_batch([req])[0]
    assert isinstance(out, ConceptResponse)
    return out


class Calls:
    """Wraps a model method: records each call's batch size; raises torch.OutOfMemoryError when `oom(batch)`
    (the batch = the call's first tensor argument)."""

    def __init__(self, fn, oom=lambda batch: False):
        self.fn, self.oom, self.sizes = fn, oom, []

    def __call__(self, *args, **kwargs):
        batch = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) or isinstance(v, list))
        batch = batch[0] if isinstance(batch, list) else batch
        self.sizes.append(int(batch.shape[0]))
        if self.oom(batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return self.fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# the protocol: per-item errors, the others run


def test_a_text_the_real_tokenizer_rejects_fails_only_its_own_request(runner):
    """The security review's I2: a lone surrogate makes the tiny checkpoint's fast tokenizer raise TypeError.
    The ingress rejects it now, but the runner must not let one text fail the batch either."""
    good = [request(1, "car", "dog"), request(2, "tree")]
    with pytest.raises(TypeError):
        runner.tokenizer(["\ud800"], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    a, bad, b = runner.segment_batch([good[0], request(3, "cat", "\ud800"), good[1]])
    assert isinstance(bad, InvalidInput) and (bad.status_code, bad.code) == (400, "invalid_text")
    assert bad.message == "prompts[1].text cannot be tokenized"
    assert isinstance(a, ConceptResponse) and isinstance(b, ConceptResponse)
    assert a.batch_size == b.batch_size == 2  # ran together; the bad request is not in the forward
    same(a, alone(runner, good[0]))
    same(b, alone(runner, good[1]))
    assert "\ud800" not in runner.text_cache._items and "cat" in runner.text_cache._items


def test_debug_poison_fails_its_request_until_reset(runner):
    reqs = [request(1, "car"), request(2, "poison-x", "dog"), request(3, "dog")]
    runner.debug_poison_text("poison-x")
    first, poisoned, third = runner.segment_batch(reqs)
    assert isinstance(poisoned, InvalidInput) and poisoned.code == "invalid_text"
    assert isinstance(first, ConceptResponse) and isinstance(third, ConceptResponse) and first.batch_size == 2
    stats = runner.debug_stats()  # one call of 3 requests, one forward of the 2 good ones
    assert (stats["calls"], stats["largest_call"], stats["batches"], stats["requests"]) == (1, 3, 1, 2)
    runner.debug_poison_text(None)
    assert isinstance(runner.segment_batch([reqs[1]])[0], ConceptResponse)
    runner.debug_poison_text("poison-y")
    runner.debug_reset()  # stops the poison too
    assert isinstance(runner.segment_batch([request(4, "poison-y")])[0], ConceptResponse)


def test_a_failure_in_one_requests_post_processing_stays_with_it(runner, monkeypatch, caplog):
    keep = concept_module._keep

    def fragile(req, *args):
        if req.threshold == 0.25:  # the marked request
            raise ValueError("post-processing bug")
        return keep(req, *args)

    monkeypatch.setattr(concept_module, "_keep", fragile)
    a, bad, b = runner.segment_batch([request(1), request(2, threshold=0.25), request(3)])
    assert isinstance(bad, Sam3Error) and (bad.status_code, bad.code) == (500, "model_error")
    assert isinstance(a, ConceptResponse) and isinstance(b, ConceptResponse) and a.batch_size == 3
    assert any(r.exc_info and "post-processing bug" in str(r.exc_info[1]) for r in caplog.records)  # stack logged


def test_a_forward_that_fails_for_one_input_is_bisected_to_it(runner, caplog):
    """A batched forward that raises (not an out-of-memory) because of one request's content: the halves
    run again until the culprit is alone; it gets a 500 model_error, the others their results."""
    reqs = [request(i) for i in range(4)]
    vision = runner.model.get_vision_features
    sizes = []

    def broken(pixel_values):
        sizes.append(pixel_values.shape[0])
        if contains(pixel_values, reqs[1].pixels):
            raise RuntimeError("index out of range (content-dependent kernel failure)")
        return vision(pixel_values=pixel_values)

    runner.model = Wrapped(runner.model, get_vision_features=broken)
    answers = runner.segment_batch(reqs)
    assert sizes == [4, 2, 1, 1, 2]  # [0 1 2 3] -> [0 1] -> [0] ok, [1] fails alone -> [2 3] ok
    assert isinstance(answers[1], Sam3Error) and answers[1].code == "model_error" and answers[1].status_code == 500
    runner.model = runner.model.inner
    for i in (0, 2, 3):
        same(answers[i], alone(runner, reqs[i]))
    assert runner.counters.forward_errors == 3


def contains(pixel_values: torch.Tensor, image: np.ndarray) -> bool:
    """Whether a vision-encoder batch (normalised (B,3,S,S)) holds the uint8 (S,S,3) `image`."""
    raw = ((pixel_values.permute(0, 2, 3, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8)
    return any(torch.equal(x, torch.tensor(image)) for x in raw)


class Wrapped:
    """The model with some attributes replaced (a test fake: only to inject failures)."""

    def __init__(self, inner, call=None, **replaced):
        self.inner, self._call, self._replaced = inner, call, replaced

    def __getattr__(self, name):
        replaced = self.__dict__.get("_replaced", {})
        return replaced[name] if name in replaced else getattr(self.__dict__["inner"], name)

    def __call__(self, *args, **kwargs):
        return (self._call or self.inner)(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# out of memory: split, retry, 503 for what fails alone, and the next call works


def test_oom_on_big_batches_splits_in_halves_and_every_request_is_answered(runner):
    reqs = [request(i) for i in range(5)]
    expected = [alone(runner, r) for r in reqs]
    calls = Calls(runner.model.get_vision_features, oom=lambda batch: batch.shape[0] > 2)
    runner.model = Wrapped(runner.model, get_vision_features=calls)
    runner.counters.reset()
    answers = runner.segment_batch(reqs)
    assert calls.sizes == [5, 2, 3, 1, 2]  # [5] OOM -> [2] ok, [3] OOM -> [1] ok, [2] ok
    assert [a.batch_size for a in answers] == [2, 2, 1, 2, 2]
    for a, e in zip(answers, expected):
        same(a, e)
    stats = runner.debug_stats()
    assert (stats["oom_errors"], stats["batches"], stats["requests"]) == (2, 3, 5)
    calls.sizes.clear()
    nxt = runner.segment_batch(reqs[:2])  # the replica keeps serving: the next batch runs in one call
    assert calls.sizes == [2] and all(isinstance(a, ConceptResponse) for a in nxt)


def test_an_input_that_ooms_alone_gets_503_and_the_others_their_results(runner):
    reqs = [request(i) for i in range(4)]
    calls = Calls(runner.model.get_vision_features, oom=lambda batch: contains(batch, reqs[2].pixels))
    runner.model = Wrapped(runner.model, get_vision_features=calls)
    answers = runner.segment_batch(reqs)
    assert calls.sizes == [4, 2, 2, 1, 1]  # [4] OOM -> [0 1] ok, [2 3] OOM -> [2] OOM alone, [3] ok
    oom = answers[2]
    assert isinstance(oom, ModelOutOfMemory) and isinstance(oom, Unavailable)
    assert (oom.status_code, oom.code) == (503, "model_out_of_memory")
    assert all(isinstance(answers[i], ConceptResponse) for i in (0, 1, 3))
    calls.sizes.clear()
    again = runner.segment_batch([reqs[0], reqs[3]])
    assert calls.sizes == [2] and all(isinstance(a, ConceptResponse) for a in again)


def test_oom_in_the_detector_is_split_too(runner):
    """Not only the vision encoder: an out-of-memory anywhere in the batched forward splits the batch."""
    reqs = [request(i, "car", "dog") for i in range(3)]
    expected = [alone(runner, r) for r in reqs]
    detector = Calls(runner.model.__call__, oom=lambda batch: batch.shape[0] > 2)  # batch = pairs
    runner.model = Wrapped(runner.model, call=detector)
    answers = runner.segment_batch(reqs)
    assert all(isinstance(a, ConceptResponse) for a in answers)
    for a, e in zip(answers, expected):
        same(a, e)
    # 6 pairs in chunks of 4: [r0 r1 | r2] OOM -> [r0] ok; [r1 r2] OOM -> [r1] ok, [r2] ok
    assert detector.sizes == [4, 2, 4, 2, 2] and runner.counters.oom_errors == 2


def test_run_isolated_releases_cuda_memory_outside_the_except_block(monkeypatch):
    """On CUDA each out-of-memory is followed by torch.cuda.empty_cache(), called after the failed call's
    traceback is gone (its frames hold the batch's tensors)."""
    released = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(sys.exc_info()[0]))
    calls: list[list[int]] = []

    def forward(items: list[int]) -> list[int | Sam3Error]:
        calls.append(items)
        if len(items) > 1 or items == [7]:
            raise torch.OutOfMemoryError("injected")
        return [x * 10 for x in items]

    counters = BatchCounters()
    out = run_isolated(forward, [1, 7, 3], Placement(torch.device("cuda"), torch.bfloat16), counters)
    assert out[0] == 10 and out[2] == 30 and isinstance(out[1], ModelOutOfMemory)
    assert calls == [[1, 7, 3], [1], [7, 3], [7], [3]]
    assert released == [None, None, None] and counters.oom_errors == 3  # never inside the except block
    released.clear()
    run_isolated(forward, [1, 7], CPU)
    assert released == []  # nothing to release on the CPU
    assert run_isolated(forward, [], CPU) == []


def test_run_isolated_passes_a_single_items_sam3error_through():
    def forward(items: list[str]) -> list[str | Sam3Error]:
        if "bad" in items:
            raise InvalidInput("bad knob", "bad_knob")
        return items

    out = run_isolated(forward, ["a", "bad", "c"], CPU)
    assert out[0] == "a" and out[2] == "c" and isinstance(out[1], InvalidInput) and out[1].code == "bad_knob"


def test_model_out_of_memory_is_a_503_with_retry_after_over_http():
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from serve_app.config import AppConfig
    from serve_app.ingress.fastapi_app import create_app

    app = create_app()
    app.state.ctx = SimpleNamespace(config=AppConfig.model_validate({"ingress": {"retry_after_s": 7}}))

    @app.get("/boom")
    async def boom():
        raise ModelOutOfMemory("the model ran out of accelerator memory for this request; retry later")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert (r.status_code, r.headers["Retry-After"], r.json()["error"]["code"]) == (503, "7", "model_out_of_memory")


@pytest.fixture(scope="module")
def click(tiny_model_dir) -> ClickRunner:
    return ClickRunner.from_config(ModelConfig(model_id=tiny_model_dir), ClickConfig(cache_bytes=8 * 1024 * 1024))


def click_request(seed: int, *points: tuple[float, float]) -> ClickRequest:
    img = rgb_image(130, 90, seed)
    objs = tuple(ClickObject(np.asarray([p], np.float32), np.asarray([1], np.int64)) for p in points or [(10, 20)])
    return ClickRequest(f"img{seed}", objs, resize_square(img, 112), (90, 130))


def test_click_oom_splits_and_the_image_encoded_before_is_reused(click):
    decoder = Calls(click.model.__call__, oom=lambda levels: levels.shape[0] > 2)  # batch = objects
    r = ClickRunner(Wrapped(click.model, call=decoder), click.placement, "tiny", cache_bytes=8 * 1024 * 1024)
    reqs = [click_request(1, (10, 20)), click_request(2, (30, 40)), click_request(3, (50, 60), (70, 20))]
    answers = r.segment_batch(reqs)
    assert all(isinstance(a, ClickResponse) for a in answers), answers
    assert [len(a.objects) for a in answers] == [1, 1, 2]
    # 4 objects OOM -> [r0] ok; [r1 r2] (3 objects) OOM -> [r1] ok, [r2] (2 objects) ok
    assert decoder.sizes == [4, 1, 3, 1, 2] and r.counters.oom_errors == 2
    assert r.counters.vision_calls == 1  # the images were encoded once and cached before the retries
    ref = ClickRunner(click.model, click.placement, "tiny", cache_bytes=8 * 1024 * 1024)
    for req, a in zip(reqs, answers):
        b = ref.segment_batch([req])[0]
        for x, y in zip(a.objects, b.objects):
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)


def test_click_object_that_ooms_alone_gets_503(click):
    """An object with 8 points is the marked input: its decoder call always runs out of memory."""
    def call(*args, **kwargs):
        if kwargs["input_points"].shape[2] == 8:  # (B, 1, points, 2)
            raise torch.OutOfMemoryError("injected")
        return click.model(*args, **kwargs)

    r = ClickRunner(Wrapped(click.model, call=call), click.placement, "tiny", cache_bytes=8 * 1024 * 1024)
    eight = ClickObject(np.asarray([[10 + i, 20 + i] for i in range(8)], np.float32), np.ones(8, np.int64))
    big = ClickRequest("img5", (eight,), click_request(5).pixels, (90, 130))
    a, oom, b = r.segment_batch([click_request(4), big, click_request(6)])
    assert isinstance(oom, ModelOutOfMemory) and oom.status_code == 503
    assert isinstance(a, ClickResponse) and isinstance(b, ClickResponse)
    assert isinstance(r.segment_batch([click_request(4)])[0], ClickResponse)


def test_automatic_masks_oom_is_raised_as_503_and_the_replica_keeps_serving(click):
    state = {"oom": True}

    def call(*args, **kwargs):
        if state["oom"]:
            raise torch.OutOfMemoryError("injected")
        return click.model(*args, **kwargs)

    r = ClickRunner(Wrapped(click.model, call=call), click.placement, "tiny", cache_bytes=8 * 1024 * 1024)
    req = AutoRequest("auto", click_request(7).pixels, (90, 130), points_per_side=4, pred_iou_thresh=0.0,
                      stability_score_thresh=0.0)
    with pytest.raises(ModelOutOfMemory):
        r.generate_masks(req)
    state["oom"] = False
    assert r.generate_masks(req).candidates == 4 * 4 * 3
    with pytest.raises(InvalidInput):  # its own errors still raise as they are
        r.generate_masks(AutoRequest("auto", points_per_side=0))


# ---------------------------------------------------------------------------------------------------------
# the deployment raises each request's error to that request's caller only


def test_deployment_raises_each_error_only_to_its_caller(tiny_model_dir, monkeypatch):
    """The real ConceptSegmenter class and @serve.batch queue, outside a replica (Serve's batch queue only reads
    max_ongoing_requests from the replica context, for a warning)."""
    from types import SimpleNamespace

    from ray import serve

    from serve_app.deployments.concept import ConceptSegmenter

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=32))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    cls = ConceptSegmenter.func_or_class
    seg = cls(ModelConfig(model_id=tiny_model_dir),
              ConceptConfig(batching=BatchingConfig(max_batch_size=8, batch_wait_timeout_s=0.2, eager_when_idle=False)),
              debug=True)
    seg.debug_poison_text("poison-z")
    reqs = [request(1), request(2, "poison-z"), request(3), request(4)]

    async def burst():
        return await asyncio.gather(*(seg.segment(r) for r in reqs), return_exceptions=True)

    out = asyncio.run(burst())
    assert isinstance(out[1], InvalidInput) and out[1].code == "invalid_text"
    assert all(isinstance(out[i], ConceptResponse) and out[i].batch_size == 3 for i in (0, 2, 3)), out
    assert seg.debug_stats()["batches"] == 1  # one batch: the poisoned request was in it

    off = cls(ModelConfig(model_id=tiny_model_dir), ConceptConfig(), debug=False)
    with pytest.raises(Forbidden):
        off.debug_poison_text("x")  # the hook exists only with observability.debug_interface


# ---------------------------------------------------------------------------------------------------------
# check_health: a wedged device fails it, within a timeout; the CPU is never probed


def test_health_probe_failure_and_wrong_result_make_the_check_fail():
    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(DeviceUnhealthy, match="illegal memory access"):
        DeviceHealth(CPU, probe=broken).check()
    DeviceHealth(CPU, probe=lambda: None).check()  # a probe that returns: healthy


def test_a_hanging_probe_fails_within_the_timeout_and_is_not_started_twice():
    release = threading.Event()
    started = []

    def hang():
        started.append(1)
        release.wait(10)

    health = DeviceHealth(CPU, timeout_s=0.2, probe=hang)
    with pytest.raises(DeviceUnhealthy, match="did not run a tiny kernel within 0.2 s"):
        health.check()
    with pytest.raises(DeviceUnhealthy, match="has not returned"):
        health.check()  # still stuck: fails at once, no second thread
    assert started == [1]
    release.set()
    for _ in range(100):  # the stuck probe finishes: the next check probes again and passes
        if not health._stuck[0].is_alive():  # type: ignore[index]
            break
        threading.Event().wait(0.02)
    health.check()
    assert started == [1, 1]


def test_cpu_runners_are_never_probed_and_deployments_ask_their_runner(runner, monkeypatch):
    from serve_app.model import runtime

    monkeypatch.setattr(runtime, "probe_device", lambda device: pytest.fail("probed the CPU"))
    runner.check_health()  # no-op on the CPU
    assert not DeviceHealth(CPU).enabled and DeviceHealth(Placement(torch.device("cuda"), torch.bfloat16)).enabled

    from serve_app.deployments.base import ModelDeployment
    from serve_app.deployments.click import ClickSegmenter
    from serve_app.deployments.concept import ConceptSegmenter

    def wedged() -> None:
        raise RuntimeError("CUDA error: unspecified launch failure")

    runner._health = DeviceHealth(CPU, probe=wedged)  # as a CUDA runner's check would see a broken context
    dep = ModelDeployment()
    dep.runner = runner
    with pytest.raises(DeviceUnhealthy, match="launch failure"):
        dep.check_health()  # Serve's health check fails: the replica is replaced
    for deployment in (ConceptSegmenter, ClickSegmenter):  # both GPU deployments use that check
        assert deployment.func_or_class.check_health is ModelDeployment.check_health


# ---------------------------------------------------------------------------------------------------------
# review defects


def test_counters_stay_bounded():
    counters = BatchCounters()
    for i in range(10_000):
        counters.note_batch(i % 9 + 1)
    snap = counters.snapshot()
    assert all(isinstance(v, int) for v in snap.values())
    assert (snap["batches"], snap["largest_batch"]) == (10_000, 9)


def test_text_cache_entries_own_their_memory(runner):
    runner.segment_batch([request(1, "alpha", "beta", "gamma")])
    for emb, mask in runner.text_cache._items.values():
        for t in (emb, mask):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # not a view of the batch


def test_no_private_ray_serve_batch_api():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "serve_app").rglob("*.py")
                 if "_get_max_batch_size" in p.read_text()]
    assert offenders == []
