"""Concept segmentation on a CPU replica: validate -> decode -> resize -> GPU replica -> encode.

Used by the HTTP route (POST /v1/pcs/image) and by background jobs, so both give identical results.
Only compact data crosses to the GPU replica (uint8 (S,S,3) pixels + prompts); only kept instances come
back (boxes, scores, low-res mask probabilities). CPU-heavy steps run on the replica's bounded CPU pool
(pipelines/pools.py) so the event loop keeps serving other requests; mask encoding stops between instances
once the request is gone. The answer stays within the output budget (pipelines/output_budget.py): at most
limits.max_output_pixels of full-size masks (the highest-scoring instances; `truncated` says so) and an
overlay of at most limits.max_overlay_pixels. No torch here.
"""

from __future__ import annotations

import base64
import dataclasses
import time

import numpy as np

from serve_app.codecs.image_decode import DecodedImage, resize_square
from serve_app.codecs.masks import encode_mask
from serve_app.config import LimitsConfig
from serve_app.errors import InvalidInput
from serve_app.model.types import ConceptInstances, ConceptPrompt, ConceptRequest, ConceptResponse, ModelInfo
from serve_app.pipelines.image_library import ImageLibrary
from serve_app.pipelines.output_budget import (
    OverlayCanvas,
    Truncation,
    mask_cost,
    masks_that_fit,
    top_scores,
    truncation_fields,
)
from serve_app.pipelines.pools import CancelToken, run_cancellable, run_cpu
from serve_app.pipelines.remote import ModelClient
from serve_app.pipelines.timings import round_ms
from serve_app.schemas import (
    ConceptImageResponse,
    ConceptOptions,
    ConceptResult,
    ConceptUrlResponse,
    Instance,
    Prompt,
    RleMask,
)


def validate_options(opts: ConceptOptions, limits: LimitsConfig) -> None:
    """Checks that need config limits but not the image. Raises InvalidInput with a specific code."""
    if not opts.prompts:
        raise InvalidInput("at least one prompt is required", "no_prompts")
    if len(opts.prompts) > limits.max_prompts:
        raise InvalidInput(f"{len(opts.prompts)} prompts, limit {limits.max_prompts}", "too_many_prompts")
    if opts.max_instances is not None and opts.max_instances > limits.max_instances:
        raise InvalidInput(f"max_instances limit is {limits.max_instances}", "max_instances_too_large")
    for i, p in enumerate(opts.prompts):
        if p.text is not None:
            if not p.text.strip():
                raise InvalidInput(f"prompts[{i}].text is empty", "empty_text")
            if len(p.text) > limits.max_text_chars:
                raise InvalidInput(f"prompts[{i}].text is over {limits.max_text_chars} characters", "text_too_long")
        if p.text is None and not p.boxes:
            raise InvalidInput(f"prompts[{i}] needs text or boxes", "empty_prompt")
        if p.boxes is not None:
            if len(p.boxes) > limits.max_boxes_per_prompt:
                raise InvalidInput(f"prompts[{i}] has over {limits.max_boxes_per_prompt} boxes", "too_many_boxes")
            if p.box_labels is not None and len(p.box_labels) != len(p.boxes):
                raise InvalidInput(f"prompts[{i}]: {len(p.box_labels)} box_labels for {len(p.boxes)} boxes",
                                   "box_labels_mismatch")
        elif p.box_labels is not None:
            raise InvalidInput(f"prompts[{i}] has box_labels but no boxes", "box_labels_mismatch")


def to_model_prompt(p: Prompt, index: int, width: int, height: int) -> ConceptPrompt:
    """Wire prompt -> ConceptPrompt with boxes checked against the image and normalised to cxcywh."""
    if not p.boxes:
        assert p.text is not None  # validate_options: a prompt without boxes has text
        return ConceptPrompt(text=p.text.strip())
    boxes = np.asarray(p.boxes, dtype=np.float64)
    x0, y0, x1, y1 = boxes.T
    if (x1 <= x0).any() or (y1 <= y0).any():
        raise InvalidInput(f"prompts[{index}]: boxes need x0 < x1 and y0 < y1", "invalid_box")
    if (x0 < 0).any() or (y0 < 0).any() or (x1 > width).any() or (y1 > height).any():
        raise InvalidInput(f"prompts[{index}]: boxes must lie inside the {width}x{height} image", "box_outside_image")
    cxcywh = np.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], axis=1)
    labels = np.asarray(p.box_labels if p.box_labels is not None else [1] * len(p.boxes), dtype=np.int64)
    text = p.text.strip() if p.text is not None else None
    return ConceptPrompt(text=text, boxes_cxcywh=cxcywh.astype(np.float32), box_labels=labels)


def build_request(image: DecodedImage, opts: ConceptOptions, info: ModelInfo, limits: LimitsConfig,
                  tenant: str = "default") -> ConceptRequest:
    """The GPU replica's input for one decoded image (runs the resize: call it off the event loop). No prompt
    asks for more instances than the output budget can hold (fit_instances keeps the best over all prompts,
    a subset of every prompt's best `fit`), so no more low-res masks than needed cross back."""
    prompts = tuple(to_model_prompt(p, i, image.width, image.height) for i, p in enumerate(opts.prompts))
    fit = max(1, masks_that_fit(image.height, image.width, limits.max_output_pixels, mask_cost(opts.mask_format)))
    return ConceptRequest(
        pixels=resize_square(image.rgb, info.image_size),
        original_hw=(image.height, image.width),
        prompts=prompts,
        threshold=opts.threshold,
        max_instances=min(opts.max_instances or limits.max_instances, fit),
        tenant=tenant,
    )


def fit_instances(out: ConceptResponse, height: int, width: int, max_output_pixels: int,
                  cost: int = 1) -> tuple[ConceptResponse, Truncation | None]:
    """Model output -> the same within the output budget: the highest-scoring instances over all prompts whose
    full-size masks (height x width each, counted `cost` times: output_budget.mask_cost) fit in
    max_output_pixels, plus what was left out (None: nothing)."""
    keep = top_scores([r.scores for r in out.results], masks_that_fit(height, width, max_output_pixels, cost))
    omitted = sum(len(r.scores) - len(k) for r, k in zip(out.results, keep))
    if omitted == 0:
        return out, None
    results = [ConceptInstances(r.scores[k], r.boxes_xyxy[k], r.mask_probs[k]) for r, k in zip(out.results, keep)]
    return dataclasses.replace(out, results=results), Truncation(omitted)


def encode_response(image: DecodedImage, opts: ConceptOptions, out: ConceptResponse, *,
                    max_overlay_pixels: int | None = None,
                    cancel: CancelToken | None = None) -> tuple[list[ConceptResult], bytes | None]:
    """Model output -> (the `results` of a ConceptImageResponse, the overlay PNG if asked for).

    One instance at a time: its mask is encoded, blended into the overlay and dropped before the next one
    (`cancel`, if given, is checked before each). The overlay is at most max_overlay_pixels (None: the image's
    size), see OverlayCanvas. Apply the output budget first (fit_instances)."""
    results: list[ConceptResult] = []
    overlay = OverlayCanvas(image.rgb, max_overlay_pixels) if opts.overlay else None
    next_id = 0
    for p_idx, (prompt, inst) in enumerate(zip(opts.prompts, out.results)):
        label = prompt.text or "visual"
        instances = []
        for k in range(len(inst.scores)):
            if cancel is not None:
                cancel.check()
            box = [round(float(v), 2) for v in inst.boxes_xyxy[k]]
            mask = encode_mask(inst.mask_probs[k], image.height, image.width, opts.mask_threshold)  # one at a time
            instance = Instance(id=next_id, score=round(float(inst.scores[k]), 6), box=box, area=mask.area)
            if opts.mask_format == "rle":
                instance.mask = RleMask(**mask.rle())
            elif opts.mask_format == "polygon":
                instance.polygons = mask.polygons()
            instances.append(instance)
            if overlay is not None:
                drawn = (encode_mask(inst.mask_probs[k], overlay.height, overlay.width, opts.mask_threshold)
                         if overlay.scaled else mask)
                overlay.add(drawn, box, f"{label} {inst.scores[k]:.2f}", p_idx)
            next_id += 1
        results.append(ConceptResult(prompt=prompt, instances=instances))
    return results, (overlay.png() if overlay is not None else None)


def encode_within_budget(image: DecodedImage, opts: ConceptOptions, out: ConceptResponse, limits: LimitsConfig, *,
                         cancel: CancelToken | None = None) -> tuple[list[ConceptResult], bytes | None,
                                                                     Truncation | None]:
    """fit_instances, then encode_response (in one worker-thread call): (results, overlay PNG, truncation)."""
    out, truncation = fit_instances(out, image.height, image.width, limits.max_output_pixels,
                                    mask_cost(opts.mask_format))
    results, overlay_png = encode_response(image, opts, out, max_overlay_pixels=limits.max_overlay_pixels,
                                           cancel=cancel)
    return results, overlay_png, truncation


def with_inline_overlay(response: ConceptImageResponse, overlay_png: bytes | None) -> ConceptImageResponse:
    """The response with the overlay PNG base64-encoded in `overlay_png_base64` (if there is one)."""
    if overlay_png is not None:
        response.overlay_png_base64 = base64.b64encode(overlay_png).decode("ascii")
    return response


def url_response(response: ConceptImageResponse, urls: dict[str, str]) -> ConceptUrlResponse:
    """The answer of `"return": "url"`: the response's summary plus where its full JSON was stored."""
    summary = response.model_dump(include={"request_id", "image_id", "width", "height", "timings_ms", "batch_size",
                                           "truncated", "truncated_reason", "omitted_masks"})
    return ConceptUrlResponse(**summary, **urls)


class ConceptPipeline:
    """Runs one concept-segmentation request end to end against the ConceptSegmenter deployment."""

    def __init__(self, model: ModelClient, images: ImageLibrary, limits: LimitsConfig):
        self.model = model
        self.images = images
        self.limits = limits

    async def segment(self, data: bytes, opts: ConceptOptions, request_id: str) -> tuple[ConceptImageResponse,
                                                                                          bytes | None]:
        """Bytes of an image + options -> (the response without the inline overlay, the overlay PNG if
        `opts.overlay`). Call validate_options first (before any image I/O). Raises Sam3Error subclasses."""
        t0 = time.perf_counter()
        image = await self.images.decode(data)
        info = await self.model.info()
        request = await run_cpu(build_request, image, opts, info, self.limits, self.images.tenant)
        t1 = time.perf_counter()
        out: ConceptResponse = await self.model.call("segment", request)
        t2 = time.perf_counter()
        results, overlay_png, truncation = await run_cancellable(encode_within_budget, image, opts, out, self.limits)
        t3 = time.perf_counter()
        timings = {"decode_ms": (t1 - t0) * 1e3, "model_ms": (t2 - t1) * 1e3, "encode_ms": (t3 - t2) * 1e3,
                   "total_ms": (t3 - t0) * 1e3, **out.timings_ms}
        response = ConceptImageResponse(request_id=request_id, image_id=image.sha256, width=image.width,
                                        height=image.height, results=results, timings_ms=round_ms(timings),
                                        batch_size=out.batch_size, **truncation_fields(truncation))
        return response, overlay_png
