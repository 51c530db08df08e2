"""VideoRunner / VideoSession (serve_app.model.video) on the tiny checkpoint: equivalence with transformers' own
video paths, frame order, ids, formats, clicks + refinement, remove/reset, cancellation, save/load, pruning,
lazy frames. Asserts formats, shapes, invariants and determinism, never mask quality (random weights).

The tiny tracker is made to "see" objects (SAM3_VIDEO.md pitfall 5: object-score bias + 10) and the detector
thresholds are 0 (pitfall 6), so every test has objects to track."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.config import ModelConfig
from serve_app.errors import InvalidInput, NotFound
from serve_app.model.video import NO_OBJ_LOGIT, VideoRunner
from serve_app.model.video_types import (
    FrameSource,
    SessionIncompatible,
    VideoFrameResult,
    VideoObjectPrompt,
    pack_session_checkpoint,
    read_session_header,
)

H, W = 48, 64
M = 32  # tiny model mask size


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    # transformers' own per-object tracker loop: these tests compare with transformers' reference paths bit for
    # bit (the batched tracker, the default, is compared with this loop in test_video_batching.py)
    r = VideoRunner.from_config(ModelConfig(model_id=tiny_model_dir, device="cpu"), score_threshold_detection=0.0,
                                new_det_thresh=0.0, max_num_objects=3, hotstart_delay=0, batch_objects=False)
    with torch.no_grad():  # pitfall 5: else the random tracker reports "no object" (masks all -1024)
        r.model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += 10
    return r


def make_frames(n=12, h=H, w=W) -> np.ndarray:
    """A red disc moving right and a blue square moving down on grey."""
    yy, xx = np.mgrid[:h, :w]
    out = np.full((n, h, w, 3), 128, np.uint8)
    for t in range(n):
        out[t][(xx - (8 + 3 * t)) ** 2 + (yy - 20) ** 2 <= 49] = (220, 30, 30)
        out[t][(xx >= 40) & (xx < 52) & (yy >= 4 + 2 * t) & (yy < 16 + 2 * t)] = (30, 30, 220)
    return out


class CountingSource:
    """A FrameSource over in-memory frames that records every get_frame call."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames
        self.calls: list[int] = []

    def get_frame(self, i: int) -> np.ndarray:
        self.calls.append(i)
        return self.frames[i]

    def source(self) -> FrameSource:
        return FrameSource(len(self.frames), self.frames.shape[1], self.frames.shape[2], self.get_frame)


FRAMES = make_frames()
SRC = FrameSource.from_array(FRAMES)


def check_format(r: VideoFrameResult, frame_index: int | None = None):
    n = len(r.object_ids)
    assert r.object_ids.dtype == np.int64 and r.object_ids.shape == (n,)
    assert list(r.object_ids) == sorted(set(r.object_ids.tolist()))
    assert r.scores.dtype == np.float32 and r.scores.shape == (n,)
    assert ((r.scores >= 0) & (r.scores <= 1)).all()
    assert r.boxes_xyxy.dtype == np.float32 and r.boxes_xyxy.shape == (n, 4)
    if n:
        b = r.boxes_xyxy
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert b.min() >= 0 and (b[:, 2] <= W - 1).all() and (b[:, 3] <= H - 1).all()
    assert r.mask_logits.dtype == np.float16 and r.mask_logits.shape == (n, M, M)
    if frame_index is not None:
        assert r.frame_index == frame_index
    for text, ids in r.prompt_to_obj_ids.items():
        assert isinstance(text, str) and set(ids) <= set(r.object_ids.tolist())


def same(a: VideoFrameResult, b: VideoFrameResult) -> bool:
    return (a.frame_index == b.frame_index and np.array_equal(a.object_ids, b.object_ids)
            and np.array_equal(a.scores, b.scores) and np.array_equal(a.boxes_xyxy, b.boxes_xyxy)
            and np.array_equal(a.mask_logits, b.mask_logits) and a.prompt_to_obj_ids == b.prompt_to_obj_ids)


def reference_text(runner, frames, text, start, hotstart=None):
    """transformers' own path: in-memory session, propagate_in_video_iterator forward then reverse (Meta's
    "both"), postprocess_outputs per frame. Returns [(raw output, postprocessed)]."""
    proc, model = runner.processor, runner.model
    ref = proc.init_video_session(video=frames, inference_device="cpu", video_storage_device="cpu",
                                  dtype=torch.float32)
    proc.add_text_prompt(ref, text)
    out = []
    for reverse in (False, True):
        for o in model.propagate_in_video_iterator(ref, start_frame_idx=start, reverse=reverse):
            out.append((o, proc.postprocess_outputs(ref, o)))
    return out


def assert_matches_reference(mine: VideoFrameResult, raw, pp):
    """ids, scores, boxes exactly; low-res masks = the raw logits except where the non-overlap rule took a
    contested pixel away (set to NO_OBJ_LOGIT, and another object keeps it)."""
    assert mine.frame_index == raw.frame_idx
    assert np.array_equal(mine.object_ids, pp["object_ids"].numpy())
    assert np.array_equal(mine.scores, pp["scores"].numpy().astype(np.float32))
    assert np.array_equal(mine.boxes_xyxy, pp["boxes"].numpy().astype(np.float32))
    assert mine.prompt_to_obj_ids == pp["prompt_to_obj_ids"]
    if not len(mine.object_ids):
        return
    ref = np.stack([raw.obj_id_to_mask[int(i)][0].numpy() for i in mine.object_ids]).astype(np.float16)
    ours = mine.mask_logits
    changed = ours != ref
    assert (ref[changed] > 0).all() and (ours[changed] == NO_OBJ_LOGIT).all()
    positive = ours > 0
    assert positive.sum(axis=0).max() <= 1  # one prompt: no two objects share a low-res pixel
    assert (positive.any(axis=0)[changed.any(axis=0)]).all()  # a taken pixel is kept by another object


# ---------------------------------------------------------------------------------------------------------
# text


def test_info_health_and_counters(runner):
    assert runner.info.mask_size == M and runner.info.image_size == 112
    assert runner.info.device == "cpu" and runner.info.dtype == "float32"
    assert runner.info.hotstart_delay == 0 and runner.info.max_num_objects == 3
    assert runner.keep_frames == 16
    runner.check_health()
    runner.debug_reset()
    s = runner.new_session(SRC)
    s.add_text(0, "red")
    list(s.propagate(0, "forward", max_frames=2))
    assert runner.debug_stats() == s.counters.snapshot() == {
        "frames_processed": 3, "detector_calls": 3, "tracker_calls": 3, "vision_calls": 3, "frames_decoded": 3}


def test_text_both_from_middle_matches_transformers(runner):
    s = runner.new_session(SRC)
    first = s.add_text(5, "red")
    check_format(first, 5)
    assert first.prompt_to_obj_ids and set(first.prompt_to_obj_ids) == {"red"}
    results = list(s.propagate(5, "both"))
    assert [r.frame_index for r in results] == [5, 6, 7, 8, 9, 10, 11, 4, 3, 2, 1, 0]
    assert same(results[0], first)  # frame 5 is add_text's step, not run twice
    assert s.counters.frames_processed == 12 and s.counters.detector_calls == 12
    ids = {tuple(r.object_ids.tolist()) for r in results}
    assert len(ids) == 1 and len(next(iter(ids))) == 3  # stable ids on every frame
    for r in results:
        check_format(r)

    reference = reference_text(runner, FRAMES, "red", 5)
    assert [o.frame_idx for o, _ in reference] == [r.frame_index for r in results]
    for mine, (raw, pp) in zip(results, reference):
        assert_matches_reference(mine, raw, pp)

    again = runner.new_session(SRC)  # deterministic
    again.add_text(5, "red")
    assert all(same(a, b) for a, b in zip(results, again.propagate(5, "both")))


def test_hotstart_buffering_matches_transformers(runner, monkeypatch):
    monkeypatch.setattr(runner.model, "hotstart_delay", 4)
    s = runner.new_session(SRC)
    s.add_text(3, "red")
    results = list(s.propagate(3, "both"))
    assert [r.frame_index for r in results] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 1, 0]
    for mine, (raw, pp) in zip(results, reference_text(runner, FRAMES, "red", 3)):
        assert_matches_reference(mine, raw, pp)


def test_user_objects_survive_detector_heuristics(runner, monkeypatch):
    """A clicked object never matches a detection: transformers' hotstart rule would remove it as "unmatched"
    (here within 2 frames, in the backward pass); user-prompted objects are protected from it."""
    monkeypatch.setattr(runner.model, "hotstart_delay", 4)
    monkeypatch.setattr(runner.model, "hotstart_unmatch_thresh", 2)
    s = runner.new_session(SRC)
    (clicked,) = s.add_clicks(3, None, [[50, 10]], [1]).prompted_obj_ids
    s.add_text(3, "red")
    results = list(s.propagate(3, "both"))
    assert len(results) == 12 and all(clicked in r.object_ids for r in results)


def test_detections_never_recondition_user_prompted_objects(runner):
    """The reconditioning guard: a high-confidence detection re-conditions a tracked object (transformers'
    every-16th-frame rule) unless the user prompted that object within 16 frames."""
    s = runner.new_session(SRC)
    s.add_clicks(3, 5, [[50, 10]], [1])
    hf = s.inference_session
    kwargs = dict(det_out={"mask": torch.ones(1, M, M)}, trk_masks=torch.ones(1, M, M),
                  trk_id_to_max_iou_high_conf_det={5: 0}, tracker_obj_scores_global=torch.tensor([10.0]))
    prepare = runner.model._prepare_recondition_masks
    assert prepare(inference_session=hf, frame_idx=16, **kwargs)[1] == set()  # 13 frames from the click
    assert prepare(inference_session=hf, frame_idx=32, **kwargs)[1] == {5}  # far from it: transformers' rule


def test_directions_and_max_frames(runner):
    s = runner.new_session(SRC)
    s.add_text(6, "red")
    assert [r.frame_index for r in s.propagate(6, "forward", max_frames=2)] == [6, 7, 8]
    assert [r.frame_index for r in s.propagate(6, "backward", max_frames=2)] == [6, 5, 4]
    assert [r.frame_index for r in s.propagate(6, "both", max_frames=2)] == [6, 7, 8, 5, 4]
    assert [r.frame_index for r in s.propagate(11, "forward")] == [11]
    assert [r.frame_index for r in s.propagate(0, "backward")] == [0]


def test_several_prompts(runner):
    s = runner.new_session(SRC)
    s.add_text(0, "red")
    r = s.add_text(0, "blue car")
    assert s.prompts == ["red", "blue car"]
    check_format(r, 0)
    for res in s.propagate(0, "forward", max_frames=3):
        check_format(res)
        grouped = [i for ids in res.prompt_to_obj_ids.values() for i in ids]
        assert sorted(grouped) == res.object_ids.tolist()  # text objects only: each in exactly one prompt
    assert s.counters.detector_calls == 1 + 2 + 2 * 3  # one detector pass per prompt per frame step


# ---------------------------------------------------------------------------------------------------------
# clicks


def test_clicks_only_matches_sam3_tracker_video(runner, tiny_model_dir):
    """No text prompt: tracker-only steps on the Sam3Video session == Sam3TrackerVideoModel's own path."""
    from transformers import Sam3TrackerVideoModel

    tm = Sam3TrackerVideoModel.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        tm.mask_decoder.pred_obj_score_head.proj_out.bias += 10
    tp = runner.tracker_processor
    ts = tp.init_video_session(video=FRAMES, inference_device="cpu", dtype=torch.float32)
    tp.add_inputs_to_inference_session(ts, frame_idx=3, obj_ids=0, input_points=[[[[14, 20]]]], input_labels=[[[1]]])
    tm(inference_session=ts, frame_idx=3)
    tp.add_inputs_to_inference_session(ts, frame_idx=3, obj_ids=7, input_boxes=[[[40, 8, 52, 20]]])
    tm(inference_session=ts, frame_idx=3)
    ref = {o.frame_idx: o for rev in (False, True) for o in tm.propagate_in_video_iterator(ts, 3, reverse=rev)}

    s = runner.new_session(SRC)
    r0 = s.add_clicks(3, 0, [[14, 20]], [1])
    r7 = s.add_clicks(3, 7, None, None, box_xyxy=[40, 8, 52, 20])
    assert r0.prompted_obj_ids == [0] and r7.prompted_obj_ids == [7]
    results = list(s.propagate(3, "both"))
    assert [r.frame_index for r in results] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 1, 0]
    assert s.counters.detector_calls == 0
    for r in results:
        check_format(r)
        assert r.object_ids.tolist() == [0, 7] and r.prompt_to_obj_ids == {}
        o = ref[r.frame_index]
        assert np.array_equal(r.mask_logits, o.pred_masks[:, 0].numpy().astype(np.float16))
        np.testing.assert_allclose(r.scores, o.object_score_logits.sigmoid().reshape(-1).numpy(), rtol=0, atol=1e-6)


def test_two_objects_refinement_survives_repropagation(runner):
    s = runner.new_session(SRC)
    r = s.add_objects(3, [VideoObjectPrompt(None, np.array([[14, 20]], np.float32), np.array([1])),
                          VideoObjectPrompt(None, box_xyxy=np.array([40, 8, 52, 20], np.float32))])
    assert r.prompted_obj_ids == [0, 1] and r.object_ids.tolist() == [0, 1]
    check_format(r, 3)
    before = {x.frame_index: x for x in s.propagate(3, "forward")}
    assert sorted(before) == list(range(3, 12))
    assert s.counters.tracker_calls == 1 + 9

    refined = s.add_clicks(8, 0, [[30, 30]], [0])  # a correction on a tracked frame
    assert refined.prompted_obj_ids == [0]
    pre = before[8].mask_logits[0].astype(np.float32)
    post = refined.mask_logits[0].astype(np.float32)
    assert np.abs(post - pre).max() > 0  # the click changed the mask (slightly: random weights)
    hf = s.inference_session
    assert 8 in hf.output_dict_per_obj[hf.obj_id_to_idx(0)]["cond_frame_outputs"]

    after = {x.frame_index: x for x in s.propagate(3, "forward")}
    assert np.array_equal(after[8].mask_logits[0], refined.mask_logits[0])  # the correction survived
    assert after[8].object_ids.tolist() == [0, 1]

    # more clicks on the same frame accumulate; clear_old_points replaces them
    idx = hf.obj_id_to_idx(0)
    s.add_clicks(8, 0, [[10, 10]], [1])
    assert hf.point_inputs_per_obj[idx][8]["point_labels"].shape[-1] == 2
    s.add_clicks(8, 0, [[10, 10]], [1], clear_old_points=True)
    assert hf.point_inputs_per_obj[idx][8]["point_labels"].shape[-1] == 1


def test_mask_prompt(runner):
    s = runner.new_session(SRC)
    mask = np.zeros((H, W), bool)
    mask[10:30, 5:25] = True
    r = s.add_mask(2, 4, mask)
    assert r.prompted_obj_ids == [4] and r.object_ids.tolist() == [4]
    assert tuple(r.boxes_xyxy[0]) == (5, 10, 24, 29)  # the mask itself is the output on its frame
    results = list(s.propagate(2, "forward", max_frames=3))
    assert [x.frame_index for x in results] == [2, 3, 4, 5]
    assert same(results[0], r)
    with pytest.raises(InvalidInput) as e:
        s.add_mask(2, 4, np.zeros((H + 1, W), bool))
    assert e.value.code == "invalid_mask"


def test_click_refines_text_detected_object(runner):
    s = runner.new_session(SRC)
    s.add_text(2, "red")
    first = list(s.propagate(2, "forward", max_frames=4))
    target = int(first[2].object_ids[0])  # a detected object, tracked on frame 4
    r = s.add_clicks(4, target, [[20, 20]], [1])
    assert r.prompted_obj_ids == [target] and target in r.object_ids
    assert target in r.prompt_to_obj_ids["red"]  # still the text prompt's object
    hf = s.inference_session
    assert 4 in hf.output_dict_per_obj[hf.obj_id_to_idx(target)]["cond_frame_outputs"]
    j = r.object_ids.tolist().index(target)
    after = {x.frame_index: x for x in s.propagate(2, "forward", max_frames=4)}
    k = after[4].object_ids.tolist().index(target)
    assert np.array_equal(after[4].mask_logits[k], r.mask_logits[j])
    # the session is full (max_num_objects=3): a new object needs room
    with pytest.raises(InvalidInput) as e:
        s.add_clicks(4, None, [[50, 10]], [1])
    assert e.value.code == "too_many_objects"
    s.remove_object(int(first[2].object_ids[-1]))
    new = s.add_clicks(4, None, [[50, 10]], [1])
    (new_id,) = new.prompted_obj_ids
    assert new_id > max(first[-1].object_ids)  # never an id the detector used
    assert new_id not in sum(new.prompt_to_obj_ids.values(), [])  # clicked objects belong to no prompt
    for x in s.propagate(4, "forward", max_frames=3):
        check_format(x)
        assert new_id in x.object_ids


# ---------------------------------------------------------------------------------------------------------
# remove, reset, errors


def test_remove_reset_and_errors(runner):
    s = runner.new_session(SRC)
    s.add_text(0, "red")
    list(s.propagate(0, "forward", max_frames=3))
    victim = s.object_ids[1]
    s.remove_object(victim)
    assert victim not in s.object_ids
    later = list(s.propagate(4, "forward"))
    assert later and all(victim not in r.object_ids for r in later)
    with pytest.raises(NotFound) as e:
        s.remove_object(999)
    assert e.value.code == "object_not_found" and e.value.status_code == 404

    clicked = s.add_clicks(5, None, [[10, 10]], [1]).prompted_obj_ids[0]
    s.remove_object(clicked)
    assert clicked not in s.object_ids

    decoded = s.counters.frames_decoded
    s.reset()
    assert s.object_ids == [] and s.prompts == []
    with pytest.raises(InvalidInput) as e:
        next(iter(s.propagate(0)))
    assert e.value.code == "nothing_to_propagate"
    again = s.add_text(11, "red")  # frame 11 is still in the frame LRU: not decoded again
    assert s.counters.frames_decoded == decoded
    fresh = runner.new_session(SRC).add_text(11, "red")
    assert same(again, fresh)  # reset == a new session (ids restart)


def test_invalid_inputs(runner):
    s = runner.new_session(SRC)
    cases = [
        (lambda: s.add_text(12, "red"), "frame_out_of_range"),
        (lambda: s.add_text(-1, "red"), "frame_out_of_range"),
        (lambda: s.add_text(0, "  "), "empty_text"),
        (lambda: s.add_clicks(0, None, [[W + 1, 5]], [1]), "point_outside_image"),
        (lambda: s.add_clicks(0, None, [[5, 5]], [1, 0]), "point_labels_mismatch"),
        (lambda: s.add_clicks(0, None, [[5, 5]], [2]), "invalid_point_labels"),
        (lambda: s.add_clicks(0, None, None, None, box_xyxy=[10, 10, 5, 20]), "invalid_box"),
        (lambda: s.add_clicks(0, -3, [[5, 5]], [1]), "invalid_object_id"),
        (lambda: s.add_clicks(0, None, None, None), "empty_object"),
        (lambda: s.propagate(0, "sideways"), "invalid_direction"),
        (lambda: s.propagate(0, "forward", max_frames=-1), "invalid_max_frames"),
    ]
    for call, code in cases:
        with pytest.raises(InvalidInput) as e:
            call()
        assert e.value.code == code
    assert s.object_ids == [] and s.counters.frames_processed == 0


# ---------------------------------------------------------------------------------------------------------
# cancellation, save/load, memory, lazy frames


def test_cancellation(runner):
    s = runner.new_session(SRC)
    s.add_text(0, "red")
    yielded = []
    results = s.propagate(0, "forward", should_stop=lambda: len(yielded) >= 3)
    for r in results:
        yielded.append(r.frame_index)
    assert yielded == [0, 1, 2]
    assert s.counters.frames_processed == 3  # frame 0 by add_text, 1 and 2 by propagate; frame 3 never ran
    assert list(results) == [] and s.counters.frames_processed == 3


def test_chunks_restored_from_saves_match_one_run(runner):
    """What a pcs_video job relies on to resume (pipelines/video_jobs.py): forward tracking in chunks, each from
    the state the previous chunk saved (add_text on the scope's first frame, save, then save after each
    chunk), gives exactly the frames of one uninterrupted propagation, whichever chunk boundary it resumes at."""
    whole = runner.new_session(SRC)
    whole.add_text(2, "red")
    uninterrupted = list(whole.propagate(2, "forward"))
    assert [r.frame_index for r in uninterrupted] == list(range(2, 12))

    s = runner.new_session(SRC)
    s.add_text(2, "red")
    data = s.save()
    chunked: list[VideoFrameResult] = []
    for start in (2, 6, 10):  # chunks of 4 frames: 2..5, 6..9, 10..11
        s = runner.load_session(data, SRC)  # a new attempt: the state of the last finished chunk
        chunked += s.propagate(start, "forward", max_frames=min(3, 11 - start))
        data = s.save()
    assert [r.frame_index for r in chunked] == list(range(2, 12))
    assert all(same(a, b) for a, b in zip(chunked, uninterrupted))
    assert any(len(r.object_ids) for r in chunked)  # not vacuous: objects were tracked


def test_save_load_continues_identically(runner):
    whole = runner.new_session(SRC)
    whole.add_clicks(0, None, [[50, 10]], [1])  # first: the text prompt then fills max_num_objects
    whole.add_text(0, "red")
    uninterrupted = list(whole.propagate(0, "forward"))

    s = runner.new_session(SRC)
    s.add_clicks(0, None, [[50, 10]], [1])
    s.add_text(0, "red")
    head = list(s.propagate(0, "forward", max_frames=5))
    data = s.save()
    header, _ = read_session_header(data)
    assert header["model_id"] == runner.model_id and header["num_frames"] == 12
    restored = runner.load_session(data, SRC)
    assert restored.object_ids == s.object_ids and restored.prompts == ["red"]
    tail = list(restored.propagate(6, "forward"))
    assert all(same(a, b) for a, b in zip(head + tail, uninterrupted))
    assert len(head + tail) == 12
    # the live session is untouched by save and continues the same way
    assert all(same(a, b) for a, b in zip(s.propagate(6, "forward"), uninterrupted[6:]))

    # a checkpoint saved right after add_text keeps add_text's step for the next propagate
    t = runner.new_session(SRC)
    t.add_text(0, "red")
    loaded = runner.load_session(t.save(), SRC)
    ref = runner.new_session(SRC)
    ref.add_text(0, "red")
    pairs = zip(loaded.propagate(0, "forward", max_frames=3), ref.propagate(0, "forward", max_frames=3))
    assert all(same(a, b) for a, b in pairs)
    assert loaded.counters.frames_processed == 3  # frames 1..3: frame 0 came with the checkpoint


def test_load_rejects_mismatches(runner):
    s = runner.new_session(SRC)
    s.add_text(0, "red")
    data = s.save()
    header, offset = read_session_header(data)
    for key, value in [("transformers", "0.0.1"), ("model_id", "facebook/sam3"), ("version", 99),
                       ("dtype", "bfloat16"), ("format", "other")]:
        bad = pack_session_checkpoint({**header, key: value}, data[offset:])
        with pytest.raises(SessionIncompatible) as e:
            runner.load_session(bad, SRC)
        assert key in e.value.message and e.value.code == "session_incompatible"
    with pytest.raises(SessionIncompatible):
        runner.load_session(data, FrameSource.from_array(FRAMES[:10]))
    with pytest.raises(SessionIncompatible):
        runner.load_session(b"not a checkpoint", SRC)


def test_pruning_keeps_memory_flat_and_results_equal(runner):
    frames = make_frames(24)
    src = FrameSource.from_array(frames)
    sizes, results = {}, {}
    for prune in (True, False):
        s = runner.new_session(src, prune=prune)
        s.add_clicks(0, None, [[50, 10]], [1])
        s.add_text(0, "red")
        sizes[prune], results[prune] = [], []
        for r in s.propagate(0, "forward"):
            results[prune].append(r)
            sizes[prune].append(s.state_nbytes())
    assert all(same(a, b) for a, b in zip(results[True], results[False]))
    pruned, full = sizes[True], sizes[False]
    window = runner.keep_frames + 1  # non-conditioning outputs kept behind the current frame
    assert pruned[-1] <= pruned[window] * 1.01  # flat once the window is full
    per_frame = (full[-1] - full[window]) / (len(full) - 1 - window)
    assert per_frame > 0 and full[-1] - pruned[-1] >= per_frame * (len(full) - 1 - window) * 0.9
    hf_outputs = s.inference_session.output_dict_per_obj  # unpruned: every frame kept
    assert all(len(od["non_cond_frame_outputs"]) + len(od["cond_frame_outputs"]) >= 23 for od in hf_outputs.values())


def test_lazy_frames(runner):
    counting = CountingSource(make_frames(24))
    s = runner.new_session(counting.source())
    assert counting.calls == [] and len(s.processed_frames) == 24
    s.add_text(10, "red")
    assert counting.calls == [10]
    seen = []
    for r in s.propagate(10, "both"):
        seen.append(r.frame_index)
        assert len(s.processed_frames.cached()) <= runner.frame_cache_size
    assert sorted(seen) == list(range(24))
    assert sorted(counting.calls) == list(range(24))  # each frame decoded once, on demand
    assert s.counters.frames_decoded == 24

    bad = FrameSource(3, H, W, lambda i: np.zeros((H, W + 1, 3), np.uint8))
    with pytest.raises(ValueError):
        runner.new_session(bad).add_text(0, "red")


def test_bfloat16_session(tiny_model_dir):
    """The GPU dtype path (bf16 weights, frames and state), run on the CPU: text + clicks + masks + save/load."""
    r = VideoRunner.from_config(ModelConfig(model_id=tiny_model_dir, device="cpu", dtype="bfloat16"),
                                score_threshold_detection=0.0, new_det_thresh=0.0, max_num_objects=3, hotstart_delay=0)
    with torch.no_grad():
        r.model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += 10
    s = r.new_session(FrameSource.from_array(FRAMES[:6]))
    s.add_clicks(2, None, [[10, 10]], [1])
    s.add_mask(2, None, np.ones((H, W), bool))
    check_format(s.add_text(2, "red"), 2)
    results = list(s.propagate(2, "both"))
    assert [x.frame_index for x in results] == [2, 3, 4, 5, 1, 0]
    for x in results:
        check_format(x)
        assert len(x.object_ids) == 3
    assert s.processed_frames[0].dtype == torch.bfloat16
    s.add_clicks(4, 0, [[30, 30]], [0])
    restored = r.load_session(s.save(), FrameSource.from_array(FRAMES[:6]))
    assert all(same(a, b) for a, b in zip(restored.propagate(0, "forward"), s.propagate(0, "forward")))
