"""The warm-click fast path gives the same bytes as the path it replaced:

- MaskWindow.rle transposes the crop with cv2 (not numpy's copy of a transposed bool view): the same COCO RLE;
- encode_objects builds each object's result from its best candidate's fields (no model_dump -> validate);
- ClickPipeline.segment_json encodes, builds and serialises in one CPU-pool job: the JSON of `segment`'s answer
  (model_dump_json(exclude_none=True)), as bytes;
- ingress.responses.json_bytes = model_dump_json(...).encode().
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from serve_app.codecs.masks import MaskWindow, _transposed, encode_mask, encode_rle
from serve_app.config import ClickConfig, LimitsConfig
from serve_app.ingress.responses import json_bytes
from serve_app.model.types import ClickResponse, ModelInfo, ObjectMasks
from serve_app.pipelines.click import ClickPipeline, encode_objects
from serve_app.schemas import (
    ClickImageResponse,
    ClickObjectResult,
    ClickOptions,
    MaskCandidate,
    RleMask,
)

INFO = ModelInfo(model_id="tiny", image_size=64, mask_size=8, device="cpu", dtype="float32")


def old_rle(m: MaskWindow) -> dict:
    """MaskWindow.rle before the fast path (numpy's transposed copy)."""
    n = m.height * m.width
    h, w = m.crop.shape
    cols = np.zeros((w, h + 2), dtype=bool)
    cols[:, 1:-1] = m.crop.T
    flat = cols.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    col, row = np.divmod(change, h + 2)
    edges = (m.x0 + col) * m.height + (m.y0 - 1 + row)
    distinct = np.diff(edges) != 0
    keep = np.ones(len(edges), dtype=bool)
    keep[1:] &= distinct
    keep[:-1] &= distinct
    edges = edges[keep]
    counts = np.diff(np.r_[0, edges, n])
    if len(counts) > 1 and counts[-1] == 0:
        counts = counts[:-1]
    rle = mask_utils.frPyObjects({"size": [m.height, m.width], "counts": counts.astype(np.uint32)}, m.height, m.width)
    return {"size": [m.height, m.width], "counts": rle["counts"].decode("ascii")}


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 3), (31, 17), (768, 1024), (0, 0), (0, 5)])
def test_transposed_is_the_transpose(shape):
    a = np.random.default_rng(0).random(shape) > 0.5
    t = _transposed(a)
    assert t.shape == a.T.shape and t.dtype == np.bool_ and t.flags.c_contiguous
    np.testing.assert_array_equal(t, a.T)
    strided = (np.random.default_rng(1).random((10, 12)) > 0.5)[:, ::2]  # not contiguous
    np.testing.assert_array_equal(_transposed(strided), strided.T)


def test_rle_equals_the_old_rle_and_pycocotools():
    rng = np.random.default_rng(7)
    for trial in range(120):
        height, width = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        full = np.zeros((height, width), bool)
        kind = trial % 4
        if kind == 0:  # noise
            full = rng.random((height, width)) < rng.random()
        elif kind == 1:  # a block
            y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
            full[y0:int(rng.integers(y0, height)) + 1, x0:int(rng.integers(x0, width)) + 1] = True
        elif kind == 2:  # full-height columns (runs that go on into the next column)
            full[:, int(rng.integers(0, width)):] = True
        m = MaskWindow.tight(full, 0, 0, height, width)
        assert m.rle() == old_rle(m) == encode_rle(full), trial


def test_rle_of_a_click_sized_mask():
    logits = (np.random.default_rng(3).standard_normal((32, 32)) * 3).astype(np.float16)
    m = encode_mask(logits, 768, 1024, 0.0)  # a noisy mask over the whole 1024x768 image (the tiny model's)
    assert m.rle() == old_rle(m) == encode_rle(m.full())


def click_out(n_objects: int = 2, k: int = 3, hw=(30, 40)) -> ClickResponse:
    rng = np.random.default_rng(5)
    objs = [ObjectMasks((rng.standard_normal((k, 8, 8)) * 4).astype(np.float16),
                        rng.random(k).astype(np.float32), float(rng.random())) for _ in range(n_objects)]
    return ClickResponse(objs, hw, True, timings_ms={"vision_ms": 0.1, "decoder_ms": 2.0}, batch_size=1)


def old_encode_objects(out: ClickResponse, opts: ClickOptions, *, best_only: bool = False) -> list:
    """encode_objects before the fast path: ClickObjectResult(**best.model_dump(), ...)."""
    from serve_app.codecs.mask_input import encode_mask_input

    h, w = out.original_hw
    results = []
    for i, obj in enumerate(out.objects):
        order = np.argsort(-obj.scores, kind="stable")
        if best_only:
            order = order[:1]
        cands = []
        for k in order:
            mask = encode_mask(obj.mask_logits[k], h, w, 0.0)
            cands.append(MaskCandidate(
                score=round(float(obj.scores[k]), 6), box=mask.box_xyxy, area=mask.area, mask=RleMask(**mask.rle()),
                mask_input=encode_mask_input(obj.mask_logits[k]) if opts.return_mask_input else None))
        multi = opts.multimask_output and not best_only
        results.append(ClickObjectResult(id=i, object_score=round(float(obj.object_score), 6),
                                         **cands[0].model_dump(), candidates=cands if multi else None))
    return results


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("return_mask_input", [False, True])
@pytest.mark.parametrize("best_only", [False, True])
def test_encode_objects_equals_the_round_trip(multimask, return_mask_input, best_only):
    out = click_out()
    opts = ClickOptions(objects=[{"points": [[1, 1]]}] * 2, multimask_output=multimask,
                        return_mask_input=return_mask_input)
    new = encode_objects(out, opts, best_only=best_only)
    old = old_encode_objects(out, opts, best_only=best_only)
    assert new == old
    for exclude_none in (False, True):
        assert [o.model_dump_json(exclude_none=exclude_none) for o in new] == \
               [o.model_dump_json(exclude_none=exclude_none) for o in old]


class FakeModel:
    async def info(self) -> ModelInfo:
        return INFO

    async def call(self, method: str, *args, routing_key=None):
        return click_out()


class FakeImages:
    tenant = "t"
    limits = LimitsConfig()


def without_timing_values(doc: dict) -> dict:
    return {**doc, "timings_ms": sorted(doc["timings_ms"])}


@pytest.mark.parametrize("inline_pixels", [0, 1024 * 1024])  # on the CPU pool / on the event loop
@pytest.mark.parametrize("multimask", [False, True])
def test_segment_json_is_the_serialised_segment(multimask, inline_pixels, monkeypatch):
    from serve_app.pipelines import click as click_module

    monkeypatch.setattr(click_module, "INLINE_ENCODE_PIXELS", inline_pixels)
    pipe = ClickPipeline(FakeModel(), FakeImages(), ClickConfig())  # type: ignore[arg-type]
    opts = ClickOptions(objects=[{"points": [[1, 1]]}, {"box": [1, 1, 5, 5]}], multimask_output=multimask)
    body = asyncio.run(pipe.segment_json("a" * 64, None, opts, "rid"))
    model = asyncio.run(pipe.segment("a" * 64, None, opts, "rid"))
    assert isinstance(body, bytes)
    # the bytes are exactly what the old route sent for that answer (model_dump_json(exclude_none=True))
    parsed = ClickImageResponse.model_validate_json(body)
    assert body == parsed.model_dump_json(exclude_none=True).encode()
    # the same answer as segment's, but for the measured timings
    assert without_timing_values(json.loads(body)) == without_timing_values(model.model_dump(exclude_none=True))
    assert set(parsed.timings_ms) == {"model_ms", "encode_ms", "total_ms", "vision_ms", "decoder_ms"}


@pytest.mark.parametrize("exclude_none", [False, True])
def test_json_bytes_equals_model_dump_json(exclude_none):
    objs = encode_objects(click_out(), ClickOptions(objects=[{"points": [[1, 1]]}] * 2, multimask_output=True))
    for extra in ({}, {"truncated": True, "truncated_reason": "max_output_pixels", "omitted_masks": 4}):
        model = ClickImageResponse(request_id="r-é\u2603", image_id="a" * 64, width=40, height=30, objects=objs,
                                   cache_hit=True, timings_ms={"total_ms": 1.25}, batch_size=1, **extra)
        assert json_bytes(model, exclude_none=exclude_none) == \
            model.model_dump_json(exclude_none=exclude_none).encode()


class _Response:
    """A DeploymentResponse stand-in: awaitable, never answers unless `value` is set; records cancel()."""

    def __init__(self, value=None):
        self.value, self.cancelled = value, False

    def __await__(self):
        if self.value is None:
            yield from asyncio.sleep(3600).__await__()
        return self.value

    def cancel(self):
        self.cancelled = True


class _Handle:
    def __init__(self, response):
        self.response, self.session_ids = response, []

    def options(self, session_id=None):
        self.session_ids.append(session_id)
        return self

    def __getattr__(self, method):
        return SimpleNamespace(remote=lambda *args: self.response)


def test_model_client_deadline_and_cancel_on_this_task():
    from serve_app.errors import Timeout
    from serve_app.pipelines.remote import ModelClient

    ok = _Handle(_Response(value="answer"))
    assert asyncio.run(ModelClient(ok, 5).call("segment", 1, routing_key="t/x")) == "answer"
    assert ok.session_ids == ["t/x"]
    slow = _Handle(_Response())
    with pytest.raises(Timeout):
        asyncio.run(ModelClient(slow, 0.05).call("segment", 1))
    assert slow.response.cancelled  # our deadline cancels the replica's work too

    async def cancelled_caller():
        gone = _Handle(_Response())
        task = asyncio.ensure_future(ModelClient(gone, 60).call("segment", 1))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return gone.response.cancelled

    assert asyncio.run(cancelled_caller())
