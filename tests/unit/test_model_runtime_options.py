"""The GPU efficiency options of ModelConfig (attn_implementation, tf32, compile) and pinned host->device copies,
checked on the CPU with the tiny checkpoint: every option that changes how the model runs must leave its
outputs equal (within fp tolerance), and each runner's Placement reports what is in effect."""

from __future__ import annotations

import shutil

import numpy as np
import pydantic
import pytest
import torch

from serve_app.codecs.image_decode import resize_square
from serve_app.config import ClickConfig, ConceptConfig, ModelConfig
from serve_app.model.click import ClickRunner
from serve_app.model.concept import ConceptRunner
from serve_app.model.loading import Placement, apply_tf32, attention_implementations, resolve_placement
from serve_app.model.runtime import normalize_pixels, to_device
from serve_app.model.types import ClickObject, ClickRequest, ConceptPrompt, ConceptRequest
from tests.helpers import rgb_image

CPU = Placement(torch.device("cpu"), torch.float32)
CUDA = Placement(torch.device("cuda"), torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------
# config


def test_model_config_defaults():
    cfg = ModelConfig()
    assert (cfg.attn_implementation, cfg.tf32, cfg.compile) == ("auto", True, "off")


@pytest.mark.parametrize("field, value", [
    ("attn_implementation", "flash_attention_2"), ("attn_implementation", "flex_attention"),
    ("attn_implementation", None), ("compile", "on"), ("compile", True), ("compile", "inductor"),
    ("tf32", "maybe"), ("tf32", None),
])
def test_model_config_rejects_bad_runtime_options(field, value):
    with pytest.raises(pydantic.ValidationError, match=field):
        ModelConfig(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("attn_implementation", "sdpa"), ("attn_implementation", "eager"), ("compile", "default"),
    ("compile", "reduce-overhead"), ("compile", "max-autotune"), ("tf32", False),
])
def test_model_config_accepts_runtime_options(field, value):
    assert getattr(ModelConfig(**{field: value}), field) == value


# ---------------------------------------------------------------------------------------------------------
# pinned copies and TF32: decided by the placement, nothing changes on the CPU


def test_pinned_copies_are_decided_by_the_device():
    assert not CPU.pinned_copies and CUDA.pinned_copies
    assert CPU.describe()["pinned_copies"] is False and CUDA.describe()["pinned_copies"] is True


def test_normalize_pixels_on_cpu_is_the_reference_formula():
    pixels = [resize_square(rgb_image(130, 90, seed), 112) for seed in range(3)]
    out = normalize_pixels(pixels, CPU)
    ref = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert out.shape == (3, 3, 112, 112) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    t = torch.arange(6).reshape(2, 3)
    assert to_device(t, CPU) is t  # the CPU path is a plain .to(): no copy at all


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned path needs CUDA (CPU-only machine)")
def test_normalize_pixels_pinned_path_equals_cpu():
    pixels = [resize_square(rgb_image(130, 90, seed), 112) for seed in range(3)]
    gpu = Placement(torch.device("cuda"), torch.float32)
    assert gpu.pinned_copies
    torch.testing.assert_close(normalize_pixels(pixels, gpu).cpu(), normalize_pixels(pixels, CPU), rtol=0, atol=0)


def test_tf32_is_applied_only_on_cuda():
    assert resolve_placement(ModelConfig(device="cpu", tf32=True)).tf32 is False
    assert resolve_placement(ModelConfig(device="cuda", tf32=True)).tf32 is True  # no GPU needed to resolve
    assert resolve_placement(ModelConfig(device="cuda", tf32=False)).tf32 is False
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert apply_tf32(Placement(torch.device("cpu"), torch.float32, tf32=True)) is False
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        # the flags are plain process settings: setting them needs no GPU
        assert apply_tf32(Placement(torch.device("cuda"), torch.float32, tf32=True)) is True
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        assert apply_tf32(Placement(torch.device("cuda"), torch.float32, tf32=False)) is True
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------------------
# attention implementations: sdpa == eager


def concept_requests() -> list[ConceptRequest]:
    boxes = ConceptPrompt(None, np.array([[0.5, 0.5, 0.3, 0.4], [0.2, 0.3, 0.1, 0.1]], np.float32), np.array([1, 0]))
    out = []
    for seed, prompts in ((0, ("car", "dog")), (1, ("red shirt", boxes))):
        ps = tuple(p if isinstance(p, ConceptPrompt) else ConceptPrompt(p) for p in prompts)
        out.append(ConceptRequest(resize_square(rgb_image(130, 90, seed), 112), (90, 130), ps, 0.0, 100))
    return out


def click_requests() -> list[ClickRequest]:
    mask = np.linspace(-8, 8, 32 * 32, dtype=np.float32).reshape(32, 32).astype(np.float16)
    objects = (
        ClickObject(np.array([[30, 40], [100, 70]], np.float32), np.array([1, 0]), None, None),
        ClickObject(None, None, np.array([10, 10, 90, 60], np.float32), None),
        ClickObject(np.array([[60, 30]], np.float32), np.array([1]), None, mask),
    )
    return [ClickRequest(f"img{seed}", objects, resize_square(rgb_image(130, 90, seed), 112), (90, 130), multi)
            for seed, multi in ((0, True), (1, False))]


def assert_same_concepts(a, b, atol=1e-4):
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x.results, y.results, strict=True):
            assert len(u.scores) == len(v.scores) > 0
            np.testing.assert_allclose(u.scores, v.scores, atol=atol)
            np.testing.assert_allclose(u.boxes_xyxy, v.boxes_xyxy, atol=atol * 100)  # pixels
            np.testing.assert_allclose(u.mask_probs.astype(np.float32), v.mask_probs.astype(np.float32), atol=2e-3)


def assert_same_clicks(a, b, atol=1e-4):
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x.objects, y.objects, strict=True):
            np.testing.assert_allclose(u.scores, v.scores, atol=atol)
            np.testing.assert_allclose(u.object_score, v.object_score, atol=atol)
            np.testing.assert_allclose(u.mask_logits.astype(np.float32), v.mask_logits.astype(np.float32),
                                       atol=2e-2, rtol=1e-3)  # float16 logits


def concept_runner(model_dir: str, **options) -> ConceptRunner:
    return ConceptRunner.from_config(ModelConfig(model_id=model_dir, **options), ConceptConfig(max_pairs_per_forward=4))


def click_runner(model_dir: str, **options) -> ClickRunner:
    return ClickRunner.from_config(ModelConfig(model_id=model_dir, **options), ClickConfig(cache_bytes=10**7))


@pytest.fixture(scope="module")
def concept_eager(tiny_model_dir):
    return concept_runner(tiny_model_dir, attn_implementation="eager")


@pytest.fixture(scope="module")
def click_eager(tiny_model_dir):
    return click_runner(tiny_model_dir, attn_implementation="eager")


def test_concept_sdpa_equals_eager(tiny_model_dir, concept_eager):
    auto = concept_runner(tiny_model_dir)
    sdpa = concept_runner(tiny_model_dir, attn_implementation="sdpa")
    # auto = sdpa: every SAM 3 sub-model (ViT, CLIP text, DETR, geometry encoder, mask decoder) supports it
    assert auto.placement.attn_implementation == sdpa.placement.attn_implementation == "sdpa"
    assert concept_eager.placement.attn_implementation == "eager"
    assert attention_implementations(concept_eager.model) == {"eager"}
    assert attention_implementations(sdpa.model) == {"sdpa"}
    stats = concept_eager.debug_stats()["runtime"]
    assert stats == {"device": "cpu", "dtype": "float32", "attn_implementation": "eager", "compile": "off",
                     "compiled": [], "tf32": False, "pinned_copies": False}
    reqs = concept_requests()
    assert_same_concepts(sdpa.segment_batch(reqs), concept_eager.segment_batch(reqs))


def test_click_sdpa_equals_eager(tiny_model_dir, click_eager):
    sdpa = click_runner(tiny_model_dir, attn_implementation="sdpa")
    # Sam3TrackerModel from a sam3_video checkpoint ignores from_pretrained's attn_implementation: the loader
    # must have set it on every layer afterwards
    assert attention_implementations(click_eager.model) == {"eager"}
    assert click_eager.placement.attn_implementation == "eager" == click_eager.debug_stats()["runtime"]["attn_implementation"]
    assert sdpa.placement.attn_implementation == "sdpa"
    reqs = click_requests()
    assert_same_clicks(sdpa.segment_batch(reqs), click_eager.segment_batch(reqs))


def test_video_runner_loads_with_eager_attention(tiny_model_dir):
    from serve_app.model.video import VideoRunner

    r = VideoRunner.from_config(ModelConfig(model_id=tiny_model_dir, device="cpu", attn_implementation="eager"),
                                score_threshold_detection=0.0, new_det_thresh=0.0, max_num_objects=3, hotstart_delay=0)
    assert r.placement.attn_implementation == "eager" and attention_implementations(r.model) == {"eager"}
    assert r.placement.compile == "off" and r.placement.compiled == ()


# ---------------------------------------------------------------------------------------------------------
# torch.compile: same outputs as eager


def _require_compile() -> None:
    """Skip when torch.compile (inductor) cannot build a kernel on this machine."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler (inductor); none on PATH")
    try:
        fn = torch.compile(lambda x: x * 2 + 1)
        assert torch.equal(fn(torch.arange(4.0)), torch.arange(4.0) * 2 + 1)
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot compile here
        pytest.skip(f"torch.compile cannot run on this machine: {type(exc).__name__}: {exc}")


def test_concept_compiled_equals_eager(tiny_model_dir, concept_eager):
    """compile="default" wraps the vision encoder; the first batch compiles it (~40 s on 2 CPU cores)."""
    _require_compile()
    compiled = concept_runner(tiny_model_dir, attn_implementation="eager", compile="default")
    assert compiled.placement.compile == "default" and compiled.placement.compiled == ("vision_encoder",)
    assert compiled.model.vision_encoder._compiled_call_impl is not None
    assert compiled.debug_stats()["runtime"]["compile"] == "default"
    reqs = concept_requests()
    assert_same_concepts(compiled.segment_batch(reqs), concept_eager.segment_batch(reqs), atol=1e-5)


def test_click_compiled_equals_eager(tiny_model_dir, click_eager):
    _require_compile()
    compiled = click_runner(tiny_model_dir, attn_implementation="eager", compile="default")
    assert compiled.placement.compiled == ("vision_encoder",)
    reqs = click_requests()
    assert_same_clicks(compiled.segment_batch(reqs), click_eager.segment_batch(reqs), atol=1e-5)


def test_video_runner_compiles_the_vit_backbone(tiny_model_dir):
    """Load only (compilation is lazy): the module both vision paths of a video session call is wrapped."""
    from serve_app.model.video import VideoRunner

    r = VideoRunner.from_config(ModelConfig(model_id=tiny_model_dir, device="cpu", compile="reduce-overhead"),
                                score_threshold_detection=0.0, new_det_thresh=0.0, max_num_objects=3, hotstart_delay=0)
    assert r.placement.compile == "reduce-overhead"
    assert r.placement.compiled == ("detector_model.vision_encoder.backbone",)
    assert r.model.detector_model.vision_encoder.backbone._compiled_call_impl is not None
