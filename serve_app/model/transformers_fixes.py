"""Memory-bounded replacements for transformers functions that SAM 3 video calls. No Ray, no FastAPI.

`mask_iou` in transformers' modeling_sam3_video (used by detection NMS, detection-to-track association and
the tracker's non-overlap check) computes `(pred[:, None] & gt[None]).sum(-1)`: an (N, M, H*W) tensor that
the sum widens to int64. With the full model's 200 queries and 288x288 masks that is 26.5 GB for one NMS
call (measured: "DefaultCPUAllocator: can't allocate memory: you tried to allocate 26542080000 bytes"
when a low detection threshold lets every query through). `bounded_mask_iou` gives the same values from
one (N, H*W) x (H*W, M) matmul: O((N + M) * H*W) memory.
"""

from __future__ import annotations

import torch


def bounded_mask_iou(pred_masks: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks (N,H,W) x (M,H,W) -> float32 (N,M), equal to transformers' `mask_iou`.

    Intersections are counts of 0/1 products accumulated in float32: exact while H*W < 2**24 (16.7 M pixels,
    SAM 3 masks are 288x288), also with TF32 matmuls (0 and 1 are exact in TF32, accumulation is float32)."""
    a = pred_masks.flatten(1).float()
    b = gt_masks.flatten(1).float()
    if a.shape[1] >= 2**24:
        raise ValueError(f"masks of {a.shape[1]} pixels: counts would not be exact in float32")
    intersection = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return intersection / union.clamp(min=1)


def install() -> None:
    """Point transformers' SAM 3 video module at the bounded functions (idempotent, process-wide)."""
    from transformers.models.sam3_video import modeling_sam3_video

    modeling_sam3_video.mask_iou = bounded_mask_iou
