"""One batched tracker forward for all the objects of a video frame (transformers 5.24 Sam3TrackerVideoModel).

`Sam3TrackerVideoModel.forward(inference_session, frame_idx, reverse, run_mem_encoder)` runs
`_run_single_frame_inference(..., batch_size=1)` once per object (memory attention, prompt encoder, mask decoder,
object pointer: a few dozen small kernels each) and only then encodes the memories of all objects in one batch.
On a GPU an N-object frame step is N launch sequences. `batched_tracker_forward` is a drop-in replacement for
that forward (non-streaming calls, `frame=None`) that runs the objects with NO new input on the frame in one
batch per group of objects whose memory has the same structure:

- per object, in obj_idx order, the same decisions as transformers' loop: an object without new inputs whose
  frame is a conditioning frame reuses the stored output; an object with new inputs (clicks/masks, or a
  first conditioning frame) runs transformers' own `_run_single_frame_inference` (so does a group of one,
  and everything when the model has no memory); the loop's quirks are kept (an initial conditioning frame
  sets `reverse=False` for the objects after it; `obj_with_new_inputs` is consumed the same way);
- the other objects are grouped by (reverse, the relative temporal offset and shape of every memory frame
  `_gather_memory_frame_outputs` selects, the temporal offset of every object pointer `_get_object_pointers`
  selects, the pointer count limit). Within a group every object attends to the same number of memory tokens
  with the same temporal encodings, so stacking their memories along the batch dimension computes, per
  object, exactly what the per-object call computes (the memory tensors themselves differ per object);
- the group runs `_prepare_memory_conditioned_features` + `_single_frame_forward`'s computation once with
  batch = group size, calling the same modules (memory_attention, prompt_encoder, mask_decoder,
  object_pointer_proj). Two lines of transformers' code are only right for batch 1 and are done per element
  here: the memory-attention output reshape (`squeeze(1)` on a (1,B,HW,C) tensor) and the best-mask
  selection (`x[arange(B), arange(1), best(B,1)]` broadcasts to (B,B));
- outputs are split per object (independent tensors, as the loop stores them) and stored with `store_output`,
  `frames_tracked_per_obj` is updated, and memories are encoded with transformers' `_batch_encode_memories`
  over the same objects in the same order as the loop (the same one batched call).

Equality: NOT bit for bit in fp32. A few token-sized Linear layers (the mask decoder's hypernetwork MLPs, the
object-pointer projection) run as an (N, C) matmul instead of N (1, C) ones, and the CPU/GPU kernels sum in
another order for another M: fp32 mask logits differ by ~1e-9, the bf16 memory features by one bf16 step on a
few elements; the memory attention and everything else are identical. Measured on the tiny model (CPU, fp32,
10 objects, 40 frames): ids, boxes and scores equal, fp16 mask logits within 1e-6, no drift over the frames;
bf16 (the GPU dtype) gave identical outputs on the CPU. tests/unit/test_video_batching.py checks all of this
(masks, scores, stored state, state_nbytes, checkpoints, later frames, call counts). Because the existing tests
compare sessions with transformers' own paths bit for bit, they run with `batch_objects=False`; the service
runs batched by default (`video.batch_tracker_objects`).

`Sam3VideoModel` (text prompts) propagates its tracked objects through `tracker_model(...)` too
(`run_tracker_propagation`, `_tracker_add_new_objects`), so `install_batched_forward` replaces the forward of
the tracker instance with one that batches inside `object_batching()` blocks (a ContextVar: per thread, so
other sessions and transformers' own iterators on the same model keep the per-object loop). VideoSession
wraps its clicks-only and text frame steps in such a block when `VideoRunner.batch_objects` is on.

torch + transformers only (no Ray, no FastAPI).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

__all__ = ["STATS", "BatchStats", "batched_tracker_forward", "install_batched_forward", "object_batching"]


class BatchStats:
    """Counters of the batched forward (tests, benchmarks): `batched_calls` batched group runs, `batched_objects`
    objects they ran, `single_calls` per-object `_run_single_frame_inference` calls it made."""

    def __init__(self) -> None:
        self.batched_calls = 0
        self.batched_objects = 0
        self.single_calls = 0


STATS = BatchStats()


def _structure_key(tm, s, obj_idx: int, frame_idx: int, reverse: bool, device) -> tuple[Any, list, tuple]:
    """(key, memory entries, pointers) of one object on frame_idx: what `_prepare_memory_conditioned_features`
    reads. Two objects with the same key run the same computation shape for shape."""
    mem = [(off, out) for off, out in tm._gather_memory_frame_outputs(s, obj_idx, frame_idx, reverse)
           if out is not None]
    ptr = tm._get_object_pointers(s, obj_idx, frame_idx, s.num_frames, device, reverse, False)
    offsets, tokens, max_ptrs = ptr
    key = (bool(reverse),
           tuple((off, tuple(o["maskmem_features"].shape), o["maskmem_features"].dtype,
                  tuple(o["maskmem_pos_enc"].shape), o["maskmem_pos_enc"].dtype) for off, o in mem),
           tuple(offsets), int(max_ptrs), tuple((tuple(t.shape), t.dtype) for t in tokens))
    return key, mem, ptr


def _on(t: torch.Tensor, device) -> torch.Tensor:
    """t.to(device, non_blocking=True), without a dispatcher call when t is already there (the usual case)."""
    return t if t.device == device else t.to(device, non_blocking=True)


def _run_group(tm, s, frame_idx: int, members: list[tuple[int, list, tuple]]) -> list[dict[str, torch.Tensor]]:
    """`_run_single_frame_inference` (no inputs, not an initial conditioning frame) for len(members) objects
    with the same memory structure, in one batch. members: (obj_idx, memory entries, pointers)."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import NO_OBJ_SCORE

    b = len(members)
    feats, pos = tm._prepare_vision_features(s, frame_idx, 1)
    device = feats[-1].device
    channels = tm.hidden_dim
    height, width = tm.backbone_feature_sizes[-1]

    # _prepare_memory_conditioned_features, batched: memories stacked along the batch dim (dim 1 of (L,B,C))
    memories, memory_pos = [], []
    for slot, (offset, _) in enumerate(members[0][1]):
        outs = [m[1][slot][1] for m in members]
        memories.append(torch.cat([_on(o["maskmem_features"], device) for o in outs], dim=1))
        spatial = torch.cat([_on(o["maskmem_pos_enc"], device) for o in outs], dim=1)
        memory_pos.append(spatial + tm.memory_temporal_positional_encoding[offset - 1])
    offsets, _, max_ptrs = members[0][2]
    num_ptr_tokens = 0
    if offsets:
        tokens = [torch.cat([m[2][1][i].reshape(1, -1) for m in members], dim=0) for i in range(len(offsets))]
        pointers, pointers_pos = tm._process_object_pointers(offsets, tokens, max_ptrs, b, channels, device)
        if pointers is not None:
            memories.append(pointers)
            memory_pos.append(pointers_pos)
            num_ptr_tokens = pointers.shape[0]
    combined = torch.cat(memories, dim=0).to(dtype=s.dtype)
    combined_pos = torch.cat(memory_pos, dim=0)
    out = tm.memory_attention(
        current_vision_features=feats[-1].expand(-1, b, -1),
        current_vision_position_embeddings=pos[-1].expand(-1, b, -1),
        memory=combined,
        memory_posision_embeddings=combined_pos,
        num_object_pointer_tokens=num_ptr_tokens,
    )  # (1, B, HW, C); transformers' squeeze(1) is right for B == 1 only
    pix_feat = out[0].transpose(1, 2).view(b, channels, height, width)

    # _single_frame_forward with no points, boxes or masks (padding point, label -1)
    high_res_features = [x.permute(1, 2, 0).view(x.size(1), x.size(2), *size).expand(b, -1, -1, -1)
                         for x, size in zip(feats[:-1], tm.backbone_feature_sizes[:-1])]
    multimask = tm._use_multimask(False, None)
    image_pe = tm.get_image_wide_positional_embeddings().repeat(b, 1, 1, 1)
    points = torch.zeros(b, 1, 1, 2, dtype=pix_feat.dtype, device=device)
    labels = -torch.ones(b, 1, 1, dtype=torch.int32, device=device)
    sparse, dense = tm.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None, input_masks=None)
    low_multi, iou_scores, sam_tokens, score_logits = tm.mask_decoder(
        image_embeddings=pix_feat, image_positional_embeddings=image_pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, high_resolution_features=high_res_features,
        attention_similarity=None, target_embedding=None)
    appearing = score_logits > 0
    low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE)
    high_multi = torch.nn.functional.interpolate(
        low_multi.squeeze(1).float(), size=(tm.image_size, tm.image_size), mode="bilinear", align_corners=False,
    ).unsqueeze(1).to(low_multi.dtype)
    sam_token = sam_tokens[:, :, 0]
    if multimask:  # per element; transformers' indexing broadcasts to (B, B) for B > 1
        best = torch.argmax(iou_scores, dim=-1)  # (B, 1)
        rows = torch.arange(b, device=device)[:, None]
        cols = torch.arange(1, device=device)[None, :]
        low_res, high_res = low_multi[rows, cols, best], high_multi[rows, cols, best]
        if sam_tokens.size(2) > 1:
            sam_token = sam_tokens[rows, cols, best]
    else:
        low_res, high_res = low_multi[:, :, 0], high_multi[:, :, 0]
    pointer = tm.object_pointer_proj(sam_token)
    lam = appearing.to(pointer.dtype)
    pointer = lam * pointer
    pointer = pointer + (1 - lam) * tm.no_object_pointer

    results = []
    for i in range(b):
        one = slice(i, i + 1)
        current = {"pred_masks": low_res[one].clone(), "object_pointer": pointer[one].clone(),
                   "high_res_masks": high_res[one].clone()}
        if not tm.training:
            current["object_score_logits"] = score_logits[one].clone()
        results.append(current)
    return results


@torch.inference_mode()
def batched_tracker_forward(tm, inference_session, frame_idx: int, reverse: bool = False,
                            run_mem_encoder: bool = True):
    """`tm.forward(inference_session, frame_idx=frame_idx, reverse=reverse, run_mem_encoder=run_mem_encoder)`
    (non-streaming) with the objects that have no new input on the frame run in batches (module docstring).
    Returns the same Sam3TrackerVideoSegmentationOutput and leaves the session in the same state."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoSegmentationOutput,
    )

    s = inference_session
    n = s.get_obj_num()
    # 1. The loop's decisions, in obj_idx order: (obj_idx, mode, is_init, point_inputs, mask_inputs, reverse)
    plan: list[tuple[int, str, bool, Any, Any, bool]] = []
    for obj_idx in range(n):
        obj_id = s.obj_idx_to_id(obj_idx)
        has_new = obj_id in s.obj_with_new_inputs
        if not has_new and frame_idx in s.output_dict_per_obj[obj_idx]["cond_frame_outputs"]:
            plan.append((obj_idx, "cached", True, None, None, reverse))
            continue
        is_init, point_inputs, mask_inputs = False, None, None
        if has_new:
            is_init = frame_idx not in s.frames_tracked_per_obj[obj_idx]
            if is_init:
                reverse = False  # sic: transformers' loop keeps it for the following objects
            point_inputs = s.point_inputs_per_obj[obj_idx].get(frame_idx, None)
            mask_inputs = s.mask_inputs_per_obj[obj_idx].get(frame_idx, None)
            if point_inputs is not None or mask_inputs is not None:
                s.obj_with_new_inputs.remove(obj_id)
        plan.append((obj_idx, "run", is_init, point_inputs, mask_inputs, reverse))

    # 2. Group the batchable objects by memory structure
    device = s.inference_device
    groups: dict[Any, list[tuple[int, list, tuple]]] = {}
    if tm.num_maskmem > 0:
        for obj_idx, mode, is_init, point_inputs, mask_inputs, rev in plan:
            if mode == "run" and not is_init and point_inputs is None and mask_inputs is None:
                key, mem, ptr = _structure_key(tm, s, obj_idx, frame_idx, rev, device)
                groups.setdefault(key, []).append((obj_idx, mem, ptr))
    outputs: dict[int, dict[str, Any]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        for (obj_idx, _, _), batched in zip(members, _run_group(tm, s, frame_idx, members)):
            outputs[obj_idx] = batched
        STATS.batched_calls += 1
        STATS.batched_objects += len(members)

    # 3. The loop's stores, in obj_idx order
    pred_masks_per_obj: list[torch.Tensor] = []
    scores_per_obj: list[torch.Tensor] = []
    encode, high_res, encode_scores, from_pts = [], [], [], []
    for obj_idx, mode, is_init, point_inputs, mask_inputs, rev in plan:
        if mode == "cached":
            pred_masks = s.get_output(obj_idx, frame_idx, "pred_masks", is_conditioning_frame=True)
            score_logits = s.get_output(obj_idx, frame_idx, "object_score_logits", is_conditioning_frame=True)
        else:
            current = outputs.get(obj_idx)
            if current is None:
                STATS.single_calls += 1
                current = tm._run_single_frame_inference(
                    inference_session=s, obj_idx=obj_idx, frame_idx=frame_idx, batch_size=1,
                    is_init_cond_frame=is_init, point_inputs=point_inputs, mask_inputs=mask_inputs, reverse=rev,
                    streaming=False)
            s.store_output(obj_idx, frame_idx, output_value=current, is_conditioning_frame=is_init)
            pred_masks = current["pred_masks"]
            score_logits = current["object_score_logits"]
            if run_mem_encoder and tm.num_maskmem > 0:
                encode.append(obj_idx)
                high_res.append(current["high_res_masks"])
                encode_scores.append(score_logits)
                from_pts.append(point_inputs is not None or mask_inputs is not None)
        pred_masks_per_obj.append(pred_masks)
        scores_per_obj.append(score_logits.squeeze(-1))
        if not is_init:
            s.frames_tracked_per_obj[obj_idx][frame_idx] = {"reverse": rev}

    tm._batch_encode_memories(inference_session=s, frame_idx=frame_idx, objects_needing_memory_encoding=encode,
                              high_res_masks_for_memory=high_res, object_score_logits_for_memory=encode_scores,
                              is_mask_from_pts_per_obj=from_pts)
    if len(pred_masks_per_obj) > 1:
        all_masks = torch.cat(pred_masks_per_obj, dim=0)
        all_scores = torch.cat(scores_per_obj, dim=0)
    else:
        all_masks, all_scores = pred_masks_per_obj[0], scores_per_obj[0]
    return Sam3TrackerVideoSegmentationOutput(object_ids=s.obj_ids.copy(), pred_masks=all_masks,
                                              object_score_logits=all_scores, frame_idx=frame_idx)


_ENABLED: ContextVar[bool] = ContextVar("sam3serve_batch_objects", default=False)


@contextmanager
def object_batching(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread / context only), calls of a tracker on which `install_batched_forward`
    was called run `batched_tracker_forward`; other callers of the same model (other sessions, transformers'
    own iterators) are unaffected."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def install_batched_forward(tm) -> None:
    """Make `tm(...)` (a Sam3TrackerVideoModel instance, e.g. Sam3VideoModel.tracker_model, which
    Sam3VideoModel calls for its tracked objects) run `batched_tracker_forward` inside `object_batching()`
    blocks, for non-streaming calls (no `frame=`). Elsewhere, and for streamed frames, transformers' forward
    runs. Idempotent."""
    if getattr(tm, "_sam3serve_original_forward", None) is not None:
        return
    original = tm.forward
    tm._sam3serve_original_forward = original

    def forward(inference_session, frame_idx: int | None = None, frame: torch.Tensor | None = None,
                reverse: bool = False, run_mem_encoder: bool = True, **kwargs):
        if _ENABLED.get() and frame is None and frame_idx is not None and not kwargs:
            return batched_tracker_forward(tm, inference_session, frame_idx, reverse=reverse,
                                           run_mem_encoder=run_mem_encoder)
        return original(inference_session=inference_session, frame_idx=frame_idx, frame=frame, reverse=reverse,
                        run_mem_encoder=run_mem_encoder, **kwargs)

    tm.forward = forward
