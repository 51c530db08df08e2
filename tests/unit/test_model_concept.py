"""ConceptRunner on the tiny checkpoint: parity with transformers' own path, batching equivalence,
encode-once, text cache, chunking, exemplar boxes. Asserts shapes/invariants, never mask quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.codecs.image_decode import resize_square
from serve_app.config import ConceptConfig, ModelConfig
from serve_app.errors import InvalidInput
from serve_app.model.concept import ConceptRunner
from serve_app.model.types import ConceptPrompt, ConceptRequest, ConceptResponse
from tests.helpers import rgb_image


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    return ConceptRunner.from_config(ModelConfig(model_id=tiny_model_dir), ConceptConfig(max_pairs_per_forward=3))


def make_request(seed=0, prompts=("car", "dog"), w=130, h=90, threshold=0.0, max_instances=100):
    img = rgb_image(w, h, seed)
    ps = tuple(p if isinstance(p, ConceptPrompt) else ConceptPrompt(p) for p in prompts)
    return ConceptRequest(resize_square(img, 112), (h, w), ps, threshold, max_instances)


def box_prompt(text=None):
    return ConceptPrompt(text, np.array([[0.5, 0.5, 0.3, 0.4], [0.2, 0.3, 0.1, 0.1]], np.float32), np.array([1, 0]))


def test_info_describes_the_checkpoint(runner, tiny_model_dir):
    assert runner.info.image_size == 112 and runner.info.mask_size == 32
    assert runner.info.device == "cpu" and runner.info.dtype == "float32"
    assert runner.info.model_id == tiny_model_dir


def test_matches_transformers_reference_path(runner, tiny_model_dir):
    """Same pixels + text through Sam3Processor/Sam3Model/post_process gives the same instances."""
    from transformers import Sam3Processor

    proc = Sam3Processor.from_pretrained(tiny_model_dir)
    req = make_request(prompts=("red car",))
    inputs = proc(text="red car", return_tensors="pt")
    pixels = torch.from_numpy(req.pixels).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.inference_mode():
        ref = runner.model(pixel_values=pixels, **inputs)
    ref_post = proc.post_process_instance_segmentation(ref, threshold=0.0, mask_threshold=0.5, target_sizes=[(90, 130)])[0]
    ours = runner.segment_batch([req])[0].results[0]
    order = ref_post["scores"].argsort(descending=True)
    np.testing.assert_allclose(ours.scores, ref_post["scores"][order].numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.boxes_xyxy, ref_post["boxes"][order].clamp(min=0).numpy().clip(max=[130, 90, 130, 90]), atol=1e-3)
    assert ours.mask_probs.shape == (len(order), 32, 32) and ours.mask_probs.dtype == np.float16


def test_outputs_are_sorted_thresholded_and_capped(runner):
    res = runner.segment_batch([make_request(threshold=0.0, max_instances=5)])[0].results
    for inst in res:
        assert len(inst.scores) == 5
        assert np.all(np.diff(inst.scores) <= 0)
        assert inst.boxes_xyxy.shape == (5, 4)
        assert np.all(inst.boxes_xyxy[:, [0, 2]] <= 130) and np.all(inst.boxes_xyxy[:, [1, 3]] <= 90)
        assert np.all(inst.boxes_xyxy >= 0)
    res = runner.segment_batch([make_request(threshold=0.999)])[0].results
    assert all(len(i.scores) == 0 and i.mask_probs.shape == (0, 32, 32) for i in res)


def test_kept_masks_are_bit_identical_to_sigmoid_then_gather_per_pair(runner, monkeypatch):
    """_kept_mask_probs gathers every kept mask of a detector call at once before the sigmoid: the float16
    probabilities equal the former per-pair path (sigmoid over all queries, gather, cast) bit for bit, for
    thresholds/caps that keep all, some and none of a pair's queries, across chunks (max_pairs_per_forward 3)."""
    outputs = []
    forward = runner.model.forward

    def capture(*args, **kwargs):
        out = forward(*args, **kwargs)
        outputs.append(out)
        return out

    monkeypatch.setattr(runner.model, "forward", capture)
    reqs = [make_request(0, ("car", "dog"), threshold=0.0, max_instances=7),
            make_request(1, ("cat", "tree"), threshold=0.999),
            make_request(2, ("house",), threshold=0.0, max_instances=100)]
    answers = runner.segment_batch(reqs)
    got = [inst.mask_probs for a in answers for inst in a.results]
    expected = []
    for out in outputs:  # one per chunk, pairs in request/prompt order
        scores = (out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid())
        for i in range(scores.shape[0]):
            req = reqs[[0, 0, 1, 1, 2][len(expected)]]
            keep = torch.nonzero(scores[i] > req.threshold).flatten()
            keep = keep[scores[i][keep].argsort(descending=True, stable=True)][: req.max_instances]
            expected.append(out.pred_masks.float().sigmoid()[i][keep].to(torch.float16).numpy())
    queries = outputs[0].pred_logits.shape[1]  # threshold 0 keeps every query (scores > 0)
    assert [m.shape[0] for m in got] == [7, 7, 0, 0, queries] == [m.shape[0] for m in expected]
    for ours, ref in zip(got, expected):
        assert ours.dtype == np.float16 and ours.tobytes() == ref.tobytes()


def test_batched_equals_unbatched_and_encodes_each_image_once(runner):
    reqs = [make_request(0, ("car", "dog")), make_request(1, ("cat", box_prompt())), make_request(2, (box_prompt("dog"),))]
    single = [runner.segment_batch([r])[0] for r in reqs]
    before = runner.counters.snapshot()
    batched = runner.segment_batch(reqs)
    after = runner.counters.snapshot()
    assert after["vision_calls"] - before["vision_calls"] == 1  # one vision pass for 3 images
    # 5 pairs: 3 text-only (chunks of 3 -> 1 call) + 2 with boxes (1 call)
    assert after["detector_calls"] - before["detector_calls"] == 2
    assert [b.batch_size for b in batched] == [3, 3, 3]
    for s, b in zip(single, batched):
        for x, y in zip(s.results, b.results):
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
            np.testing.assert_allclose(x.boxes_xyxy, y.boxes_xyxy, atol=1e-3)
            np.testing.assert_allclose(x.mask_probs.astype(np.float32), y.mask_probs.astype(np.float32), atol=2e-3)


def test_deterministic(runner):
    a = runner.segment_batch([make_request(3)])[0].results[0]
    b = runner.segment_batch([make_request(3)])[0].results[0]
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.mask_probs, b.mask_probs)


def test_text_embeddings_are_cached(runner):
    runner.segment_batch([make_request(prompts=("bicycle",))])
    calls = runner.counters.text_calls
    hits = runner.text_cache.hits
    runner.segment_batch([make_request(4, prompts=("bicycle",))])
    assert runner.counters.text_calls == calls  # no new text-encoder call
    assert runner.text_cache.hits == hits + 1


def test_box_prompts_change_the_result(runner):
    plain = runner.segment_batch([make_request(prompts=("dog",))])[0].results[0]
    boxed = runner.segment_batch([make_request(prompts=(box_prompt("dog"),))])[0].results[0]
    assert not np.allclose(plain.scores[:5], boxed.scores[:5])


def test_wrongly_sized_pixels_fail_only_their_own_request(runner):
    """The batch protocol: a bad request gets its InvalidInput as its answer; its neighbours still run."""
    bad = ConceptRequest(np.zeros((50, 50, 3), np.uint8), (50, 50), (ConceptPrompt("a"),))
    good = make_request(5, ("dog",))
    answer_bad, answer_good = runner.segment_batch([bad, good])
    assert isinstance(answer_bad, InvalidInput) and answer_bad.code == "invalid_pixels"
    assert "pixels must be uint8" in answer_bad.message
    assert isinstance(answer_good, ConceptResponse) and answer_good.batch_size == 1
    np.testing.assert_allclose(answer_good.results[0].scores, runner.segment_batch([good])[0].results[0].scores,
                               atol=1e-6)


def test_tiny_checkpoint_loads_as_every_sam3_class(tiny_model_dir):
    from transformers import Sam3Model, Sam3TrackerModel, Sam3TrackerVideoModel, Sam3VideoModel

    from serve_app.model.loading import TRACKER_KEY_MAPPING

    for cls, kwargs in [(Sam3Model, {}), (Sam3TrackerModel, {"key_mapping": TRACKER_KEY_MAPPING}),
                        (Sam3VideoModel, {}), (Sam3TrackerVideoModel, {"key_mapping": TRACKER_KEY_MAPPING})]:
        _, info = cls.from_pretrained(tiny_model_dir, output_loading_info=True, **kwargs)
        assert not info["missing_keys"], (cls.__name__, sorted(info["missing_keys"])[:3])


def test_tiny_checkpoint_is_reproducible(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from serve_app.devtools.tiny_model import main

    main([str(tmp_path / "again")])
    a = load_file(f"{tiny_model_dir}/model.safetensors")
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("detector_model.") for k in a) and any(k.startswith("tracker_model.") for k in a)


def test_missing_checkpoint_is_unavailable(tmp_path):
    from serve_app.errors import Unavailable

    with pytest.raises(Unavailable):
        ConceptRunner.from_config(ModelConfig(model_id=str(tmp_path / "nope"), local_files_only=True))
