"""Automatic mask generation ("segment everything") on one cached image embedding.

A grid of points_per_side^2 single positive clicks (cell centres) is decoded by Sam3TrackerModel's mask
decoder in batches of points_per_batch, three candidates per click. Candidates are filtered by predicted
IoU, stability (computed on the m x m logits) and emptiness, and at most MAX_CANDIDATES are kept (the
highest predicted IoU, selected after every decoder batch, so memory never holds more); box NMS
(torchvision) runs first on low-res boxes (cheap pruning), then the survivors are upsampled in bounded
chunks to the box grid (the ORIGINAL size up to BOX_GRID_PIXELS, else that many pixels, aspect kept: never
thousands of full-size masks), their tight boxes there scaled to ORIGINAL pixels, masks under min_mask_area
(ORIGINAL pixels, estimated on the grid) dropped, and NMS runs again on those boxes, so no two returned
boxes overlap by more than box_nms_thresh. Hard bounds whatever the request: points_per_side <=
MAX_POINTS_PER_SIDE, points_per_batch <= MAX_POINTS_PER_BATCH. Everything runs on the model's device. No Ray,
no FastAPI.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from serve_app.errors import InvalidInput
from serve_app.model.loading import Placement
from serve_app.model.types import AutoRequest, AutoResponse

# Upsampling work per chunk: masks x H x W float32 elements (~128 MB).
_UPSAMPLE_ELEMENTS = 32_000_000
MAX_POINTS_PER_SIDE = 64  # = config click.auto.max_points_per_side's bound: 12,288 candidates at most
MAX_POINTS_PER_BATCH = 1024  # = config click.auto.points_per_batch's bound
MAX_CANDIDATES = 1024  # kept before NMS (= config click.auto.max_masks' bound): ~170 MB of float16 288x288 logits
BOX_GRID_PIXELS = 1024 * 1024  # masks are upsampled to at most this many pixels to find their boxes


def check_auto_request(req: AutoRequest) -> None:
    if req.points_per_side < 1 or req.points_per_batch < 1:
        raise InvalidInput("points_per_side and points_per_batch must be >= 1", "invalid_auto_options")
    if req.points_per_side > MAX_POINTS_PER_SIDE or req.points_per_batch > MAX_POINTS_PER_BATCH:
        raise InvalidInput(f"points_per_side must be <= {MAX_POINTS_PER_SIDE} and points_per_batch <= "
                           f"{MAX_POINTS_PER_BATCH}", "invalid_auto_options")


def box_grid(hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) at which masks are upsampled to find their boxes: (H, W) up to BOX_GRID_PIXELS, else scaled
    down to at most that many pixels (aspect kept)."""
    h, w = hw
    if h * w <= BOX_GRID_PIXELS:
        return h, w
    s = (BOX_GRID_PIXELS / (h * w)) ** 0.5
    return max(1, int(h * s)), max(1, int(w * s))


def keep_best(cand: dict[str, torch.Tensor], limit: int) -> dict[str, torch.Tensor]:
    """At most `limit` candidates: the highest scores (ties: the earlier candidate), in their original order."""
    if len(cand["scores"]) <= limit:
        return cand
    idx = torch.sort(torch.argsort(cand["scores"], descending=True, stable=True)[:limit]).values
    return {k: v[idx] for k, v in cand.items()}


def grid_points(points_per_side: int) -> np.ndarray:
    """float32 (n*n, 2) cell centres in [0,1] (x, y), row-major: y outer, x inner."""
    grid = (np.arange(points_per_side, dtype=np.float32) + 0.5) / points_per_side
    gx, gy = np.meshgrid(grid, grid)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool (c,h,w) -> float32 (c,4) tight boxes [x0, y0, x1, y1] in that grid's pixels (x1/y1 exclusive)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2).float(), masks.any(1).float()  # (c,h), (c,w)
    y0, y1 = rows.argmax(1), h - rows.flip(1).argmax(1)
    x0, x1 = cols.argmax(1), w - cols.flip(1).argmax(1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def filter_low_res(logits: torch.Tensor, scores: torch.Tensor, point_idx: torch.Tensor, hw: tuple[int, int],
                   req: AutoRequest) -> dict[str, torch.Tensor]:
    """Keep candidates with predicted IoU >= pred_iou_thresh, stability (at the m x m logits: IoU of
    logits > +offset vs > -offset) >= stability_score_thresh and a non-empty mask; approximate boxes from
    the low-res masks scaled to ORIGINAL pixels. logits: float (c,m,m); scores, point_idx: (c,)."""
    off = req.stability_score_offset
    inter = (logits > off).flatten(1).sum(1).float()
    union = (logits > -off).flatten(1).sum(1).float()
    stability = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
    masks = logits > 0
    keep = (scores >= req.pred_iou_thresh) & (stability >= req.stability_score_thresh) & masks.flatten(1).any(1)
    h, w = hw
    m = logits.shape[-1]
    boxes = mask_boxes(masks[keep]) * torch.tensor([w / m, h / m, w / m, h / m], device=logits.device)
    return {"logits": logits[keep].to(torch.float16), "scores": scores[keep], "points": point_idx[keep],
            "boxes": boxes, "stability": stability[keep]}


def exact_boxes(cand: dict[str, torch.Tensor], hw: tuple[int, int], min_mask_area: int) -> dict[str, torch.Tensor]:
    """Upsample the candidates' logits to the box grid (box_grid(hw): the ORIGINAL (H,W) up to
    BOX_GRID_PIXELS) in chunks (bilinear, half-pixel centres like the CPU ingress), replace their boxes by
    the tight boxes there scaled to ORIGINAL pixels (exact when the grid is (H,W)), drop masks under
    min_mask_area (ORIGINAL pixels; estimated from the grid's area when it is smaller)."""
    h, w = hw
    gh, gw = box_grid(hw)
    scale = torch.tensor([w / gw, h / gh, w / gw, h / gh], device=cand["logits"].device)
    min_area = max(1.0, min_mask_area * (gh * gw) / (h * w))
    per_chunk = max(1, _UPSAMPLE_ELEMENTS // (gh * gw))
    boxes, keep = [], []
    for s in range(0, len(cand["scores"]), per_chunk):
        up = F.interpolate(cand["logits"][s : s + per_chunk, None].float(), size=(gh, gw), mode="bilinear",
                           align_corners=False)[:, 0] > 0
        boxes.append(mask_boxes(up) * scale)
        keep.append(up.flatten(1).sum(1) >= min_area)
    if not boxes:
        return cand
    keep_t = torch.cat(keep)
    return {**{k: v[keep_t] for k, v in cand.items() if k != "boxes"}, "boxes": torch.cat(boxes)[keep_t]}


class AutomaticMaskGenerator:
    """Runs the grid on a Sam3TrackerModel (`model`) with an image's cached feature levels.

    `image_size` S is the model's square input size (grid points are scaled to it); `mask_size` m the
    low-res mask size. `on_decoder_call` counts mask-decoder forwards for the runner's counters."""

    def __init__(self, model: Any, placement: Placement, image_size: int, mask_size: int, on_decoder_call=None):
        self.model = model
        self.placement = placement
        self.image_size = image_size
        self.mask_size = mask_size
        self.on_decoder_call = on_decoder_call or (lambda: None)

    @torch.inference_mode()
    def generate(self, levels: tuple[torch.Tensor, ...], original_hw: tuple[int, int], req: AutoRequest,
                 cache_hit: bool) -> AutoResponse:
        """levels: the image's feature levels, each (1,C,h,w) on the device; original_hw: (H, W)."""
        check_auto_request(req)
        h, w = original_hw
        t0 = time.perf_counter()
        unit = grid_points(req.points_per_side)
        kept: list[dict[str, torch.Tensor]] = []
        candidates = 0
        for start in range(0, len(unit), req.points_per_batch):
            pts = torch.from_numpy(unit[start : start + req.points_per_batch] * self.image_size).to(self.placement.device)
            p = len(pts)
            self.on_decoder_call()
            res = self.model(
                image_embeddings=list(levels),
                input_points=pts.view(1, p, 1, 2),
                input_labels=torch.ones(1, p, 1, dtype=torch.long, device=self.placement.device),
                multimask_output=True,
            )
            logits = res.pred_masks[0].flatten(0, 1).float()  # (p*3, m, m)
            scores = res.iou_scores[0].flatten().float()  # (p*3,)
            point_idx = torch.arange(start, start + p, device=logits.device).repeat_interleave(res.pred_masks.shape[2])
            candidates += len(scores)
            kept.append(filter_low_res(logits, scores, point_idx, (h, w), req))
            if len(kept) > 1:  # bounded memory: at most MAX_CANDIDATES (+ one batch) held at any time
                kept = [keep_best({k: torch.cat([c[k] for c in kept]) for k in kept[0]}, MAX_CANDIDATES)]
        t_decode = time.perf_counter()
        merged = keep_best(kept[0], MAX_CANDIDATES) if kept else None
        if merged is not None and len(merged["scores"]):
            from torchvision.ops import nms

            merged = {k: v[nms(merged["boxes"], merged["scores"], req.box_nms_thresh)] for k, v in merged.items()}
            merged = exact_boxes(merged, (h, w), req.min_mask_area)
            order = nms(merged["boxes"], merged["scores"], req.box_nms_thresh)[: req.max_masks]  # by score
            merged = {k: v[order] for k, v in merged.items()}
        t_end = time.perf_counter()
        m = self.mask_size

        def arr(key: str, shape: tuple, dtype) -> np.ndarray:
            if merged is None or len(merged["scores"]) == 0:
                return np.zeros(shape, dtype)
            return merged[key].cpu().numpy().astype(dtype)

        return AutoResponse(
            mask_logits=arr("logits", (0, m, m), np.float16),
            scores=arr("scores", (0,), np.float32),
            stability=arr("stability", (0,), np.float32),
            boxes_xyxy=arr("boxes", (0, 4), np.float32),
            points_xy=(unit[arr("points", (0,), np.int64)] * np.array([w, h], np.float32)).astype(np.float32),
            original_hw=(h, w), cache_hit=cache_hit, candidates=candidates,
            timings_ms={"decoder_ms": (t_decode - t0) * 1e3, "filter_ms": (t_end - t_decode) * 1e3},
        )
