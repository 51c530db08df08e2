"""ClickRunner (Sam3TrackerModel) on the tiny checkpoint: parity with transformers' own path, coordinate
frame, shapes/dtypes, determinism, batched == unbatched, the cache protocol, byte accounting and eviction,
automatic mode. Asserts shapes and invariants, never mask quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.codecs.image_decode import resize_square
from serve_app.codecs.mask_input import decode_mask_input, encode_mask_input
from serve_app.config import ClickConfig, ModelConfig
from serve_app.errors import InvalidInput
from serve_app.model.click import ClickRunner
from serve_app.model.embedding_cache import EmbeddingCache
from serve_app.model.types import (
    AutoRequest,
    ClickObject,
    ClickRequest,
    ClickResponse,
    EmbeddingMiss,
)
from tests.helpers import rgb_image

TINY_EMBEDDING_BYTES = (16 * 32 * 32 + 32 * 16 * 16 + 128 * 8 * 8) * 4  # three fp32 feature levels


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    return ClickRunner.from_config(ModelConfig(model_id=tiny_model_dir),
                                   ClickConfig(cache_bytes=64 * TINY_EMBEDDING_BYTES, max_objects_per_forward=3))


def fresh(runner, cache_bytes=64 * TINY_EMBEDDING_BYTES, **kw) -> ClickRunner:
    """Another runner on the same (read-only) model with its own cache and counters."""
    return ClickRunner(runner.model, runner.placement, "tiny", cache_bytes=cache_bytes, **kw)


def image(seed=0, w=130, h=90):
    rgb = rgb_image(w, h, seed)
    return f"img{seed}-{w}x{h}", resize_square(rgb, 112), (h, w)


def pts(*xy, labels=None, box=None, mask=None) -> ClickObject:
    p = np.asarray(xy, np.float32).reshape(-1, 2) if xy else None
    lab = None if p is None else np.asarray(labels if labels is not None else [1] * len(p), np.int64)
    return ClickObject(p, lab, None if box is None else np.asarray(box, np.float32), mask)


def with_pixels(seed, objects, multimask=False, **kw):
    iid, px, hw = image(seed, **kw)
    return ClickRequest(iid, tuple(objects), px, hw, multimask)


def test_info_and_load(runner, tiny_model_dir):
    assert runner.info.image_size == 112 and runner.info.mask_size == 32
    assert runner.info.device == "cpu" and runner.info.dtype == "float32"


def test_matches_transformers_reference_and_processor_frame(runner, tiny_model_dir):
    """Points in original pixels are scaled like Sam3TrackerProcessor does, and the cached-embedding path
    gives the full forward's result."""
    from transformers import Sam3TrackerProcessor

    proc = Sam3TrackerProcessor.from_pretrained(tiny_model_dir)
    rgb = rgb_image(130, 90, 3)
    inputs = proc(images=rgb, input_points=[[[[30.0, 40.0], [100.0, 70.0]]]], input_labels=[[[1, 0]]],
                  return_tensors="pt")
    expected = torch.tensor([[30 * 112 / 130, 40 * 112 / 90], [100 * 112 / 130, 70 * 112 / 90]])
    torch.testing.assert_close(inputs["input_points"][0, 0], expected)
    px = resize_square(rgb, 112)
    pixel_values = torch.from_numpy(px.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.inference_mode():
        ref = runner.model(pixel_values=pixel_values, input_points=inputs["input_points"],
                           input_labels=inputs["input_labels"], multimask_output=True)
    out = fresh(runner).segment_batch([ClickRequest("x", (pts([30, 40], [100, 70], labels=[1, 0]),), px, (90, 130), True)])[0]
    np.testing.assert_allclose(out.objects[0].mask_logits, ref.pred_masks[0, 0].numpy(), atol=2e-2, rtol=1e-3)
    np.testing.assert_allclose(out.objects[0].scores, ref.iou_scores[0, 0].numpy(), atol=1e-5)


def test_shapes_dtypes_and_determinism(runner):
    r = fresh(runner)
    req = with_pixels(1, [pts([10, 20]), pts(box=[5, 5, 60, 70]), pts([3, 4], labels=[0], box=[1, 1, 50, 50])])
    single = r.segment_batch([req])[0]
    assert isinstance(single, ClickResponse) and single.original_hw == (90, 130) and not single.cache_hit
    for obj in single.objects:
        assert obj.mask_logits.shape == (1, 32, 32) and obj.mask_logits.dtype == np.float16
        assert obj.scores.shape == (1,) and obj.scores.dtype == np.float32
        assert 0.0 <= obj.object_score <= 1.0
    multi = r.segment_batch([ClickRequest(req.cache_key, req.objects, multimask_output=True)])[0]
    assert multi.cache_hit and all(o.mask_logits.shape == (3, 32, 32) for o in multi.objects)
    again = r.segment_batch([ClickRequest(req.cache_key, req.objects, multimask_output=True)])[0]
    for a, b in zip(multi.objects, again.objects):
        np.testing.assert_array_equal(a.mask_logits, b.mask_logits)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert r.counters.vision_calls == 1 and r.counters.images_encoded == 1


def test_batched_equals_unbatched(runner):
    """Requests on several images, objects of mixed structure, chunked by 3: same as one at a time."""
    reqs = [with_pixels(10, [pts([10, 20]), pts([30, 30]), pts([50, 60], [5, 5], labels=[1, 0])]),
            with_pixels(11, [pts([60, 20]), pts(box=[0, 0, 40, 40]), pts([1, 1]), pts([7, 8])], multimask=True, w=90),
            with_pixels(12, [pts([20, 20], box=[10, 10, 80, 60])])]
    batched_runner, alone_runner = fresh(runner), fresh(runner)
    batched = batched_runner.segment_batch(reqs)
    assert batched_runner.counters.vision_calls == 1 and batched_runner.counters.images_encoded == 3
    assert all(b.batch_size == 3 for b in batched)
    for req, b in zip(reqs, batched):
        for i, obj in enumerate(req.objects):
            alone = alone_runner.segment_batch([ClickRequest(req.cache_key, (obj,), req.pixels, req.original_hw,
                                                    req.multimask_output)])[0]
            np.testing.assert_allclose(b.objects[i].mask_logits.astype(np.float32),
                                       alone.objects[0].mask_logits.astype(np.float32), atol=1e-2)
            np.testing.assert_allclose(b.objects[i].scores, alone.objects[0].scores, atol=1e-5)


def test_mask_input_refines_through_the_handle(runner):
    r = fresh(runner)
    first = r.segment_batch([with_pixels(2, [pts([40, 40])], multimask=True)])[0].objects[0]
    handle = encode_mask_input(first.mask_logits[0])
    logits = decode_mask_input(handle, 32)
    np.testing.assert_array_equal(logits, first.mask_logits[0])
    req = ClickRequest(image(2)[0], (pts([40, 40], [90, 10], labels=[1, 0], mask=logits),))
    refined = r.segment_batch([req])[0].objects[0]
    plain = r.segment_batch([ClickRequest(req.cache_key, (pts([40, 40], [90, 10], labels=[1, 0]),))])[0].objects[0]
    assert refined.mask_logits.shape == (1, 32, 32)
    assert not np.array_equal(refined.mask_logits, plain.mask_logits)  # the mask prompt is used


def test_miss_protocol_and_per_request_errors(runner):
    r = fresh(runner)
    iid, px, hw = image(3)
    miss, = r.segment_batch([ClickRequest(iid, (pts([1, 1]),))])
    assert miss == EmbeddingMiss(iid) and r.counters.vision_calls == 0
    good, bad, outside, other_miss, same_image_no_pixels = r.segment_batch([
        ClickRequest(iid, (pts([1, 1]),), px, hw),
        ClickRequest("bad", (pts([1, 1]),), px[:50], hw),
        ClickRequest(iid, (pts([131, 1]),)),
        ClickRequest("nowhere", (pts([1, 1]),)),
        ClickRequest(iid, (pts([2, 2]),)),  # served by the pixels another request of the batch carried
    ])
    assert isinstance(good, ClickResponse) and isinstance(same_image_no_pixels, ClickResponse)
    assert isinstance(bad, InvalidInput) and bad.code == "invalid_pixels"
    assert isinstance(outside, InvalidInput) and outside.code == "point_outside_image"
    assert other_miss == EmbeddingMiss("nowhere")
    assert r.counters.vision_calls == 1 and r.counters.images_encoded == 1
    # an invalid prompt on an uncached image costs no encoder call
    r.segment_batch([ClickRequest("new", (pts(box=[5, 5, 5, 9]),), px, hw)])
    assert r.counters.vision_calls == 1 and "new" not in r.cache


@pytest.mark.parametrize("obj,code", [
    (pts(), "empty_object"),
    (ClickObject(np.zeros((2, 2), np.float32), np.ones(1, np.int64)), "point_labels_mismatch"),
    (pts([1, 1], box=[10, 10, 5, 20]), "invalid_box"),
    (pts(box=[0, 0, 131, 20]), "box_outside_image"),
    (pts([1, 1], mask=np.zeros((16, 16), np.float16)), "invalid_mask_input"),
])
def test_invalid_objects(runner, obj, code):
    out = fresh(runner).segment_batch([with_pixels(4, [obj])])[0]
    assert isinstance(out, InvalidInput) and out.code == code


def test_cache_byte_accounting_and_eviction(runner):
    """2.5 images' worth of bytes: the third image evicts the least recently used one; results after an
    eviction (recomputed from pixels) equal the first computation."""
    r = fresh(runner, cache_bytes=int(2.5 * TINY_EMBEDDING_BYTES))
    reqs = {s: with_pixels(20 + s, [pts([10 + s, 20])]) for s in range(3)}
    first = {s: r.segment_batch([reqs[s]])[0] for s in (0, 1)}
    assert r.cache.nbytes == 2 * TINY_EMBEDDING_BYTES and len(r.cache) == 2
    r.segment_batch([ClickRequest(reqs[0].cache_key, reqs[0].objects)])  # touch 0: 1 is now least recent
    r.segment_batch([reqs[2]])
    st = r.cache.stats()
    assert st.evictions == 1 and st.entries == 2 and st.bytes == 2 * TINY_EMBEDDING_BYTES <= st.max_bytes
    assert r.cache.keys() == [reqs[0].cache_key, reqs[2].cache_key]
    assert r.segment_batch([ClickRequest(reqs[1].cache_key, reqs[1].objects)])[0] == EmbeddingMiss(reqs[1].cache_key)
    recomputed = r.segment_batch([reqs[1]])[0]
    np.testing.assert_array_equal(recomputed.objects[0].mask_logits, first[1].objects[0].mask_logits)
    assert r.counters.vision_calls == 4


def test_entry_larger_than_the_cache_is_served_but_not_kept(runner):
    r = fresh(runner, cache_bytes=1000)
    out = r.segment_batch([with_pixels(5, [pts([10, 10])])])[0]
    assert isinstance(out, ClickResponse) and len(r.cache) == 0 and r.cache.stats().rejected == 1
    ref = fresh(runner).segment_batch([with_pixels(5, [pts([10, 10])])])[0]
    np.testing.assert_array_equal(out.objects[0].mask_logits, ref.objects[0].mask_logits)


def test_embedding_cache_lru():
    c = EmbeddingCache(100)
    assert c.put("a", 1, 40) == [] and c.put("b", 2, 40) == []
    assert c.get("a") == 1  # b is now least recent
    assert c.put("c", 3, 40) == ["b"]
    assert c.put("a", 4, 60) == []  # replacing a frees its 40 bytes first: 40 + 60 fits
    assert c.put("a", 5, 70) == ["c"]
    assert c.keys() == ["a"] and c.nbytes == 70 and c.get("a") == 5
    assert c.put("big", 6, 101) == [] and "big" not in c and c.nbytes == 70
    s = c.stats()
    assert (s.hits, s.inserts, s.evictions, s.rejected, s.entries, s.bytes) == (2, 5, 2, 1, 1, 70)
    assert c.get("zzz") is None and c.stats().misses == 1


def test_auto_masks(runner):
    r = fresh(runner)
    iid, px, hw = image(6)
    args = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.5}
    assert r.generate_masks(AutoRequest(iid, **args)) == EmbeddingMiss(iid)
    out = r.generate_masks(AutoRequest(iid, px, hw, points_per_batch=64, **args))
    assert out.candidates == 6 * 6 * 3 and not out.cache_hit
    n = len(out.scores)
    assert n >= 1 and out.mask_logits.shape == (n, 32, 32) and out.mask_logits.dtype == np.float16
    assert out.boxes_xyxy.shape == (n, 4) and out.points_xy.shape == (n, 2) and out.stability.shape == (n,)
    assert np.all(np.diff(out.scores) <= 0)
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(out.boxes_xyxy), torch.from_numpy(out.boxes_xyxy)).fill_diagonal_(0)
    assert float(iou.max()) <= 0.5
    small_batches = r.generate_masks(AutoRequest(iid, points_per_batch=7, **args))  # cached; other chunking
    assert small_batches.cache_hit and r.counters.vision_calls == 1
    np.testing.assert_allclose(small_batches.scores, out.scores, atol=1e-5)
    np.testing.assert_array_equal(small_batches.boxes_xyxy, out.boxes_xyxy)
    none = r.generate_masks(AutoRequest(iid, **{**args, "pred_iou_thresh": 1.0}))
    assert none.mask_logits.shape == (0, 32, 32) and none.boxes_xyxy.shape == (0, 4)
    with pytest.raises(InvalidInput):
        r.generate_masks(AutoRequest(iid, points_per_side=0))


def test_embedding_cache_resize_evicts_oldest():
    c = EmbeddingCache(100)
    for k in "abc":
        c.put(k, k, 30)
    assert c.resize(65) == ["a"] and c.keys() == ["b", "c"] and c.stats().max_bytes == 65
    assert c.resize(35) == ["b"] and c.put("d", "d", 30) == ["c"] and c.nbytes == 30


def test_embedding_cache_discard_drops_one_key_without_counting_an_eviction():
    c = EmbeddingCache(100)
    for k in "abc":
        c.put(k, k, 30)
    assert c.discard("b") and not c.discard("b") and not c.discard("zz")
    stats = c.stats()
    assert c.keys() == ["a", "c"] and c.nbytes == 60 and (stats.entries, stats.bytes, stats.evictions) == (2, 60, 0)
    assert c.get("b") is None and c.put("d", "d", 40) == []  # the freed bytes are usable


def test_bfloat16_path_runs_end_to_end(tiny_model_dir):
    """The GPU dtype (bf16) on CPU: points/boxes stay fp32 until normalised, mask inputs are cast, outputs are
    fp16/fp32 numpy, and the cache accounts the halved embedding size."""
    r = ClickRunner.from_config(ModelConfig(model_id=tiny_model_dir, dtype="bfloat16"), ClickConfig(cache_bytes=10**7))
    first = r.segment_batch([with_pixels(7, [pts([10, 20], [50, 40], labels=[1, 0], box=[5, 5, 60, 70])], multimask=True)])[0]
    assert first.objects[0].mask_logits.dtype == np.float16 and first.objects[0].scores.dtype == np.float32
    again = r.segment_batch([ClickRequest(image(7)[0], (pts([10, 20], mask=first.objects[0].mask_logits[0]),))])[0]
    assert isinstance(again, ClickResponse) and again.cache_hit
    assert r.cache.nbytes == TINY_EMBEDDING_BYTES // 2
    auto = r.generate_masks(AutoRequest(image(7)[0], points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    assert auto.mask_logits.dtype == np.float16 and len(auto.scores) >= 1
