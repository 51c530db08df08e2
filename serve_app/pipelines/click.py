"""Clicks, boxes and automatic masks on a CPU replica: validate -> ClickSegmenter -> upsample -> RLE.

The cache protocol (correctness never depends on routing):
1. call the ClickSegmenter replica chosen for the image (`session_id` = the tenant-scoped cache key
   "{tenant}/{image_id}", consistent hashing)
   WITHOUT pixels; a replica holding the embedding answers at once (no vision encoder);
2. on EmbeddingMiss, load the image (storage for an image_id, or the request's own bytes), decode,
   resize to the model's S x S on this CPU replica, and call again WITH pixels: the replica encodes,
   caches, answers.
Only uint8 (S,S,3) pixels and prompts cross to the GPU replica; low-res logits come back and are
upsampled, thresholded at 0 and RLE-encoded here, on the replica's bounded CPU pool (pipelines/pools.py),
one mask at a time, stopping between masks once the request is gone (a click answer of at most
INLINE_ENCODE_PIXELS mask pixels is encoded on the event loop: the hand-off would cost more). Answers stay within the output budget
(limits.max_output_pixels, pipelines/output_budget.py): automatic masks keep the highest-scoring ones that
fit; clicks drop multimask candidates first, then answer 413 output_too_large. No torch here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TypedDict, TypeVar

import numpy as np

from serve_app.codecs.image_decode import DecodedImage, resize_square
from serve_app.codecs.mask_input import decode_mask_input, encode_mask_input
from serve_app.codecs.masks import encode_mask
from serve_app.config import ClickConfig
from serve_app.errors import InvalidInput, OutputTooLarge, Unavailable
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    ClickObject,
    ClickRequest,
    ClickResponse,
    EmbeddingMiss,
)
from serve_app.pipelines.image_library import ImageLibrary
from serve_app.pipelines.output_budget import Truncation, masks_that_fit, truncation_fields
from serve_app.pipelines.pools import CancelToken, run_cancellable, run_cpu
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.timings import round_ms
from serve_app.schemas import (
    AutoImageResponse,
    AutoMask,
    AutoOptions,
    ClickImageResponse,
    ClickObjectIn,
    ClickObjectResult,
    ClickOptions,
    MaskCandidate,
    RleMask,
)

R = TypeVar("R", ClickResponse, AutoResponse)
# A click answer of at most this many mask pixels (all its masks at the original size) is encoded and serialised
# on the event loop (~1 ms for one 1024x768 mask; like body.INLINE_PARSE_BYTES): the CPU-pool hand-off would cost
# more than the work. Larger ones go to the CPU pool, cancellable between masks.
INLINE_ENCODE_PIXELS = 1024 * 1024
_T = TypeVar("_T")


def validate_objects(opts: ClickOptions, cfg: ClickConfig) -> None:
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


def to_click_object(o: ClickObjectIn, index: int, mask_size: int) -> ClickObject:
    """Wire object -> ClickObject (ORIGINAL pixel coordinates; bounds are checked by the replica, which
    knows the image size even when only the image id was sent)."""
    points = labels = None
    if o.points:
        points = np.asarray(o.points, dtype=np.float32)
        labels = np.asarray(o.point_labels if o.point_labels is not None else [1] * len(o.points), dtype=np.int64)
    box = np.asarray(o.box, dtype=np.float32) if o.box is not None else None
    mask = None
    if o.mask_input is not None:
        mask = decode_mask_input(o.mask_input, mask_size, where=f"objects[{index}].mask_input")
    return ClickObject(points_xy=points, point_labels=labels, box_xyxy=box, mask_logits=mask)


class AutoKnobs(TypedDict):
    """AutoRequest's knobs (its fields of the same names)."""

    points_per_side: int
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    min_mask_area: int
    max_masks: int


def _or_default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def auto_knobs(opts: AutoOptions, cfg: ClickConfig) -> AutoKnobs:
    """The AutoRequest knobs: the request's over the configured defaults (click.auto), within the configured
    bounds and floors. Raises InvalidInput (points_per_side_too_large, pred_iou_thresh_too_low,
    stability_score_thresh_too_low); needs no image. points_per_batch and max_masks are lowered to the
    configured ones (chunking never changes the masks; max_masks is an upper bound anyway)."""
    d = cfg.auto
    points_per_side = _or_default(opts.points_per_side, d.points_per_side)
    if points_per_side > d.max_points_per_side:
        raise InvalidInput(f"points_per_side limit is {d.max_points_per_side}", "points_per_side_too_large")
    pred_iou_thresh = _or_default(opts.pred_iou_thresh, d.pred_iou_thresh)
    if pred_iou_thresh < d.min_pred_iou_thresh:
        raise InvalidInput(f"pred_iou_thresh must be >= {d.min_pred_iou_thresh}", "pred_iou_thresh_too_low")
    stability_score_thresh = _or_default(opts.stability_score_thresh, d.stability_score_thresh)
    if stability_score_thresh < d.min_stability_score_thresh:
        raise InvalidInput(f"stability_score_thresh must be >= {d.min_stability_score_thresh}",
                           "stability_score_thresh_too_low")
    return AutoKnobs(
        points_per_side=points_per_side,
        points_per_batch=min(_or_default(opts.points_per_batch, d.points_per_batch), d.points_per_batch),
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        stability_score_offset=d.stability_score_offset,
        box_nms_thresh=_or_default(opts.box_nms_thresh, d.box_nms_thresh),
        min_mask_area=_or_default(opts.min_mask_area, d.min_mask_area),
        max_masks=min(_or_default(opts.max_masks, d.max_masks), d.max_masks),
    )


def plan_click_output(out: ClickResponse, max_output_pixels: int) -> tuple[bool, Truncation | None]:
    """The output budget of a click answer: (best_only, truncation). Every candidate mask fits: (False, None).
    Else, if one mask per object fits, multimask candidates are left out: (True, Truncation). Else raises
    OutputTooLarge (413 output_too_large): objects were asked for one by one, none is dropped."""
    h, w = out.original_hw
    fit = masks_that_fit(h, w, max_output_pixels)
    total = sum(len(o.scores) for o in out.objects)
    if total <= fit:
        return False, None
    if len(out.objects) <= fit:
        return True, Truncation(total - len(out.objects))
    raise OutputTooLarge(f"{len(out.objects)} masks of {w}x{h} exceed limits.max_output_pixels "
                         f"({max_output_pixels}); send fewer objects", "output_too_large")


def encode_objects(out: ClickResponse, opts: ClickOptions, *, best_only: bool = False,
                   cancel: CancelToken | None = None) -> list[ClickObjectResult]:
    """Replica output -> `objects` of a ClickImageResponse: per object the best mask (highest predicted IoU),
    with multimask_output all candidates best first (unless best_only: plan_click_output left them out).
    Masks: logits upsampled to (H,W), > 0, COCO RLE, one at a time (`cancel` checked before each)."""
    h, w = out.original_hw
    results = []
    for i, obj in enumerate(out.objects):
        order = np.argsort(-obj.scores, kind="stable")
        if best_only:
            order = order[:1]
        cands = []
        for k in order:
            if cancel is not None:
                cancel.check()
            mask = encode_mask(obj.mask_logits[k], h, w, 0.0)  # a MaskWindow (crop)
            cands.append(MaskCandidate(
                score=round(float(obj.scores[k]), 6), box=mask.box_xyxy, area=mask.area, mask=RleMask(**mask.rle()),
                mask_input=encode_mask_input(obj.mask_logits[k]) if opts.return_mask_input else None))
        multi = opts.multimask_output and not best_only
        best = cands[0]  # its fields as they are (no model_dump -> validate round trip of the RLE)
        results.append(ClickObjectResult(id=i, object_score=round(float(obj.object_score), 6), score=best.score,
                                         box=best.box, area=best.area, mask=best.mask, mask_input=best.mask_input,
                                         candidates=cands if multi else None))
    return results


def _as_model(response: ClickImageResponse) -> ClickImageResponse:
    return response


def _as_json(response: ClickImageResponse) -> bytes:
    """The wire JSON of a click answer (the route's response_model_exclude_none), as bytes: pydantic-core's
    to_json, which model_dump_json decodes to a str that the Response would encode again."""
    return type(response).__pydantic_serializer__.to_json(response, exclude_none=True)


def fit_auto(out: AutoResponse, max_output_pixels: int) -> tuple[AutoResponse, Truncation | None]:
    """Replica output (sorted by score) -> its highest-scoring masks that fit in the output budget, plus what
    was left out (None: nothing)."""
    h, w = out.original_hw
    fit = masks_that_fit(h, w, max_output_pixels)
    n = len(out.scores)
    if n <= fit:
        return out, None
    kept = dataclasses.replace(out, mask_logits=out.mask_logits[:fit], scores=out.scores[:fit],
                               stability=out.stability[:fit], boxes_xyxy=out.boxes_xyxy[:fit],
                               points_xy=out.points_xy[:fit])
    return kept, Truncation(n - fit)


def encode_auto(out: AutoResponse, sort_by: str, *, cancel: CancelToken | None = None) -> list[AutoMask]:
    """Replica output -> `masks` of an AutoImageResponse (RLE at the original size), sorted by score or area.
    One mask at a time (`cancel` checked before each); apply the output budget first (fit_auto)."""
    h, w = out.original_hw
    masks = []
    for probs in out.mask_logits:
        if cancel is not None:
            cancel.check()
        masks.append(encode_mask(probs, h, w, 0.0))  # MaskWindows (crops)
    order = list(range(len(out.scores)))
    if sort_by == "area":
        order.sort(key=lambda k: masks[k].area, reverse=True)
    return [AutoMask(id=i, score=round(float(out.scores[k]), 6), stability_score=round(float(out.stability[k]), 6),
                     box=[float(v) for v in out.boxes_xyxy[k]], area=masks[k].area,
                     point=[round(float(v), 2) for v in out.points_xy[k]], mask=RleMask(**masks[k].rle()))
            for i, k in enumerate(order)]


class ClickPipeline:
    """Uploads' precompute, clicks and automatic masks against the ClickSegmenter deployment.

    `images` is the replica's ImageLibrary (load_id/decode); `model` the ClickSegmenter client.
    """

    def __init__(self, model: ModelClient, images: ImageLibrary, cfg: ClickConfig):
        self.model = model
        self.images = images
        self.cfg = cfg

    def cache_key(self, image_id: str) -> str:
        """The replica-side key of an image's embedding: tenant-scoped, so a tenant can never be answered
        from another tenant's cached image (a hit skips the storage read that checks ownership)."""
        return f"{self.images.tenant}/{image_id}"

    def _routing_key(self, key: str) -> str | None:
        """The ConsistentHashRouter key that sends `key` to the replica that caches it (None: no affinity)."""
        return key if self.cfg.routing == "consistent_hash" else None

    async def forget(self, image_id: str) -> bool:
        """Drop a deleted image's embedding from the replica that caches it (the one its routing key leads to;
        with `click.routing: default` any replica may hold it, and only the one the call reaches drops it).
        True if that replica held it."""
        key = self.cache_key(image_id)
        return bool(await self.model.call("forget", key, routing_key=self._routing_key(key)))

    async def pixels(self, image: DecodedImage) -> np.ndarray:
        info = await self.model.info()
        return await run_cpu(resize_square, image.rgb, info.image_size)

    async def precompute(self, image: DecodedImage) -> bool:
        """Cache `image`'s embedding on its replica. Returns True if it was cached already."""
        pixels = await self.pixels(image)
        key = self.cache_key(image.sha256)
        return await self.model.call("embed", key, pixels, (image.height, image.width),
                                     routing_key=self._routing_key(key))

    async def _call(self, method: str, request, load: Callable[[], Awaitable[DecodedImage]],
                    timings: dict[str, float], expect: type[R]) -> R:
        """The cache protocol: without pixels first; on EmbeddingMiss load + resize, then with pixels."""
        routing_key = self._routing_key(request.cache_key)
        t0 = time.perf_counter()
        out = await self.model.call(method, request, routing_key=routing_key)
        timings["model_ms"] = (time.perf_counter() - t0) * 1e3
        if isinstance(out, expect):
            return out
        t1 = time.perf_counter()
        image = await load()
        pixels = await self.pixels(image)
        request = dataclasses.replace(request, pixels=pixels, original_hw=(image.height, image.width))
        t2 = time.perf_counter()
        out = await self.model.call(method, request, routing_key=routing_key)
        t3 = time.perf_counter()
        timings.update(load_ms=(t2 - t1) * 1e3, model_ms=timings["model_ms"] + (t3 - t2) * 1e3)
        if isinstance(out, EmbeddingMiss):  # cannot happen: the request carried pixels
            raise Unavailable("the click replica did not accept the image, retry", "model_unavailable")
        return out

    def _loader(self, image_id: str, image: DecodedImage | None) -> Callable[[], Awaitable[DecodedImage]]:
        """Loads the image only on a cache miss: the request's own decoded image, else the stored one."""
        async def load() -> DecodedImage:
            if image is not None:
                return image
            return await self.images.decode(await self.images.load_id(image_id))
        return load

    async def segment(self, image_id: str, image: DecodedImage | None, opts: ClickOptions,
                      request_id: str) -> ClickImageResponse:
        """Clicks on one image. `image`: the decoded image when the request carried it (already stored under
        `image_id`, its sha256), else None (loaded from storage only on a cache miss). Call
        validate_objects first (before any image I/O)."""
        return await self._segment(image_id, image, opts, request_id, _as_model)

    async def segment_json(self, image_id: str, image: DecodedImage | None, opts: ClickOptions,
                           request_id: str) -> bytes:
        """`segment`'s answer as the route sends it: the JSON of the ClickImageResponse without null fields
        (byte for byte `model_dump_json(exclude_none=True)`), built and serialised in the same step as the mask
        encoding (on the CPU pool, or on the event loop up to INLINE_ENCODE_PIXELS): at most one thread
        hand-off per click instead of two, and no second validation."""
        return await self._segment(image_id, image, opts, request_id, _as_json)

    async def _segment(self, image_id: str, image: DecodedImage | None, opts: ClickOptions, request_id: str,
                       finish: Callable[[ClickImageResponse], _T]) -> _T:
        t0 = time.perf_counter()
        info = await self.model.info()
        objects = tuple(to_click_object(o, i, info.mask_size) for i, o in enumerate(opts.objects))
        timings: dict[str, float] = {}
        request = ClickRequest(self.cache_key(image_id), objects, multimask_output=opts.multimask_output)
        out = await self._call("segment", request, self._loader(image_id, image), timings, ClickResponse)
        t1 = time.perf_counter()
        best_only, truncation = plan_click_output(out, self.images.limits.max_output_pixels)

        def answer(cancel: CancelToken) -> _T:  # encode, then build (and serialise)
            objs = encode_objects(out, opts, best_only=best_only, cancel=cancel)
            t2 = time.perf_counter()
            timings.update(encode_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3, **out.timings_ms)
            h, w = out.original_hw
            return finish(ClickImageResponse(
                request_id=request_id, image_id=image_id, width=w, height=h, objects=objs, cache_hit=out.cache_hit,
                timings_ms=round_ms(timings), batch_size=out.batch_size, **truncation_fields(truncation)))

        masks = sum(len(o.scores) if opts.multimask_output and not best_only else 1 for o in out.objects)
        if masks * out.original_hw[0] * out.original_hw[1] <= INLINE_ENCODE_PIXELS:
            return answer(CancelToken())  # a small answer: the thread hand-off would cost more than the work
        return await run_cancellable(answer)

    def auto_request(self, image_id: str, opts: AutoOptions) -> AutoRequest:
        return AutoRequest(self.cache_key(image_id), **auto_knobs(opts, self.cfg))

    async def generate_masks(self, image_id: str, image: DecodedImage | None, opts: AutoOptions,
                             request_id: str) -> AutoImageResponse:
        """Automatic masks for one image (`image` as in `segment`)."""
        t0 = time.perf_counter()
        request = self.auto_request(image_id, opts)
        timings: dict[str, float] = {}
        out = await self._call("generate_masks", request, self._loader(image_id, image), timings, AutoResponse)
        t1 = time.perf_counter()
        out, truncation = fit_auto(out, self.images.limits.max_output_pixels)
        masks = await run_cancellable(encode_auto, out, opts.sort_by)
        t2 = time.perf_counter()
        timings.update(encode_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3, **out.timings_ms)
        h, w = out.original_hw
        return AutoImageResponse(request_id=request_id, image_id=image_id, width=w, height=h, masks=masks,
                                 candidates=out.candidates, cache_hit=out.cache_hit, timings_ms=round_ms(timings),
                                 **truncation_fields(truncation))
