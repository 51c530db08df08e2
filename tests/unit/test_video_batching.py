"""serve_app.model.video_batching: the batched tracker step equals transformers' per-object loop.

Each scenario runs twice on the tiny video checkpoint (tracker object-score bias +10), with
VideoRunner.batch_objects off (transformers' loop) and on (batched): per-frame ids, boxes and prompt groups are
equal, scores and mask logits equal within float rounding (batched matmuls may sum in another order: the
outputs are not bit-identical), the stored per-object state (memories, pointers, masks, tracked frames) has the
same structure and values within rounding, state_nbytes is equal, and a saved checkpoint continues equally.
Call counts prove the batching: N objects with the same memory structure make ONE mask-decoder call per frame
instead of N."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.config import ModelConfig
from serve_app.model import video_batching
from serve_app.model.video import VideoRunner
from serve_app.model.video_types import FrameSource, VideoFrameResult, VideoObjectPrompt

H, W, T = 48, 64, 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runner(tiny_video_model_dir):
    return VideoRunner.from_config(ModelConfig(model_id=tiny_video_model_dir, device="cpu"),
                                   score_threshold_detection=0.0, new_det_thresh=0.0, max_num_objects=8,
                                   hotstart_delay=0)


def make_frames(n=T, h=H, w=W) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    out = np.full((n, h, w, 3), 128, np.uint8)
    for t in range(n):
        out[t][(xx - (8 + 3 * t)) ** 2 + (yy - 20) ** 2 <= 49] = (220, 30, 30)
        out[t][(xx >= 40) & (xx < 52) & (yy >= 4 + 2 * t) & (yy < 16 + 2 * t)] = (30, 30, 220)
    return out


SRC = FrameSource.from_array(make_frames())
CLICKS = [(14, 20), (46, 10), (30, 40), (5, 5), (58, 30)]


def clicks(n: int, first_id: int = 0) -> list[VideoObjectPrompt]:
    return [VideoObjectPrompt(first_id + i, np.array([CLICKS[i]], np.float32), np.array([1])) for i in range(n)]


def assert_same_results(a: list[VideoFrameResult], b: list[VideoFrameResult], exact: bool = False) -> None:
    assert [r.frame_index for r in a] == [r.frame_index for r in b]
    for x, y in zip(a, b):
        assert x.object_ids.tolist() == y.object_ids.tolist(), x.frame_index
        assert x.prompt_to_obj_ids == y.prompt_to_obj_ids
        assert np.array_equal(x.boxes_xyxy, y.boxes_xyxy), x.frame_index
        if exact:
            assert np.array_equal(x.scores, y.scores) and np.array_equal(x.mask_logits, y.mask_logits)
        else:
            np.testing.assert_allclose(x.scores, y.scores, rtol=0, atol=1e-6)
            np.testing.assert_allclose(x.mask_logits.astype(np.float32), y.mask_logits.astype(np.float32),
                                       rtol=0, atol=1e-4)


def assert_same_state(sa, sb) -> None:
    """The stored per-object state of two transformers sessions: same frames and keys everywhere, tensors of the
    same shape and dtype, values within rounding (fp32: 1e-5; the bf16 memories: one bf16 step, 2**-7 relative, 1e-4 near 0)."""
    a, b = sa.inference_session, sb.inference_session
    assert a.obj_ids == b.obj_ids and a.frames_tracked_per_obj == b.frames_tracked_per_obj
    assert a.output_dict_per_obj.keys() == b.output_dict_per_obj.keys()
    for idx in a.output_dict_per_obj:
        for store in ("cond_frame_outputs", "non_cond_frame_outputs"):
            fa, fb = a.output_dict_per_obj[idx][store], b.output_dict_per_obj[idx][store]
            assert fa.keys() == fb.keys(), (idx, store)
            for f in fa:
                assert fa[f].keys() == fb[f].keys(), (idx, store, f)
                for k, x in fa[f].items():
                    y = fb[f][k]
                    assert x.shape == y.shape and x.dtype == y.dtype, (idx, f, k)
                    rtol, atol = (2 ** -7, 1e-4) if x.dtype == torch.bfloat16 else (1e-5, 1e-5)
                    torch.testing.assert_close(x.float(), y.float(), rtol=rtol, atol=atol)
    assert sa.state_nbytes() == sb.state_nbytes()


def both(runner, scenario):
    """scenario(session) -> results, run with batching off and on: ((results, session) off, (…) on)."""
    out = []
    for flag in (False, True):
        runner.batch_objects = flag
        try:
            s = runner.new_session(SRC, prune=False)
            out.append((scenario(s), s))
        finally:
            runner.batch_objects = False
    return out


@pytest.mark.parametrize("n", [1, 3, 5])
def test_clicks_forward_backward_and_checkpoint(runner, n):
    def scenario(s):
        first = s.add_objects(0, clicks(n))
        return [first] + list(s.propagate(1, "forward")) + list(s.propagate(T - 1, "backward"))

    (ra, sa), (rb, sb) = both(runner, scenario)
    assert [r.frame_index for r in ra] == list(range(T)) + list(range(T - 1, -1, -1))
    assert all(len(r.object_ids) == n for r in ra)  # every object is tracked on every frame
    assert_same_results(ra, rb, exact=(n == 1))  # one object: transformers' own call, bit for bit
    assert_same_state(sa, sb)

    # a checkpoint of each continues equally (loaded sessions keep the runner's flag)
    ca, cb = runner.load_session(sa.save(), SRC, prune=False), runner.load_session(sb.save(), SRC, prune=False)
    ra2 = list(ca.propagate(0, "forward"))
    runner.batch_objects = True
    try:
        rb2 = list(cb.propagate(0, "forward"))
    finally:
        runner.batch_objects = False
    assert_same_results(ra2, rb2, exact=(n == 1))
    assert_same_state(ca, cb)


def test_refinement_and_late_object_give_mixed_memory_structures(runner):
    """A refinement click on frame 4 (object 1 gets a second conditioning frame) and an object added on frame 3:
    the objects' memories differ in structure, so a frame step runs several groups; results stay equal."""
    def scenario(s):
        out = [s.add_objects(0, clicks(3))] + list(s.propagate(0, "forward"))
        out.append(s.add_clicks(4, 1, [[30, 30]], [0]))
        out.append(s.add_objects(3, clicks(2, first_id=5)))
        out += list(s.propagate(3, "both"))
        return out

    (ra, sa), (rb, sb) = both(runner, scenario)
    assert ra[-1].object_ids.tolist() == [0, 1, 2, 5, 6]
    assert_same_results(ra, rb)
    assert_same_state(sa, sb)


def _count_calls(runner, monkeypatch):
    """Counters of the tracker work: per-object transformers calls, batched group runs, mask decoder runs (with
    their batch sizes)."""
    tm = runner.model.tracker_model
    counts: dict[str, list] = {"single": [], "group": [], "decoder": []}
    single, group = tm._run_single_frame_inference, video_batching._run_group

    def counting_single(**kwargs):
        counts["single"].append(kwargs["obj_idx"])
        return single(**kwargs)

    def counting_group(tm_, s, frame_idx, members):
        counts["group"].append([m[0] for m in members])
        return group(tm_, s, frame_idx, members)

    monkeypatch.setattr(tm, "_run_single_frame_inference", counting_single)
    monkeypatch.setattr(video_batching, "_run_group", counting_group)
    hook = tm.mask_decoder.register_forward_hook(
        lambda mod, args, kwargs, out: counts["decoder"].append(kwargs["image_embeddings"].shape[0]), with_kwargs=True)
    return counts, hook


@pytest.mark.parametrize("n", [3, 5])
def test_one_call_per_frame_for_same_structure_objects(runner, monkeypatch, n):
    s = runner.new_session(SRC, prune=False)
    s.add_objects(0, clicks(n))
    counts, hook = _count_calls(runner, monkeypatch)
    try:
        runner.batch_objects = False
        list(s.propagate(1, "forward", max_frames=2))  # frames 1..3
        assert counts["single"] == list(range(n)) * 3 and counts["group"] == []
        assert counts["decoder"] == [1] * (n * 3)
        for c in counts.values():
            c.clear()
        runner.batch_objects = True
        list(s.propagate(4, "forward"))  # frames 4..7
        assert counts["single"] == [] and counts["group"] == [list(range(n))] * 4
        assert counts["decoder"] == [n] * 4  # ONE mask decoder run per frame, batch n
    finally:
        runner.batch_objects = False
        hook.remove()


def test_mixed_structures_group_and_fall_back(runner, monkeypatch):
    s = runner.new_session(SRC, prune=False)
    s.add_objects(0, clicks(3))
    list(s.propagate(0, "forward", max_frames=4))
    s.add_clicks(4, 1, [[30, 30]], [0])  # object 1: conditioning frames 0 and 4
    s.add_objects(3, clicks(1, first_id=5))  # object 5 (idx 3): conditioning frame 3 only
    counts, hook = _count_calls(runner, monkeypatch)
    try:
        runner.batch_objects = True
        list(s.propagate(5, "forward", max_frames=0))  # frame 5 only
        assert counts["group"] == [[0, 2]]  # objects 0 and 2 share a structure
        assert sorted(counts["single"]) == [1, 3]  # the others run alone, through transformers
        assert sorted(counts["decoder"]) == [1, 1, 2]
    finally:
        runner.batch_objects = False
        hook.remove()


def test_text_path_batches_and_matches(runner, monkeypatch):
    """Text prompt + a clicked object: Sam3VideoModel propagates its tracked objects through the batched tracker."""
    monkeypatch.setattr(runner.model, "max_num_objects", 3)

    def scenario(s):
        out = [s.add_clicks(2, None, [[50, 10]], [1]), s.add_text(2, "red")]
        return out + list(s.propagate(2, "both"))

    (ra, sa), (rb, sb) = both(runner, scenario)
    assert len(ra[-1].object_ids) >= 2
    assert_same_results(ra, rb)
    assert_same_state(sa, sb)

    counts, hook = _count_calls(runner, monkeypatch)
    try:
        runner.batch_objects = True
        list(sb.propagate(3, "forward", max_frames=0))
        assert counts["group"] and counts["single"] == []
    finally:
        runner.batch_objects = False
        hook.remove()


def test_outside_object_batching_the_tracker_is_transformers_loop(runner, monkeypatch):
    """install_batched_forward changes nothing for callers outside object_batching() (other sessions,
    transformers' own iterators on the same model)."""
    s = runner.new_session(SRC, prune=False)
    s.add_objects(0, clicks(3))
    s._ensure_features(1)
    counts, hook = _count_calls(runner, monkeypatch)
    try:
        with torch.inference_mode():
            runner.model.tracker_model(inference_session=s.inference_session, frame_idx=1)
        assert counts["single"] == [0, 1, 2] and counts["group"] == []
    finally:
        hook.remove()


def test_bfloat16_runner(tiny_video_model_dir, monkeypatch):
    """The GPU dtype path (bf16 weights, frames, state) on the CPU: clicks + text, batched == loop."""
    r = VideoRunner.from_config(ModelConfig(model_id=tiny_video_model_dir, device="cpu", dtype="bfloat16"),
                                score_threshold_detection=0.0, new_det_thresh=0.0, max_num_objects=4,
                                hotstart_delay=0)

    def scenario(s):
        out = [s.add_objects(0, clicks(3))] + list(s.propagate(1, "forward"))
        out.append(s.add_text(2, "red"))
        return out + list(s.propagate(2, "both", max_frames=3))

    counts, hook = _count_calls(r, monkeypatch)
    try:
        (ra, sa), (rb, sb) = both(r, scenario)
    finally:
        hook.remove()
    assert counts["group"]  # the batched run did batch
    assert len(ra[-1].object_ids) >= 3
    assert_same_results(ra, rb)
    assert sa.state_nbytes() == sb.state_nbytes()
