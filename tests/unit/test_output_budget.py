"""Bounded memory and CPU per request, without Ray: the output budget (truncate or refuse, with the flag and
code), capped overlays, the automatic-mode floors and caps, stopping work for cancelled requests (counted, no
sleeps), and the bounded CPU / storage thread pools."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from serve_app.codecs.image_decode import DecodedImage
from serve_app.codecs.masks import decode_rle, encode_mask
from serve_app.codecs.overlay import render_overlay
from serve_app.config import AppConfig, ClickConfig, LimitsConfig
from serve_app.errors import InvalidInput, OutputTooLarge, Timeout
from serve_app.jobs.kinds import JobContext
from serve_app.model import automatic
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    ClickResponse,
    ConceptInstances,
    ConceptResponse,
    ModelInfo,
    ObjectMasks,
)
from serve_app.pipelines import click as click_module
from serve_app.pipelines import concept as concept_module
from serve_app.pipelines import pools
from serve_app.pipelines.click import ClickPipeline, auto_knobs, encode_objects, fit_auto, plan_click_output
from serve_app.pipelines.concept import ConceptPipeline, build_request, encode_response, fit_instances
from serve_app.pipelines.image_library import ImageLibrary
from serve_app.pipelines.job_kinds import ConceptImageJob
from serve_app.pipelines.output_budget import POLYGON_MASK_COST, OverlayCanvas, mask_cost, overlay_size, top_scores
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.results import ResultPublisher
from serve_app.schemas import (
    AutoImageResponse,
    AutoOptions,
    ClickImageResponse,
    ClickOptions,
    ConceptImageResponse,
    ConceptOptions,
)
from serve_app.storage.base import Blob, BlobInfo

INFO = ModelInfo("tiny", image_size=16, mask_size=8, device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def small_pools():
    """One CPU thread (FIFO: a task submitted after some work runs after it) and two storage threads;
    restores the process's pools afterwards."""
    before = pools.pools()
    pools.configure(cpu_threads=1, io_threads=2)
    yield
    pools.configure(before.cpu_threads, before.io_threads)


def blob_probs(n: int, m: int = 8, value: float = 0.9) -> np.ndarray:
    """float16 (n,m,m) probabilities: instance i covers a different low-res cell block."""
    probs = np.full((n, m, m), 0.05, np.float16)
    for i in range(n):
        r = i % (m - 2)
        probs[i, r:r + 3, 1:5] = value
    return probs


def concept_out(scores_per_prompt: list[list[float]], m: int = 8) -> ConceptResponse:
    results = []
    for scores in scores_per_prompt:
        n = len(scores)
        results.append(ConceptInstances(np.float32(scores), np.tile(np.float32([1, 1, 20, 10]), (n, 1)),
                                        blob_probs(n, m)))
    return ConceptResponse(results)


def image(height: int = 30, width: int = 40) -> DecodedImage:
    rng = np.random.default_rng(1)
    return DecodedImage(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "0" * 64, "PNG")


# --------------------------------------------------------------------------------------------- the budget


def test_limits_config_needs_one_full_mask_to_fit_and_bounds_the_overlay():
    defaults = LimitsConfig()
    assert defaults.max_output_pixels // defaults.max_image_pixels == 25  # 25 masks of the largest image
    with pytest.raises(ValidationError, match="max_output_pixels"):
        LimitsConfig(max_image_pixels=40_000_000, max_output_pixels=39_999_999)
    with pytest.raises(ValidationError):
        LimitsConfig(max_overlay_pixels=1000)


def test_top_scores_keeps_the_best_over_all_groups_in_their_order():
    groups = [np.float32([0.9, 0.5, 0.1]), np.float32([]), np.float32([0.7, 0.6]), np.float32([0.95])]
    assert [k.tolist() for k in top_scores(groups, 4)] == [[0], [], [0, 1], [0]]
    assert [k.tolist() for k in top_scores(groups, 10)] == [[0, 1, 2], [], [0, 1], [0]]
    assert [k.tolist() for k in top_scores([np.float32([0.5, 0.5]), np.float32([0.5])], 2)] == [[0, 1], []]


def test_concept_answer_is_truncated_to_the_best_instances_that_fit():
    img = image(30, 40)  # 1200 pixels per mask
    limits = LimitsConfig(max_image_pixels=1024, max_output_pixels=4 * 1200 + 1199)  # 4 masks fit
    out = concept_out([[0.9, 0.4, 0.3], [0.8, 0.7, 0.2], [0.35]])
    kept, truncation = fit_instances(out, img.height, img.width, limits.max_output_pixels)
    assert truncation is not None and truncation.omitted == 3
    assert truncation.fields() == {"truncated": True, "truncated_reason": "max_output_pixels", "omitted_masks": 3}
    assert [[round(float(v), 4) for v in r.scores] for r in kept.results] == [[0.9, 0.4], [0.8, 0.7], []]
    assert fit_instances(out, img.height, img.width, 7 * 1200)[1] is None  # all 7 fit: nothing left out
    # the model is never asked for more per prompt than fit in all
    opts = ConceptOptions(prompts=[{"text": "a"}], threshold=0.0, max_instances=50)
    assert build_request(img, opts, INFO, limits).max_instances == 4
    assert build_request(img, opts, INFO, LimitsConfig(max_image_pixels=1024)).max_instances == 50
    # polygons (~20x the memory of an RLE string at worst) count POLYGON_MASK_COST times, as the docs say
    assert POLYGON_MASK_COST == 4 and "counts 4 times" in LimitsConfig.model_fields["max_output_pixels"].description
    polygons = opts.model_copy(update={"mask_format": "polygon"})
    assert build_request(img, polygons, INFO, LimitsConfig(max_image_pixels=1024,
                                                           max_output_pixels=8 * 1200)).max_instances == 2
    _, polygon_cut = fit_instances(out, img.height, img.width, 8 * 1200, mask_cost("polygon"))
    assert polygon_cut is not None and polygon_cut.omitted == 5


class FakeImages:
    def __init__(self, img: DecodedImage, limits: LimitsConfig):
        self.img, self.limits, self.tenant = img, limits, "t"

    async def decode(self, data: bytes) -> DecodedImage:
        return self.img

    async def load(self, ref) -> bytes:
        return b"image"


class FakeModel:
    """A ModelClient stand-in: `answers` per method, the requests it got in `calls`."""

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    async def info(self) -> ModelInfo:
        return INFO

    async def call(self, method: str, *args, routing_key=None):
        self.calls.append((method, args))
        return self.answers[method]


def test_concept_pipeline_and_job_say_truncated():
    img = image(30, 40)
    limits = LimitsConfig(max_image_pixels=1024, max_output_pixels=3 * 1200)
    model = FakeModel(segment=concept_out([[0.9, 0.4, 0.3], [0.8, 0.7]]))
    pipeline = ConceptPipeline(model, FakeImages(img, limits), limits)  # type: ignore[arg-type]
    opts = ConceptOptions(prompts=[{"text": "a"}, {"text": "b"}], threshold=0.0, overlay=True)
    response, overlay_png = asyncio.run(pipeline.segment(b"x", opts, "rid"))
    assert model.calls[0][1][0].max_instances == 3
    assert (response.truncated, response.truncated_reason, response.omitted_masks) == (True, "max_output_pixels", 2)
    assert [[i.id for i in r.instances] for r in response.results] == [[0], [1, 2]]  # ids stay consecutive
    assert [[round(i.score, 4) for i in r.instances] for r in response.results] == [[0.9], [0.8, 0.7]]
    assert overlay_png is not None
    url = concept_module.url_response(response, {"result_url": "u", "expires_at": "e"})
    assert (url.truncated, url.omitted_masks) == (True, 2)
    # a pcs_image job runs the same pipeline: its result document says so too
    job = ConceptImageJob(pipeline)
    output = asyncio.run(job.execute({"image": {"image_id": "a" * 64}, "prompts": [{"text": "a"}, {"text": "b"}],
                                      "threshold": 0.0}, JobContext("job", 1)))
    doc = json.loads(output.result_json)
    assert (doc["truncated"], doc["truncated_reason"], doc["omitted_masks"]) == (True, "max_output_pixels", 2)
    plain = ConceptImageResponse.model_validate({**doc, "truncated": None, "truncated_reason": None,
                                                 "omitted_masks": None})
    assert "truncated" not in plain.model_dump(exclude_none=True)  # absent when nothing was left out


def click_out(n_objects: int, k: int, hw=(30, 40)) -> ClickResponse:
    logits = np.where(blob_probs(k) > 0.5, 5, -5).astype(np.float16)
    return ClickResponse([ObjectMasks(logits, np.float32([0.2, 0.9, 0.5][:k]), 0.7) for _ in range(n_objects)],
                         hw, True)


def test_clicks_drop_candidates_first_then_refuse():
    px = 30 * 40
    assert plan_click_output(click_out(2, 3), 6 * px) == (False, None)
    best_only, truncation = plan_click_output(click_out(2, 3), 5 * px)
    assert best_only and truncation is not None and truncation.omitted == 4
    with pytest.raises(OutputTooLarge) as err:
        plan_click_output(click_out(3, 3), 2 * px)
    assert (err.value.status_code, err.value.code) == (413, "output_too_large")
    opts = ClickOptions(objects=[{"points": [[1, 1]]}] * 2, multimask_output=True)
    objs = encode_objects(click_out(2, 3), opts, best_only=True)
    assert all(o.candidates is None and o.score == pytest.approx(0.9) for o in objs)
    full = encode_objects(click_out(2, 3), opts)
    assert [o.mask for o in objs] == [o.mask for o in full]  # the best mask is the same either way
    # through the pipeline: the flag is on the response
    limits = LimitsConfig(max_image_pixels=1024, max_output_pixels=5 * px)
    pipe = ClickPipeline(FakeModel(segment=click_out(2, 3)), FakeImages(image(), limits),  # type: ignore[arg-type]
                         ClickConfig())
    response: ClickImageResponse = asyncio.run(pipe.segment("a" * 64, None, opts, "rid"))
    assert (response.truncated, response.omitted_masks) == (True, 4)
    assert all(o.candidates is None for o in response.objects)


def auto_out(n: int, hw=(30, 40)) -> AutoResponse:
    logits = np.where(blob_probs(n) > 0.5, 5, -5).astype(np.float16)
    scores = np.linspace(0.99, 0.5, n).astype(np.float32)
    return AutoResponse(logits, scores, scores, np.zeros((n, 4), np.float32), np.zeros((n, 2), np.float32), hw, True,
                        candidates=3 * n)


def test_automatic_masks_keep_the_best_that_fit():
    px = 30 * 40
    kept, truncation = fit_auto(auto_out(6), 4 * px)
    assert truncation is not None and truncation.omitted == 2
    assert kept.scores.tolist() == pytest.approx(auto_out(6).scores[:4].tolist())
    assert len(kept.mask_logits) == len(kept.boxes_xyxy) == len(kept.points_xy) == len(kept.stability) == 4
    assert fit_auto(auto_out(6), 6 * px)[1] is None
    limits = LimitsConfig(max_image_pixels=1024, max_output_pixels=4 * px)
    pipe = ClickPipeline(FakeModel(generate_masks=auto_out(6)), FakeImages(image(), limits),  # type: ignore[arg-type]
                         ClickConfig())
    response: AutoImageResponse = asyncio.run(pipe.generate_masks("a" * 64, None, AutoOptions(), "rid"))
    assert len(response.masks) == 4 and (response.truncated, response.omitted_masks) == (True, 2)


# ----------------------------------------------------------------------------------------------- overlays


def test_overlay_of_a_large_image_is_downscaled_to_the_cap():
    assert overlay_size(5000, 8000, 4 * 1024 * 1024) == (1619, 2590)
    assert overlay_size(100, 100, 4 * 1024 * 1024) == (100, 100) and overlay_size(10, 10, None) == (10, 10)
    h, w = overlay_size(1, 100_000, 65_536)
    assert h == 1 and w <= 65_536
    img = image(300, 500)
    opts = ConceptOptions(prompts=[{"text": "a"}], threshold=0.0, overlay=True)
    out = concept_out([[0.9, 0.8]])
    _, png = encode_response(img, opts, out, max_overlay_pixels=30_000)
    assert png is not None
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == overlay_size(300, 500, 30_000) and decoded.shape[0] * decoded.shape[1] <= 30_000
    _, full = encode_response(img, opts, out)  # no cap: the image's size
    assert cv2.imdecode(np.frombuffer(full, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (300, 500)


def test_streamed_overlay_equals_render_overlay():
    img = image(60, 80)
    canvas = OverlayCanvas(img.rgb)
    items = []
    for i, probs in enumerate(blob_probs(4)):
        mask = encode_mask(probs, 60, 80, 0.5)
        canvas.add(mask, mask.box_xyxy, f"x {i}", i)
        items.append((mask.full(), mask.box_xyxy, f"x {i}", i))
    assert canvas.png() == render_overlay(img.rgb, items)


# ------------------------------------------------------------------------------------ automatic: floors, caps


def test_automatic_config_floors_and_caps():
    with pytest.raises(ValidationError, match="pred_iou_thresh"):
        ClickConfig(auto={"pred_iou_thresh": 0.3, "min_pred_iou_thresh": 0.5})
    with pytest.raises(ValidationError, match="stability_score_thresh"):
        ClickConfig(auto={"stability_score_thresh": 0.3, "min_stability_score_thresh": 0.5})
    for bad in ({"max_points_per_side": 65}, {"points_per_side": 65}, {"max_masks": 1025}, {"points_per_batch": 1025}):
        with pytest.raises(ValidationError):
            ClickConfig(auto=bad)
    assert ClickConfig().auto.max_masks <= automatic.MAX_CANDIDATES
    assert ClickConfig.model_fields["auto"].default_factory is not None


@pytest.mark.parametrize("opts,code", [
    ({"pred_iou_thresh": 0.49}, "pred_iou_thresh_too_low"),
    ({"stability_score_thresh": 0.1}, "stability_score_thresh_too_low"),
    ({"points_per_side": 33}, "points_per_side_too_large"),
])
def test_automatic_requests_below_the_floors_are_refused(opts, code):
    cfg = ClickConfig(auto={"min_pred_iou_thresh": 0.5, "min_stability_score_thresh": 0.5, "max_points_per_side": 32})
    with pytest.raises(InvalidInput) as err:
        auto_knobs(AutoOptions(**opts), cfg)
    assert (err.value.status_code, err.value.code) == (400, code)
    ok = auto_knobs(AutoOptions(pred_iou_thresh=0.5, stability_score_thresh=0.5, points_per_batch=1024), cfg)
    assert ok["points_per_batch"] == cfg.auto.points_per_batch  # lowered to the configured one


def test_the_model_layer_refuses_grids_past_its_hard_caps():
    with pytest.raises(InvalidInput) as err:
        automatic.check_auto_request(AutoRequest("k", points_per_side=automatic.MAX_POINTS_PER_SIDE + 1))
    assert err.value.code == "invalid_auto_options"
    automatic.check_auto_request(AutoRequest("k", points_per_side=automatic.MAX_POINTS_PER_SIDE))


class FakeDecoder:
    """Sam3TrackerModel's mask decoder stand-in: every grid point gets three masks (a block around the point on
    the m x m grid) with distinct scores; counts the candidates it produced."""

    def __init__(self, m: int):
        self.m, self.produced = m, 0

    def __call__(self, image_embeddings, input_points, input_labels, multimask_output):
        p = input_points.shape[1]
        logits = torch.full((1, p, 3, self.m, self.m), -5.0)
        for j in range(p):
            x, y = (input_points[0, j, 0] / 16 * self.m).long().tolist()
            for c in range(3):
                logits[0, j, c, max(0, y - c - 1):y + c + 2, max(0, x - c - 1):x + c + 2] = 5.0
        scores = torch.rand(1, p, 3, generator=torch.Generator().manual_seed(p)) * 0.5 + 0.5
        self.produced += p * 3
        return SimpleNamespace(pred_masks=logits, iou_scores=scores)


def test_automatic_keeps_a_bounded_number_of_candidates_and_never_upsamples_to_full_size(monkeypatch):
    monkeypatch.setattr(automatic, "MAX_CANDIDATES", 20)
    sizes = []
    real = automatic.F.interpolate

    def spy(x, size, **kw):
        sizes.append(tuple(size))
        return real(x, size=size, **kw)

    monkeypatch.setattr(automatic.F, "interpolate", spy)
    kept_sizes = []
    real_keep = automatic.keep_best

    def keep_spy(cand, limit):
        out = real_keep(cand, limit)
        kept_sizes.append(len(out["scores"]))
        return out

    monkeypatch.setattr(automatic, "keep_best", keep_spy)
    decoder = FakeDecoder(m=16)
    gen = automatic.AutomaticMaskGenerator(decoder, SimpleNamespace(device=torch.device("cpu")), 16, 16)
    hw = (5000, 8000)  # 40 MP: boxes are found on a <= 1 MP grid
    req = AutoRequest("k", points_per_side=8, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                      box_nms_thresh=1.0, max_masks=1000)
    out = gen.generate((torch.zeros(1, 1, 1, 1),), hw, req, cache_hit=True)
    assert out.candidates == decoder.produced == 8 * 8 * 3
    assert max(kept_sizes) <= 20 and len(out.scores) <= 20
    assert sizes and all(h * w <= automatic.BOX_GRID_PIXELS for h, w in sizes)
    assert (out.boxes_xyxy[:, 2] <= 8000 + 1e-3).all() and (out.boxes_xyxy[:, 3] <= 5000 + 1e-3).all()
    # the 20 kept are the best of all 192 (every candidate passes the thresholds and NMS at 1.0)
    all_scores = np.concatenate([(torch.rand(1, 8, 3, generator=torch.Generator().manual_seed(8)) * 0.5 + 0.5)
                                 .flatten().numpy()] * 8)
    assert out.scores.min() >= np.sort(all_scores)[::-1][19] - 1e-6


def test_automatic_boxes_are_exact_up_to_the_grid_size():
    logits = torch.full((1, 16, 16), -5.0)
    logits[0, 4:10, 2:7] = 5.0
    cand = {"logits": logits.to(torch.float16), "scores": torch.ones(1), "boxes": torch.zeros(1, 4)}
    small = automatic.exact_boxes(cand, (600, 900), 0)  # <= 1 MP: the full-size tight box
    full = torch.nn.functional.interpolate(logits[None], size=(600, 900), mode="bilinear", align_corners=False)[0, 0] > 0
    rows, cols = torch.nonzero(full.any(1)).flatten(), torch.nonzero(full.any(0)).flatten()
    assert small["boxes"][0].tolist() == [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]
    big = automatic.exact_boxes(cand, (6000, 9000), 0)["boxes"][0]  # same shape 10x larger: ~10x the box
    assert big.tolist() == pytest.approx([v * 10 for v in small["boxes"][0].tolist()], abs=20)
    assert automatic.box_grid((6000, 9000))[0] * automatic.box_grid((6000, 9000))[1] <= automatic.BOX_GRID_PIXELS


# ------------------------------------------------------------------------------------- cancelled requests


class Gate:
    """Counts calls of a wrapped function; the `stop_at`-th call signals `reached` and waits for `resume`."""

    def __init__(self, fn, stop_at: int):
        self.fn, self.stop_at, self.calls = fn, stop_at, 0
        self.reached, self.resume = threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            self.reached.set()
            assert self.resume.wait(30), "the test never resumed the worker"
        return self.fn(*args, **kwargs)


async def cancel_at_gate(coro, gate: Gate):
    """Run `coro` until the gate is reached, cancel it, let the worker go on, wait for it to stop."""
    task = asyncio.create_task(coro)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, gate.reached.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.resume.set()
    await pools.run_cpu(lambda: None)  # one CPU thread, FIFO: runs once the cancelled encode has stopped


def test_a_cancelled_concept_request_stops_encoding_at_the_next_instance(monkeypatch):
    gate = Gate(encode_mask, stop_at=3)
    monkeypatch.setattr(concept_module, "encode_mask", gate)
    img = image(30, 40)
    limits = LimitsConfig(max_image_pixels=1024)
    model = FakeModel(segment=concept_out([[0.9 - i * 0.01 for i in range(20)]]))
    pipeline = ConceptPipeline(model, FakeImages(img, limits), limits)  # type: ignore[arg-type]
    opts = ConceptOptions(prompts=[{"text": "a"}], threshold=0.0)
    asyncio.run(cancel_at_gate(pipeline.segment(b"x", opts, "rid"), gate))
    assert gate.calls == 3  # of 20: the instance in progress finished, none after it started


def test_a_cancelled_automatic_request_stops_encoding_at_the_next_mask(monkeypatch):
    gate = Gate(encode_mask, stop_at=2)
    monkeypatch.setattr(click_module, "encode_mask", gate)
    limits = LimitsConfig(max_image_pixels=1024)
    pipe = ClickPipeline(FakeModel(generate_masks=auto_out(12)), FakeImages(image(), limits),  # type: ignore[arg-type]
                         ClickConfig())
    asyncio.run(cancel_at_gate(pipe.generate_masks("a" * 64, None, AutoOptions(), "rid"), gate))
    assert gate.calls == 2


def test_run_cancellable_sets_the_token_only_when_cancelled():
    seen = []

    def work(x, cancel):
        seen.append(cancel)
        return x * 2

    assert asyncio.run(pools.run_cancellable(work, 21)) == 42
    assert isinstance(seen[0], pools.CancelToken) and not seen[0].cancelled
    token = pools.CancelToken()
    token.cancel()
    with pytest.raises(pools.WorkCancelled):
        token.check()


class FakeResponse:
    """A DeploymentResponse stand-in that never answers; records cancel()."""

    def __init__(self):
        self.cancelled = False
        self.future: asyncio.Future | None = None

    def __await__(self):
        self.future = asyncio.get_running_loop().create_future()
        return self.future.__await__()

    def cancel(self):
        self.cancelled = True


def test_model_calls_are_cancelled_on_the_replica_when_the_caller_goes_or_times_out():
    responses: list[FakeResponse] = []

    def remote(*args):
        responses.append(FakeResponse())
        return responses[-1]

    handle = SimpleNamespace(segment=SimpleNamespace(remote=remote))
    with pytest.raises(Timeout):
        asyncio.run(ModelClient(handle, timeout_s=0.05).call("segment"))
    assert responses[-1].cancelled

    async def cancelled_caller():
        task = asyncio.create_task(ModelClient(handle, timeout_s=60).call("segment"))
        while len(responses) < 2 or responses[-1].future is None:
            await asyncio.sleep(0)  # let the call reach its await (yields to the loop, no wall-clock wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_caller())
    assert len(responses) == 2 and responses[-1].cancelled


# ------------------------------------------------------------------------------------------------- pools


def test_pools_are_bounded_and_sized_from_config(tmp_path):
    from serve_app.pipelines.services import Services

    cfg = AppConfig(ingress={"cpu_threads": 3}, storage={"io_threads": 5, "uri": f"file://{tmp_path}"})
    Services.create(cfg, concept_handle=None, sessions_handle=None)
    assert (pools.pools().cpu._max_workers, pools.pools().io._max_workers) == (3, 5)
    assert 1 <= pools.replica_cpus() <= (len(__import__("os").sched_getaffinity(0)))
    assert AppConfig().storage.io_threads == 16 and AppConfig().ingress.cpu_threads is None

    pools.configure(cpu_threads=2, io_threads=2)
    started, release = threading.Semaphore(0), threading.Event()
    running = []

    def block(i):
        running.append(i)
        started.release()
        assert release.wait(30)

    async def main():
        tasks = [asyncio.create_task(pools.run_cpu(block, i)) for i in range(3)]
        loop = asyncio.get_running_loop()
        for _ in range(2):
            assert await loop.run_in_executor(None, started.acquire, True, 30)
        assert sorted(running) == [0, 1]  # the third waits for a thread: at most 2 at once
        release.set()
        await asyncio.gather(*tasks)
        assert sorted(running) == [0, 1, 2]

    asyncio.run(main())


@pytest.mark.parametrize("assigned,expected", [(0.5, 1), (1.0, 1), (2.0, 2), (1000.0, None), (0.0, None)])
def test_the_cpu_pool_follows_the_replicas_num_cpus(monkeypatch, assigned, expected):
    import os

    import ray

    usable = len(os.sched_getaffinity(0))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_assigned_resources=lambda: {"CPU": assigned}))
    # None: every CPU the process may use (num_cpus above it, or 0 = no reservation)
    assert pools.replica_cpus() == min(expected if expected is not None else usable, usable)


class RecordingStore:
    """An ArtifactStore stand-in that records the thread each call ran on."""

    def __init__(self, data: bytes):
        self.data, self.threads = data, []

    def head(self, key):
        self.threads.append(threading.current_thread().name)
        return BlobInfo(key, len(self.data), "etag", datetime.now(timezone.utc), "image/png")

    def get(self, key):
        self.threads.append(threading.current_thread().name)
        return Blob(self.data, BlobInfo(key, len(self.data), "etag", datetime.now(timezone.utc), "image/png"))

    def put(self, key, data, content_type, **kw):
        self.threads.append(threading.current_thread().name)
        return "etag"

    def presign_get(self, key, expiry_s):
        return "https://example/" + key


def test_storage_calls_run_on_the_storage_pool_and_decoding_on_the_cpu_pool(monkeypatch):
    from PIL import Image

    from serve_app.config import StorageConfig
    from serve_app.pipelines import image_library

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(buf, "PNG")
    store = RecordingStore(buf.getvalue())
    decoded_on = []
    real_decode = image_library.decode_image

    def decode(*args, **kwargs):
        decoded_on.append(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(image_library, "decode_image", decode)
    lib = ImageLibrary(store, StorageConfig(), LimitsConfig())  # type: ignore[arg-type]

    async def main():
        data = await lib.load_id("a" * 64)
        await lib.load_upload("b" * 20)
        await lib.save(data)
        await ResultPublisher(store, StorageConfig()).publish(b"{}", b"png")  # type: ignore[arg-type]

    asyncio.run(main())
    assert len(store.threads) == 6 and all(t.startswith("sam3-io") for t in store.threads), store.threads
    assert decoded_on and all(t.startswith("sam3-cpu") for t in decoded_on)


def test_rle_of_a_truncated_answer_still_decodes():
    img = image(30, 40)
    out, _ = fit_instances(concept_out([[0.9, 0.8, 0.7]]), 30, 40, 2 * 1200)
    results, _ = encode_response(img, ConceptOptions(prompts=[{"text": "a"}]), out)
    assert [decode_rle(i.mask.model_dump()).shape for i in results[0].instances] == [(30, 40)] * 2
