"""gpu: the model layer on CUDA, with the tiny checkpoint (skipped without a GPU).

Goes through serve_app.model.loading (the path every runner uses) and then calls Sam3Model directly, so it
does not depend on the runner classes' names. Never a timed assertion.
"""

from __future__ import annotations

import pytest
import torch

NEEDS_CUDA = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine (gpu tests run on GPU hosts only)"


def _forward(model_dir: str, device: str, dtype: str, seed: int = 0):
    """Load the checkpoint through serve_app.model.loading on `device`/`dtype` and run one full forward
    (vision encoder, text encoder, detector, mask decoder) on seeded pixels and one prompt."""
    from transformers import Sam3Model

    from serve_app.config import ModelConfig
    from serve_app.model.loading import load_pretrained, load_tokenizer, resolve_placement

    cfg = ModelConfig(model_id=model_dir, device=device, dtype=dtype, local_files_only=True)
    placement = resolve_placement(cfg)
    model = load_pretrained(Sam3Model, cfg, placement)
    tokenizer = load_tokenizer(cfg)
    size = int(model.config.vision_config.image_size)
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(1, 3, size, size, generator=gen) * 2 - 1).to(placement.device, placement.dtype)
    tok = tokenizer(["a red car"], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(pixel_values=pixels, input_ids=tok.input_ids.to(placement.device),
                    attention_mask=tok.attention_mask.to(placement.device))
    return placement, model, out


def _probs(out) -> torch.Tensor:
    """Per-query scores as the runners compute them: sigmoid(logit) * sigmoid(presence), float32 on CPU."""
    return (out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()).cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)
def test_tiny_checkpoint_loads_and_runs_on_cuda(tiny_model_dir):
    # The production default: device/dtype "auto" picks CUDA + bfloat16 when a GPU is visible.
    placement, model, out = _forward(tiny_model_dir, "auto", "auto")
    assert placement.device.type == "cuda" and placement.dtype == torch.bfloat16, placement
    params = list(model.parameters())
    assert all(p.device.type == "cuda" for p in params), "weights left on the CPU"
    assert {p.dtype for p in params if p.is_floating_point()} == {torch.bfloat16}
    queries = out.pred_logits.shape[1]
    assert out.pred_logits.shape == (1, queries) and out.pred_boxes.shape == (1, queries, 4)
    assert out.pred_masks.shape[:2] == (1, queries) and out.pred_masks.device.type == "cuda"
    for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
        assert torch.isfinite(getattr(out, name).float()).all(), f"{name} has NaN/Inf in bfloat16 on CUDA"

    # The same weights in float32 compute the same thing on CUDA as on the CPU (TF32 off for the comparison).
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _, _, cuda32 = _forward(tiny_model_dir, "cuda", "float32")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    _, _, cpu32 = _forward(tiny_model_dir, "cpu", "float32")
    torch.testing.assert_close(_probs(cuda32), _probs(cpu32), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(cuda32.pred_boxes.float().cpu(), cpu32.pred_boxes.float(), atol=1e-3, rtol=1e-3)
