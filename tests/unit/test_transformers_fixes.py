"""serve_app.model.transformers_fixes: the bounded mask IoU equals transformers' own, and is installed."""

from __future__ import annotations

import torch
from transformers.models.sam3_video import modeling_sam3_video

from serve_app.model import transformers_fixes


def reference_mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """transformers' formula, written out (the module attribute may already be patched in this process)."""
    n, h, w = pred.shape
    inter = (pred.view(n, 1, h * w) & gt.view(1, -1, h * w)).sum(dim=2).float()
    union = (pred.view(n, 1, h * w) | gt.view(1, -1, h * w)).sum(dim=2).float()
    return inter / union.clamp(min=1)


def test_bounded_mask_iou_equals_transformers_formula():
    g = torch.Generator().manual_seed(0)
    for n, m, h, w, density in ((7, 5, 32, 40, 0.3), (1, 1, 288, 288, 0.5), (12, 12, 64, 64, 0.02), (3, 4, 9, 11, 0.0)):
        pred = torch.rand(n, h, w, generator=g) < density
        gt = torch.rand(m, h, w, generator=g) < density
        pred[0, :3, :3] = True  # overlapping corners: some IoUs are neither 0 nor 1
        gt[0, :2, :4] = True
        got = transformers_fixes.bounded_mask_iou(pred, gt)
        want = reference_mask_iou(pred, gt)
        assert got.dtype == torch.float32 and got.shape == (n, m)
        assert torch.equal(got, want)
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    assert torch.equal(transformers_fixes.bounded_mask_iou(empty, empty), torch.zeros(2, 2))


def test_install_points_transformers_at_the_bounded_function():
    transformers_fixes.install()
    assert modeling_sam3_video.mask_iou is transformers_fixes.bounded_mask_iou
    masks = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.4
    assert torch.equal(modeling_sam3_video.mask_iou(masks, masks), reference_mask_iou(masks, masks))


# ------------------------------------------------------------------------- the sync-free Sam3VideoModel methods

import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
import video_syncs  # noqa: E402

from tests.unit.test_video_syncs import assert_identical  # noqa: E402

transformers_fixes.install()
ORIG = transformers_fixes.ORIGINALS
# another transformers version keeps its own methods (install() checks their source): nothing to compare then
needs_verified = pytest.mark.skipif(bool(transformers_fixes.SKIPPED), reason=f"transformers' "
                                    f"{sorted(transformers_fixes.SKIPPED)} differ from the verified source")


@needs_verified
def test_the_replacements_are_installed_only_over_the_verified_source(monkeypatch, caplog):
    cls = modeling_sam3_video.Sam3VideoModel
    name = "_associate_det_trk"
    assert getattr(cls, name) is transformers_fixes.fast_associate_det_trk  # this transformers is the verified one
    monkeypatch.setattr(cls, name, ORIG[name])
    monkeypatch.setitem(transformers_fixes.VERIFIED, name, "0" * 64)  # as if transformers had changed it
    monkeypatch.setattr(transformers_fixes, "SKIPPED", set())
    transformers_fixes.install()
    assert getattr(cls, name) is ORIG[name] and transformers_fixes.SKIPPED == {name}
    assert any("not the version its replacement was verified against" in r.getMessage() for r in caplog.records)
    assert cls._suppress_object_pw_area_shrinkage is transformers_fixes.fast_suppress_object_pw_area_shrinkage


@pytest.fixture(scope="module")
def model(tiny_video_model_dir):
    return video_syncs.build_runner(tiny_video_model_dir).model


def _logits(g: torch.Generator, n: int, h: int = 12, w: int = 14, density: float = 0.4) -> torch.Tensor:
    return torch.where(torch.rand(n, h, w, generator=g) < density, 1.0, -1.0) * torch.rand(n, h, w, generator=g)


def _assoc_cases():
    g = torch.Generator().manual_seed(3)
    for case in range(60):
        n, m = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        trk = _logits(g, m, density=0.1 + 0.8 * float(torch.rand(1, generator=g)))
        if case % 5 == 0:
            trk[0] = -1.0  # an empty track
        if case % 7 == 0 and m > 1:
            trk[1] = trk[0]  # duplicate tracks: argmax ties
        det = _logits(g, n)
        for d in range(min(n, m)):  # some detections close to a track: IoUs above the thresholds
            if float(torch.rand(1, generator=g)) < 0.6:
                det[d] = trk[d] + 0.3 * (torch.rand(trk[d].shape, generator=g) - 0.5)
        scores = torch.rand(n, generator=g)
        prompts = int(torch.randint(1, 3, (1,), generator=g))
        det_p = torch.randint(0, prompts, (n,), generator=g)
        trk_p = torch.randint(0, prompts, (m,), generator=g)
        ids = (torch.randperm(50, generator=g)[:m] + 1).tolist()
        yield det, scores, trk, ids, det_p, trk_p
    yield _logits(g, 3), torch.rand(3, generator=g), torch.zeros(0, 12, 14), [], torch.zeros(3, dtype=torch.long), \
        torch.zeros(0, dtype=torch.long)  # no tracks
    yield torch.zeros(0, 12, 14), torch.zeros(0), _logits(g, 2), [4, 9], torch.zeros(0, dtype=torch.long), \
        torch.zeros(2, dtype=torch.long)  # no detections


@needs_verified
def test_fast_association_equals_transformers_on_random_and_edge_cases():
    matched_any = high_any = 0
    for thresholds in ({"assoc_iou_thresh": 0.1, "trk_assoc_iou_thresh": 0.5, "new_det_thresh": 0.4,
                        "high_conf_thresh": 0.6, "high_iou_thresh": 0.4},
                       {"assoc_iou_thresh": 0.5, "trk_assoc_iou_thresh": 0.5, "new_det_thresh": 0.0,
                        "high_conf_thresh": 0.0, "high_iou_thresh": 0.0}):
        model = SimpleNamespace(**thresholds)
        for args in _assoc_cases():
            want = ORIG["_associate_det_trk"](model, *args)
            got = transformers_fixes.fast_associate_det_trk(model, *args)
            assert got == want, (thresholds, args[3])
            assert all(type(i) is int for i in got[1] + got[4] + list(got[3]))
            matched_any += any(got[2].values())
            high_any += bool(got[3])
    assert matched_any > 20 and high_any > 20  # the cases exercise matches and high-confidence pairs


@needs_verified
def test_fast_area_shrinkage_equals_transformers(model):
    g = torch.Generator().manual_seed(5)
    for prompt_ids in ([0, 0, 0, 0], [1, 0, 1, 0, 2], [7], [3, 3], None):
        n = 4 if prompt_ids is None else len(prompt_ids)
        masks = _logits(g, n, 16, 16, density=0.6).unsqueeze(1)
        want = ORIG["_suppress_object_pw_area_shrinkage"](model, masks.clone(), prompt_ids)
        got = transformers_fixes.fast_suppress_object_pw_area_shrinkage(model, masks.clone(), prompt_ids)
        assert got.dtype == want.dtype and torch.equal(got, want), prompt_ids
    with pytest.raises(ValueError):
        transformers_fixes.fast_suppress_object_pw_area_shrinkage(model, masks, [0])


@needs_verified
def test_fast_occlusion_suppression_equals_transformers(model, monkeypatch):
    monkeypatch.setattr(model, "suppress_overlapping_based_on_recent_occlusion_threshold", 0.1)
    g = torch.Generator().manual_seed(9)
    suppressed = 0
    for case in range(40):
        ids = [3, 8, 11, 20, 21][: 1 + case % 5]
        base = _logits(g, 1, 10, 10, density=0.7)
        masks = torch.cat([base + 0.2 * (torch.rand(1, 10, 10, generator=g) - 0.5) for _ in ids])  # (B,h,w)
        if case % 4 == 1:
            masks[0] = -1.0  # an occluded object
        last = {i: torch.tensor([int(torch.randint(-1, 6, (1,), generator=g))]) for i in ids if i % 2 == 0}
        session = SimpleNamespace(obj_ids=ids, obj_id_to_last_occluded=last,
                                  obj_id_to_prompt_id={i: (i % 3 if case % 3 else 0) for i in ids})
        removed = {ids[-1]} if case % 6 == 0 else set()
        meta_want: dict = {}
        meta_got: dict = {}
        want = ORIG["_suppress_overlapping_based_on_recent_occlusion"](model, session, 7, masks.clone(), meta_want,
                                                                        removed, bool(case % 2))
        got_in = masks.clone()
        got = transformers_fixes.fast_suppress_overlapping_based_on_recent_occlusion(
            model, session, 7, got_in, meta_got, removed, bool(case % 2))
        assert got is got_in and torch.equal(got, want), case
        assert meta_got.keys() == meta_want.keys()
        for i in ids:
            assert torch.equal(meta_got["obj_id_to_last_occluded"][i], meta_want["obj_id_to_last_occluded"][i])
        suppressed += int((want == -10).all(dim=(1, 2)).sum())
    assert suppressed > 5  # suppression really happened in some cases


@needs_verified
def test_a_text_propagation_is_identical_with_and_without_the_replacements(tiny_video_model_dir, monkeypatch):
    """Whole text-prompted propagations (association, occlusion suppression and area shrinkage all run): the
    results with transformers' own methods and with ours are byte-identical, and ours sync far less."""
    import importlib

    runner = video_syncs.build_runner(tiny_video_model_dir)
    fast_intervals, fast, fast_prompt = video_syncs.run_scenario(runner, "text", 5, keep_results=True)
    for name, fn in ORIG.items():
        module, class_name, _ = transformers_fixes._METHODS[name]
        monkeypatch.setattr(getattr(importlib.import_module(f"transformers.models.{module}"), class_name), name, fn)
    slow_intervals, slow, slow_prompt = video_syncs.run_scenario(runner, "text", 5, keep_results=True)
    for a, b in zip([fast_prompt, *fast], [slow_prompt, *slow], strict=True):
        assert_identical(a, b)
    assert sum(len(r.object_ids) for r in fast) > 0
    fast_syncs = video_syncs.summarize(fast_intervals)["steady_mean"]["syncs_transformers"]
    slow_syncs = video_syncs.summarize(slow_intervals)["steady_mean"]["syncs_transformers"]
    assert fast_syncs <= slow_syncs / 3, (fast_syncs, slow_syncs)


@needs_verified
def test_fast_multilevel_features_equal_transformers_with_the_shapes_on_the_host():
    from transformers.models.sam3 import modeling_sam3

    g = torch.Generator().manual_seed(11)
    feats = [torch.randn(2, 8, s, s + 1, generator=g) for s in (9, 5, 3)]
    pos = [torch.randn(2, 8, s, s + 1, generator=g) for s in (9, 5, 3)]
    want = ORIG["_prepare_multilevel_features"](None, feats, pos)
    got = transformers_fixes.fast_prepare_multilevel_features(None, feats, pos)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2].device.type == "cpu" and got[2].dtype == torch.long and got[2].tolist() == want[2].tolist()
    assert modeling_sam3.Sam3DetrEncoder._prepare_multilevel_features is transformers_fixes.fast_prepare_multilevel_features


@needs_verified
def test_concept_answers_are_identical_with_and_without_the_host_side_shapes(tiny_model_dir, monkeypatch):
    """The detector's box position bias (the only reader of the spatial shapes) gives the same instances."""
    import numpy as np
    from transformers.models.sam3 import modeling_sam3

    from serve_app.config import ModelConfig
    from serve_app.model.concept import ConceptRunner
    from tests.unit.test_model_concept import make_request

    runner = ConceptRunner.from_config(ModelConfig(model_id=tiny_model_dir))
    reqs = [make_request(0, ("car", "dog")), make_request(1, ("tree",))]
    fast = runner.segment_batch(reqs)
    monkeypatch.setattr(modeling_sam3.Sam3DetrEncoder, "_prepare_multilevel_features",
                        ORIG["_prepare_multilevel_features"])
    slow = runner.segment_batch(reqs)
    for a, b in zip(fast, slow, strict=True):
        for x, y in zip(a.results, b.results, strict=True):
            assert len(x.scores) > 0
            for name in ("scores", "boxes_xyxy", "mask_probs"):
                assert np.array_equal(getattr(x, name), getattr(y, name)), name
