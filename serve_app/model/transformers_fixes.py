"""Replacements for transformers functions that SAM 3 (image and video) calls: bounded memory, fewer host syncs. Each gives
the same outputs as the function it replaces (tests/unit/test_transformers_fixes.py compares them on random and
edge-case inputs, and whole propagations with and without them). No Ray, no FastAPI.

- `mask_iou` in transformers' modeling_sam3_video (used by detection NMS, detection-to-track association and
  the tracker's non-overlap check) computes `(pred[:, None] & gt[None]).sum(-1)`: an (N, M, H*W) tensor that
  the sum widens to int64. With the full model's 200 queries and 288x288 masks that is 26.5 GB for one NMS
  call (measured: "DefaultCPUAllocator: can't allocate memory: you tried to allocate 26542080000 bytes"
  when a low detection threshold lets every query through). `bounded_mask_iou` gives the same values from
  one (N, H*W) x (H*W, M) matmul: O((N + M) * H*W) memory.
- Host syncs of a text-prompted frame step (`loadtest/video_syncs.py` counts them per call site; on a GPU each
  one waits for the device's queue to drain and leaves it idle while Python goes on):
  `Sam3VideoModel._associate_det_trk` reads every detection's matches with a bool index + `.tolist()` and two
  `.item()` in a Python loop (3 syncs per detection, + 6); `fast_associate_det_trk` computes the same tensors
  and reads them back in ONE copy. `_suppress_overlapping_based_on_recent_occlusion` and
  `_suppress_object_pw_area_shrinkage` group objects by prompt with `unique` + `nonzero` + `.tolist()` on
  the device and write with bool indexes; the replacements group on the host (the prompt ids are host data)
  and write with `masked_fill_` / `where` (no sync).
- `Sam3DetrEncoder._prepare_multilevel_features` (every detector forward: concept requests and text-prompted
  video frames) puts the feature maps' (height, width), host ints, into a tensor ON THE DEVICE (a host->device
  copy), and the DETR decoder reads them back in every layer (`_get_coords`: `torch.arange(0, height_tensor)`,
  2 syncs per layer, 12 for facebook/sam3's 6 layers). Nothing else reads that tensor (it only reaches the
  decoder's box position bias), so `fast_prepare_multilevel_features` keeps it on the CPU: same values, no
  copy and no sync.
  A method is replaced only when transformers' own source of it is the one these replacements were verified
  against (VERIFIED: sha256 of `inspect.getsource`, transformers 5.24); another version keeps its own method
  (logged once), so an upgrade can cost speed, never correctness.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

ORIGINALS: dict[str, Any] = {}  # name -> transformers' own function, saved by install() (tests compare them)


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


def _mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The module's mask_iou as transformers' own code would call it now (bounded_mask_iou once installed)."""
    from transformers.models.sam3_video import modeling_sam3_video

    return modeling_sam3_video.mask_iou(pred, gt)


def fast_associate_det_trk(self, det_masks: torch.Tensor, det_scores: torch.Tensor, trk_masks: torch.Tensor,
                           trk_obj_ids: list[int], det_prompt_ids: torch.Tensor, trk_prompt_ids: torch.Tensor):
    """Sam3VideoModel._associate_det_trk with one device->host read instead of 3 per detection + 6.

    det_masks (N,H,W) / trk_masks (M,H,W) mask logits, det_scores (N,), trk_obj_ids (M,) host list, prompt ids
    (N,) / (M,) long tensors. Returns, like the original: (new detection indices, unmatched non-empty track
    ids, {detection index: matched track ids}, {track id: its highest-IoU high-confidence detection}, empty
    track ids). The same tensor expressions as the original decide everything; only the reading is batched."""
    if trk_masks.size(0) == 0 or det_masks.size(0) == 0:  # no IoU matrix: the original's early returns
        return ORIGINALS["_associate_det_trk"](self, det_masks, det_scores, trk_masks, trk_obj_ids,
                                               det_prompt_ids, trk_prompt_ids)
    trk_masks_binary = trk_masks > 0
    ious = _mask_iou(det_masks > 0, trk_masks_binary)  # (N, M)
    prompt_match = det_prompt_ids.unsqueeze(1) == trk_prompt_ids.unsqueeze(0)
    ious = torch.where(prompt_match, ious, torch.zeros_like(ious))
    trk_is_matched = (ious >= self.trk_assoc_iou_thresh).any(dim=0)  # (M,)
    trk_is_nonempty = trk_masks_binary.any(dim=(1, 2))  # (M,)
    trk_is_unmatched = trk_is_nonempty & ~trk_is_matched
    matches = ious >= self.assoc_iou_thresh  # (N, M)
    is_new_det = (det_scores >= self.new_det_thresh) & ~matches.any(dim=1)  # (N,)
    det_is_high_conf = (det_scores >= self.high_conf_thresh) & ~is_new_det
    det_is_high_iou = ious.max(dim=1)[0] >= self.high_iou_thresh
    high = det_is_high_conf & det_is_high_iou  # (N,)
    best_trk = ious.argmax(dim=1)  # (N,)
    n, m = ious.shape
    flags = torch.cat([matches.flatten(), trk_is_unmatched, trk_is_nonempty, is_new_det, high]).to(torch.long)
    host = torch.cat([flags, best_trk]).tolist()  # the one sync
    match_rows = [host[d * m:(d + 1) * m] for d in range(n)]
    o = n * m
    unmatched, nonempty = host[o:o + m], host[o + m:o + 2 * m]
    o += 2 * m
    new, high_l, best = host[o:o + n], host[o + n:o + 2 * n], host[o + 2 * n:o + 3 * n]
    ids = [int(i) for i in trk_obj_ids]
    det_to_matched_trk_obj_ids = {d: [ids[j] for j in range(m) if match_rows[d][j]] for d in range(n)}
    trk_id_to_max_iou_high_conf_det = {}
    for d in range(n):
        if high_l[d]:
            trk_id_to_max_iou_high_conf_det[ids[best[d]]] = d
    return ([d for d in range(n) if new[d]], [ids[j] for j in range(m) if unmatched[j]], det_to_matched_trk_obj_ids,
            trk_id_to_max_iou_high_conf_det, [ids[j] for j in range(m) if not nonempty[j]])


def _groups(prompt_ids: list[int]) -> list[list[int]]:
    """Row indices per prompt id, prompt ids ascending (= `unique(sorted=True)` + `nonzero` of the original)."""
    return [[i for i, p in enumerate(prompt_ids) if p == pid] for pid in sorted(set(prompt_ids))]


def _rows(members: list[int], total: int, device: torch.device) -> slice | torch.Tensor:
    """An index for `members`: a slice when they are every row (no host->device copy), else a long tensor."""
    if members == list(range(total)):
        return slice(None)
    return torch.tensor(members, device=device, dtype=torch.long)


def fast_suppress_object_pw_area_shrinkage(self, pred_masks: torch.Tensor, prompt_ids: list[int] | None = None):
    """Sam3VideoModel._suppress_object_pw_area_shrinkage, grouping by prompt on the host (no unique/nonzero).
    pred_masks (N,...) mask logits; prompt_ids (N,) host list or None. Returns a new tensor like the original."""
    if prompt_ids is None:
        return self._suppress_object_pw_area_shrinkage_impl(pred_masks)
    if len(prompt_ids) != pred_masks.size(0):
        raise ValueError("prompt_ids must have the same length as pred_masks")
    grouped = pred_masks.clone()
    for members in _groups([int(p) for p in prompt_ids]):
        rows = _rows(members, grouped.size(0), grouped.device)
        part = grouped[rows]  # a copy for a tensor index, a view for a slice: copied like the original's
        grouped[rows] = self._suppress_object_pw_area_shrinkage_impl(part.clone() if isinstance(rows, slice) else part)
    return grouped


def fast_suppress_overlapping_based_on_recent_occlusion(self, inference_session, frame_idx: int,
                                                        tracker_low_res_masks_global: torch.Tensor,
                                                        tracker_metadata_new: dict[str, Any],
                                                        obj_ids_newly_removed: set[int], reverse: bool = False):
    """Sam3VideoModel._suppress_overlapping_based_on_recent_occlusion without host syncs: prompt groups from the
    session's host dict, suppressed masks and occlusion frames written with masked_fill_/where. Updates
    `tracker_low_res_masks_global` (B,...) in place and returns it, and sets tracker_metadata_new
    ["obj_id_to_last_occluded"], like the original."""
    obj_ids_global = inference_session.obj_ids
    masks = tracker_low_res_masks_global
    binary = masks > 0
    batch_size = masks.size(0)
    if batch_size == 0:
        return masks
    never_occluded, always_occluded = -1, 100000  # the original's values
    last_occluded_prev = torch.cat([
        inference_session.obj_id_to_last_occluded.get(
            obj_id, torch.full((1,), fill_value=(never_occluded if obj_id not in obj_ids_newly_removed
                                                 else always_occluded), device=binary.device, dtype=torch.long))
        for obj_id in obj_ids_global], dim=0)
    to_suppress = torch.zeros(batch_size, device=binary.device, dtype=torch.bool)
    prompt_ids = [int(inference_session.obj_id_to_prompt_id[obj_id]) for obj_id in obj_ids_global]
    for members in _groups(prompt_ids):
        if len(members) <= 1:
            continue
        rows = _rows(members, batch_size, binary.device)
        to_suppress[rows] = self._get_objects_to_suppress_based_on_most_recently_occluded(
            binary[rows], last_occluded_prev[rows], [obj_ids_global[i] for i in members], reverse)
    occluded_or_suppressed = ~binary.any(dim=(-1, -2)) | to_suppress
    last_occluded_new = torch.where(occluded_or_suppressed, torch.full_like(last_occluded_prev, frame_idx),
                                    last_occluded_prev)
    tracker_metadata_new["obj_id_to_last_occluded"] = {
        obj_id: last_occluded_new[i:i + 1] for i, obj_id in enumerate(obj_ids_global)}
    masks.masked_fill_(to_suppress.view(-1, *([1] * (masks.dim() - 1))), -10)  # the original's NO_OBJ_LOGIT
    return masks


def fast_prepare_multilevel_features(self, vision_features: list[torch.Tensor], vision_pos_embeds: list[torch.Tensor]):
    """Sam3DetrEncoder._prepare_multilevel_features with `spatial_shapes` (levels, 2) int64 on the CPU. Features
    (B,C,H,W) per level -> (features (B, sum H*W, C), position embeddings (B, sum H*W, C), spatial_shapes)."""
    spatial_shapes = [tuple(features.shape[-2:]) for features in vision_features]
    features_flattened = torch.cat([f.flatten(2).transpose(1, 2) for f in vision_features], dim=1)
    pos_embeds_flattened = torch.cat([p.flatten(2).transpose(1, 2) for p in vision_pos_embeds], dim=1)
    return features_flattened, pos_embeds_flattened, torch.tensor(spatial_shapes, dtype=torch.long)


# method name -> (transformers module under transformers.models, class, replacement)
_METHODS = {
    "_associate_det_trk": ("sam3_video.modeling_sam3_video", "Sam3VideoModel", fast_associate_det_trk),
    "_suppress_object_pw_area_shrinkage": ("sam3_video.modeling_sam3_video", "Sam3VideoModel",
                                           fast_suppress_object_pw_area_shrinkage),
    "_suppress_overlapping_based_on_recent_occlusion": ("sam3_video.modeling_sam3_video", "Sam3VideoModel",
                                                        fast_suppress_overlapping_based_on_recent_occlusion),
    "_prepare_multilevel_features": ("sam3.modeling_sam3", "Sam3DetrEncoder", fast_prepare_multilevel_features),
}
# sha256 of transformers' source of each replaced method, as verified (transformers 5.24.0)
VERIFIED = {
    "_prepare_multilevel_features": "08d84f7d241749309db4c398530cfc03a02836949ff7ec3f4a18028854fd3a01",
    "_associate_det_trk": "15100be36fd976414245c0d1b1b8e23a85225f432bd56a0a8b4404653d819cab",
    "_suppress_object_pw_area_shrinkage": "de27dda4b41cbf87acb7968be1c996b0cb21aa8b4368ca61da3e011c28b50030",
    "_suppress_overlapping_based_on_recent_occlusion":
        "be9652fca729d8ef98e6a64c972b940dd941efd6bd91039cd6d14918d39de806",
}
SKIPPED: set[str] = set()  # methods left to transformers (their source is not the verified one)


def _source_sha256(fn: Any) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):  # no source file (e.g. a zipped or compiled install)
        return None


def install() -> None:
    """Point transformers' SAM 3 modules at the replacements (idempotent, process-wide): `mask_iou` and the
    methods whose source is the verified one (their originals are kept in ORIGINALS; the others are listed in
    SKIPPED). Called by the concept and video runners."""
    import importlib

    from transformers.models.sam3_video import modeling_sam3_video

    modeling_sam3_video.mask_iou = bounded_mask_iou
    for name, (module, class_name, fn) in _METHODS.items():
        cls = getattr(importlib.import_module(f"transformers.models.{module}"), class_name)
        current = getattr(cls, name, None)
        if current is fn or name in SKIPPED:
            continue
        if current is None or _source_sha256(current) != VERIFIED[name]:
            SKIPPED.add(name)
            log.warning("transformers' %s.%s is not the version its replacement was verified against: keeping "
                        "transformers' own (correct, with more host syncs)", class_name, name)
            continue
        ORIGINALS.setdefault(name, current)
        setattr(cls, name, fn)
