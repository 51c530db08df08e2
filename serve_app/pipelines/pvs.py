"""Clicks, boxes and automatic masks on a CPU replica: validate -> PromptSegmenter -> upsample -> RLE.

The cache protocol (correctness never depends on routing):
1. call the PromptSegmenter replica chosen for the image (`session_id` = the tenant-scoped cache key
   "{tenant}/{image_id}", consistent hashing)
   WITHOUT pixels; a replica holding the embedding answers at once (no vision encoder);
2. on EmbeddingMiss, load the image (storage for an image_id, or the request's own bytes), decode,
   resize to the model's S x S on this CPU replica, and call again WITH pixels: the replica encodes,
   caches, answers.
Only uint8 (S,S,3) pixels and prompts cross to the GPU replica; low-res logits come back and are
upsampled, thresholded at 0 and RLE-encoded here. No torch here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from serve_app.codecs.images import DecodedImage, resize_square
from serve_app.codecs.mask_input import decode_mask_input, encode_mask_input
from serve_app.codecs.masks import encode_rle, mask_box_xyxy, upsample_masks
from serve_app.config import PromptConfig
from serve_app.errors import InvalidInput, Unavailable
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    EmbeddingMiss,
    ModelInfo,
    PromptObject,
    PromptRequest,
    PromptResponse,
)
from serve_app.pipelines.remote import call_remote
from serve_app.schemas import AutoOptions, PvsObject, PvsOptions


def validate_objects(opts: PvsOptions, cfg: PromptConfig) -> None:
    """Checks that need config limits but not the image. Raises InvalidInput with a specific code."""
    if not opts.objects:
        raise InvalidInput("at least one object is required", "no_objects")
    if len(opts.objects) > cfg.max_objects:
        raise InvalidInput(f"{len(opts.objects)} objects, limit {cfg.max_objects}", "too_many_objects")
    for i, o in enumerate(opts.objects):
        if not o.points and o.box is None:
            if o.points is not None:
                raise InvalidInput(f"objects[{i}].points is empty", "empty_object")
            raise InvalidInput(f"objects[{i}] needs points or a box", "empty_object")
        if o.points is not None and len(o.points) > cfg.max_points_per_object:
            raise InvalidInput(f"objects[{i}] has {len(o.points)} points, limit {cfg.max_points_per_object}",
                               "too_many_points")
        if o.point_labels is not None and len(o.point_labels) != len(o.points or ()):
            raise InvalidInput(f"objects[{i}]: {len(o.point_labels)} point_labels for {len(o.points or ())} points",
                               "point_labels_mismatch")
        if o.box is not None:
            x0, y0, x1, y1 = o.box
            if x1 <= x0 or y1 <= y0:
                raise InvalidInput(f"objects[{i}].box needs x0 < x1 and y0 < y1", "invalid_box")


def to_prompt_object(o: PvsObject, index: int, mask_size: int) -> PromptObject:
    """Wire object -> PromptObject (ORIGINAL pixel coordinates; bounds are checked by the replica, which
    knows the image size even when only the image id was sent)."""
    points = labels = None
    if o.points:
        points = np.asarray(o.points, dtype=np.float32)
        labels = np.asarray(o.point_labels if o.point_labels is not None else [1] * len(o.points), dtype=np.int64)
    box = np.asarray(o.box, dtype=np.float32) if o.box is not None else None
    mask = None
    if o.mask_input is not None:
        mask = decode_mask_input(o.mask_input, mask_size, where=f"objects[{index}].mask_input")
    return PromptObject(points_xy=points, point_labels=labels, box_xyxy=box, mask_logits=mask)


def encode_objects(out: PromptResponse, opts: PvsOptions) -> list[dict[str, Any]]:
    """Replica output -> `objects` of a PvsImageResponse: per object the best mask (highest predicted IoU),
    with multimask_output all candidates best first. Masks: logits upsampled to (H,W), > 0, COCO RLE."""
    h, w = out.original_hw
    results = []
    for i, obj in enumerate(out.objects):
        order = np.argsort(-obj.scores, kind="stable")
        masks = upsample_masks(obj.mask_logits[order], h, w, 0.0)
        cands = []
        for rank, k in enumerate(order):
            cand: dict[str, Any] = {"score": round(float(obj.scores[k]), 6), "box": mask_box_xyxy(masks[rank]),
                                    "area": int(masks[rank].sum()), "mask": encode_rle(masks[rank])}
            if opts.return_mask_input:
                cand["mask_input"] = encode_mask_input(obj.mask_logits[k])
            cands.append(cand)
        item = {"id": i, "object_score": round(float(obj.object_score), 6), **cands[0]}
        if opts.multimask_output:
            item["candidates"] = cands
        results.append(item)
    return results


def encode_auto(out: AutoResponse, sort_by: str) -> list[dict[str, Any]]:
    """Replica output -> `masks` of an AutoImageResponse (RLE at the original size), sorted by score or area."""
    h, w = out.original_hw
    masks = upsample_masks(out.mask_logits, h, w, 0.0)
    items = [{"score": round(float(out.scores[k]), 6), "stability_score": round(float(out.stability[k]), 6),
              "box": [float(v) for v in out.boxes_xyxy[k]], "area": int(masks[k].sum()),
              "point": [round(float(v), 2) for v in out.points_xy[k]], "mask": encode_rle(masks[k])}
             for k in range(len(out.scores))]
    if sort_by == "area":
        items.sort(key=lambda x: x["area"], reverse=True)
    return [{"id": i, **x} for i, x in enumerate(items)]


class PromptPipeline:
    """Uploads' precompute, clicks and automatic masks against a PromptSegmenter handle.

    `images` is the replica's ImageLibrary (load_id/decode); `prompt_handle` the PromptSegmenter handle.
    """

    def __init__(self, prompt_handle, images, cfg: PromptConfig, model_timeout_s: float):
        self.prompt = prompt_handle
        self.images = images
        self.cfg = cfg
        self.model_timeout_s = model_timeout_s
        self._info: ModelInfo | None = None

    def cache_key(self, image_id: str) -> str:
        """The replica-side key of an image's embedding: tenant-scoped, so a tenant can never be answered
        from another tenant's cached image (a hit skips the storage read that checks ownership)."""
        return f"{self.images.tenant}/{image_id}"

    def _handle(self, key: str):
        """The handle routed to the replica that owns `key` (ConsistentHashRouter session id)."""
        if self.cfg.routing == "consistent_hash":
            return self.prompt.options(session_id=key)
        return self.prompt

    async def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = await call_remote(self.prompt.info.remote(), self.model_timeout_s)
        return self._info

    async def pixels(self, image: DecodedImage) -> np.ndarray:
        info = await self.model_info()
        return await asyncio.to_thread(resize_square, image.rgb, info.image_size)

    async def precompute(self, image: DecodedImage) -> bool:
        """Cache `image`'s embedding on its replica. Returns True if it was cached already."""
        pixels = await self.pixels(image)
        key = self.cache_key(image.sha256)
        return await call_remote(self._handle(key).embed.remote(key, pixels, (image.height, image.width)),
                                 self.model_timeout_s)

    async def _call(self, method: str, request, load: Callable[[], Awaitable[DecodedImage]],
                    timings: dict[str, float]):
        """The cache protocol: without pixels first; on EmbeddingMiss load + resize, then with pixels."""
        handle = getattr(self._handle(request.image_id), method)
        t0 = time.perf_counter()
        out = await call_remote(handle.remote(request), self.model_timeout_s)
        timings["model_ms"] = (time.perf_counter() - t0) * 1e3
        if not isinstance(out, EmbeddingMiss):
            return out
        t1 = time.perf_counter()
        image = await load()
        pixels = await self.pixels(image)
        request = dataclasses.replace(request, pixels=pixels, original_hw=(image.height, image.width))
        t2 = time.perf_counter()
        out = await call_remote(handle.remote(request), self.model_timeout_s)
        t3 = time.perf_counter()
        timings.update(load_ms=(t2 - t1) * 1e3, model_ms=timings["model_ms"] + (t3 - t2) * 1e3)
        if isinstance(out, EmbeddingMiss):  # cannot happen: the request carried pixels
            raise Unavailable("the prompt replica did not accept the image, retry", "model_unavailable",
                              retry_after_s=1)
        return out

    def _loader(self, image_id: str, data: bytes | None) -> Callable[[], Awaitable[DecodedImage]]:
        async def load() -> DecodedImage:
            raw = data if data is not None else await self.images.load_id(image_id)
            return await self.images.decode(raw)
        return load

    async def segment(self, image_id: str, data: bytes | None, opts: PvsOptions, request_id: str) -> dict[str, Any]:
        """Clicks on one image -> a PvsImageResponse dict. `data`: the image bytes when the request carried
        the image itself (its id is their sha256), else None (the image is in storage)."""
        t0 = time.perf_counter()
        validate_objects(opts, self.cfg)
        info = await self.model_info()
        objects = tuple(to_prompt_object(o, i, info.mask_size) for i, o in enumerate(opts.objects))
        timings: dict[str, float] = {}
        request = PromptRequest(self.cache_key(image_id), objects, multimask_output=opts.multimask_output)
        out: PromptResponse = await self._call("segment", request, self._loader(image_id, data), timings)
        t1 = time.perf_counter()
        objs = await asyncio.to_thread(encode_objects, out, opts)
        t2 = time.perf_counter()
        timings.update(encode_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3, **out.timings_ms)
        h, w = out.original_hw
        return {"request_id": request_id, "image_id": image_id, "width": w, "height": h, "objects": objs,
                "cache_hit": out.cache_hit, "timings_ms": {k: round(v, 3) for k, v in timings.items()},
                "batch_size": out.batch_size}

    def auto_request(self, image_id: str, opts: AutoOptions) -> AutoRequest:
        """Request knobs over the configured defaults, within the configured bounds."""
        d = self.cfg.auto
        pick = {k: (getattr(opts, k) if getattr(opts, k) is not None else getattr(d, k))
                for k in ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                          "box_nms_thresh", "min_mask_area", "max_masks")}
        if pick["points_per_side"] > d.max_points_per_side:
            raise InvalidInput(f"points_per_side limit is {d.max_points_per_side}", "points_per_side_too_large")
        pick["max_masks"] = min(pick["max_masks"], d.max_masks)
        return AutoRequest(self.cache_key(image_id), stability_score_offset=d.stability_score_offset, **pick)

    async def auto(self, image_id: str, data: bytes | None, opts: AutoOptions, request_id: str) -> dict[str, Any]:
        """Automatic masks for one image -> an AutoImageResponse dict."""
        t0 = time.perf_counter()
        request = self.auto_request(image_id, opts)
        timings: dict[str, float] = {}
        out: AutoResponse = await self._call("auto", request, self._loader(image_id, data), timings)
        t1 = time.perf_counter()
        masks = await asyncio.to_thread(encode_auto, out, opts.sort_by)
        t2 = time.perf_counter()
        timings.update(encode_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3, **out.timings_ms)
        h, w = out.original_hw
        return {"request_id": request_id, "image_id": image_id, "width": w, "height": h, "masks": masks,
                "candidates": out.candidates, "cache_hit": out.cache_hit,
                "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
