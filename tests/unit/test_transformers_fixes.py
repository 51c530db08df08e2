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
