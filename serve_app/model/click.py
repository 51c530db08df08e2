"""Visual-prompt runner: clicks, boxes and previous masks through Sam3TrackerModel, with an embedding cache.

Per image the vision encoder runs once; its three feature levels are kept in a byte-bounded LRU
(EmbeddingCache) keyed by image id, and every click on that image runs only the prompt encoder and mask
decoder. The protocol that keeps correctness independent of routing:

    segment_batch([ClickRequest(cache_key, objects)])            -> ClickResponse (cached) or EmbeddingMiss
    segment_batch([ClickRequest(cache_key, objects, pixels, hw)]) -> ClickResponse (encodes, then caches)

For a batch of requests the runner
1. resolves each request's embedding (cache, or pixels; a miss without pixels answers EmbeddingMiss);
2. checks every prompt against its image's original size (errors answer that request only);
3. encodes all distinct uncached images in ONE vision-encoder call (uint8 (B,S,S,3) -> normalised);
4. decodes all objects of all requests in mask-decoder calls grouped by prompt structure (number of
   points, box or not, mask input or not, multimask or not) — no padding tokens, so a result never
   depends on its batch neighbours — each object paired with its image's embedding.

Coordinates arrive in ORIGINAL pixels and are scaled here to the model's square input frame
(x * S / W, y * S / H; the image was squashed to S x S). Outputs are low-res logits (float16, m x m,
whole image) that the CPU ingress upsamples and encodes.

Automatic masks (`generate_masks`) run serve_app.model.automatic on the same cached embeddings.

Errors follow the batch protocol of serve_app.model.protocols: a request that cannot run gets its own answer
(EmbeddingMiss / InvalidInput), and the batch runs under runtime.run_isolated (an out-of-memory splits it;
what still fails alone answers alone: 503 model_out_of_memory, or 500 model_error).

No Ray, no FastAPI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_app.config import ClickConfig, ModelConfig
from serve_app.errors import InvalidInput, Sam3Error
from serve_app.model.automatic import AutomaticMaskGenerator, check_auto_request
from serve_app.model.embedding_cache import EmbeddingCache
from serve_app.model.loading import TRACKER_KEY_MAPPING, Placement, load_model
from serve_app.model.prompt_geometry import check_points_and_box
from serve_app.model.protocols import ClickAnswer
from serve_app.model.runtime import BatchCounters, DeviceHealth, normalize_pixels, run_isolated, to_device
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    ClickObject,
    ClickRequest,
    ClickResponse,
    EmbeddingMiss,
    ModelInfo,
    ObjectMasks,
)


@dataclass
class ClickCounters(BatchCounters):
    """Counters of model calls since start (or the last reset). `vision_calls` counts vision-encoder
    forwards (one per batch that had uncached images), `images_encoded` the images they covered."""

    objects: int = 0
    vision_calls: int = 0
    images_encoded: int = 0
    decoder_calls: int = 0
    misses_returned: int = 0
    auto_calls: int = 0


@dataclass
class _Embedding:
    """One image's cached state: the three feature levels (each (1,C,h,w) on the device) + (H, W)."""

    levels: tuple[torch.Tensor, ...]
    original_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


@dataclass(frozen=True)
class _Pixels:
    """Pixels of a batch request, checked: uint8 (S,S,3) and the original (H, W) they came with."""

    cache_key: str
    pixels: np.ndarray
    original_hw: tuple[int, int]


def check_object(obj: ClickObject, index: int, original_hw: tuple[int, int], mask_size: int) -> None:
    """Raise InvalidInput when a prompt does not fit its image (ORIGINAL pixel frame, H x W)."""
    check_points_and_box(obj.points_xy, obj.point_labels, obj.box_xyxy, f"objects[{index}]", original_hw)
    if obj.mask_logits is not None and obj.mask_logits.shape != (mask_size, mask_size):
        raise InvalidInput(f"objects[{index}].mask_input is {obj.mask_logits.shape}, this model needs "
                           f"({mask_size}, {mask_size})", "invalid_mask_input")


@dataclass(frozen=True)
class _Item:
    request: int
    obj: int


class ClickRunner:
    """Owns a Sam3TrackerModel on one device and the embedding cache of this replica (implements
    ClickRunnerProtocol). `segment_batch` and `generate_masks` may be called from several threads at once:
    the model is read-only; counters and cache are locked."""

    _health: DeviceHealth | None = None  # made by the first check_health

    def __init__(self, model, placement: Placement, model_id: str, *, cache_bytes: int,
                 max_objects_per_forward: int = 64):
        self.model = model
        self.placement = placement
        self.max_objects_per_forward = max_objects_per_forward
        self.cache = EmbeddingCache(cache_bytes)
        self.counters = ClickCounters()
        pe = model.prompt_encoder
        self.info = ModelInfo(
            model_id=model_id,
            image_size=int(pe.input_image_size),
            mask_size=int(pe.mask_input_size[0]),
            device=str(placement.device),
            dtype=str(placement.dtype).removeprefix("torch."),
        )
        self.automatic = AutomaticMaskGenerator(model, placement, self.info.image_size, self.info.mask_size,
                                                on_decoder_call=lambda: self.counters.add(decoder_calls=1))

    @classmethod
    def from_config(cls, model: ModelConfig, click: ClickConfig | None = None) -> ClickRunner:
        """Sam3TrackerModel from the same checkpoint as the concept model (`tracker_model.*` weights)."""
        from transformers import Sam3TrackerModel

        click = click or ClickConfig()
        tracker, placement = load_model(Sam3TrackerModel, model, compile_targets=("vision_encoder",),
                                        key_mapping=TRACKER_KEY_MAPPING)
        return cls(tracker, placement, model.model_id, cache_bytes=click.cache_bytes,
                   max_objects_per_forward=click.max_objects_per_forward)

    # ------------------------------------------------------------------ public
    def segment_batch(self, requests: list[ClickRequest]) -> list[ClickAnswer]:
        """Answer each request: ClickResponse, EmbeddingMiss (no pixels, not cached) or the Sam3Error of
        that request alone (invalid, or out of memory even alone). Output i belongs to request i; one bad
        request never fails the others."""
        self.counters.note_call(len(requests))
        return run_isolated(self._segment, requests, self.placement, self.counters, "click segmentation")

    @torch.inference_mode()
    def _segment(self, requests: list[ClickRequest]) -> list[ClickAnswer]:
        t0 = time.perf_counter()
        out: list[ClickResponse | EmbeddingMiss | Sam3Error | None] = [None] * len(requests)
        embeddings, hits = self._resolve(requests, out)
        t_vision = time.perf_counter()
        items = [_Item(r, o) for r, req in enumerate(requests) if out[r] is None for o in range(len(req.objects))]
        decoded: dict[_Item, ObjectMasks] = {}
        for chunk in self._chunks(requests, items):
            decoded.update(self._decode(requests, chunk, embeddings))
        t_end = time.perf_counter()
        timings = {"vision_ms": (t_vision - t0) * 1e3, "decoder_ms": (t_end - t_vision) * 1e3}
        self.counters.note_batch(len(requests))
        self.counters.add(objects=len(items), misses_returned=sum(isinstance(x, EmbeddingMiss) for x in out))
        answers: list[ClickAnswer] = []
        for r, req in enumerate(requests):
            done = out[r]
            answers.append(done if done is not None else ClickResponse(
                objects=[decoded[_Item(r, o)] for o in range(len(req.objects))],
                original_hw=embeddings[req.cache_key].original_hw,
                cache_hit=hits[r], timings_ms=timings, batch_size=len(requests),
            ))
        return answers

    def generate_masks(self, req: AutoRequest) -> AutoResponse | EmbeddingMiss:
        """Automatic mask generation on one image (see AutoRequest and serve_app.model.automatic).
        Raises InvalidInput for bad knobs or pixels, ModelOutOfMemory (503) when the device runs out of
        memory (its cached memory is released first: the replica keeps serving)."""
        def one(reqs: list[AutoRequest]) -> list[AutoResponse | EmbeddingMiss | Sam3Error]:
            return [self._generate_masks(reqs[0])]

        answer = run_isolated(one, [req], self.placement, self.counters, "automatic mask generation")[0]
        if isinstance(answer, Sam3Error):
            raise answer
        return answer

    def _generate_masks(self, req: AutoRequest) -> AutoResponse | EmbeddingMiss:
        check_auto_request(req)
        t0 = time.perf_counter()
        out: list[ClickResponse | EmbeddingMiss | Sam3Error | None] = [None]
        with torch.inference_mode():
            embeddings, hits = self._resolve([ClickRequest(req.cache_key, (), req.pixels, req.original_hw)], out)
        if isinstance(out[0], Sam3Error):
            raise out[0]
        if isinstance(out[0], EmbeddingMiss):
            self.counters.add(misses_returned=1)
            return out[0]
        emb = embeddings[req.cache_key]
        t_vision = time.perf_counter()
        result = self.automatic.generate(emb.levels, emb.original_hw, req, cache_hit=hits[0])
        self.counters.add(auto_calls=1)
        result.timings_ms = {"vision_ms": (t_vision - t0) * 1e3, **result.timings_ms}
        return result

    def check_health(self) -> None:
        if self._health is None:
            self._health = DeviceHealth(self.placement)
        self._health.check()

    def debug_stats(self) -> dict[str, Any]:
        cache = self.cache.stats().as_dict()
        return {**self.counters.snapshot(), **{f"cache_{k}": v for k, v in cache.items()},
                "runtime": self.placement.describe()}

    def debug_reset(self) -> None:
        """Zero the counters and empty the embedding cache (the next click on any image is cold)."""
        self.counters.reset()
        self.cache.clear()
        self.cache.reset_stats()

    def forget(self, cache_key: str) -> bool:
        """Drop `cache_key`'s cached embedding (its image was deleted); True if this replica held it."""
        return self.cache.discard(cache_key)

    def resize_cache(self, max_bytes: int) -> int:
        return len(self.cache.resize(max_bytes))

    # ----------------------------------------------------------------- stages
    def _resolve(
        self, requests: list[ClickRequest], out: list[ClickResponse | EmbeddingMiss | Sam3Error | None]
    ) -> tuple[dict[str, _Embedding], list[bool]]:
        """Embedding per image id (cache, or one vision call for all uncached images that came with pixels
        in this batch); fills `out[r]` with EmbeddingMiss / InvalidInput for requests that cannot run."""
        providers: dict[str, _Pixels] = {}  # image id -> the pixels a request of this batch carries
        for r, req in enumerate(requests):
            if req.pixels is not None:
                try:
                    provided = self._check_pixels(req.cache_key, req.pixels, req.original_hw)
                except InvalidInput as exc:
                    out[r] = exc
                    continue
                providers.setdefault(req.cache_key, provided)
        embeddings: dict[str, _Embedding] = {}
        hits = [False] * len(requests)
        looked_up: set[str] = set()
        for r, req in enumerate(requests):
            if out[r] is not None:
                continue
            if req.cache_key not in looked_up:
                looked_up.add(req.cache_key)
                cached = self.cache.get(req.cache_key)
                if cached is not None:
                    embeddings[req.cache_key] = cached
            emb = embeddings.get(req.cache_key)
            if emb is not None:
                hits[r] = True
                hw = emb.original_hw
            elif req.cache_key in providers:
                hw = providers[req.cache_key].original_hw
            else:
                out[r] = EmbeddingMiss(req.cache_key)
                continue
            try:
                for i, obj in enumerate(req.objects):
                    check_object(obj, i, hw, self.info.mask_size)
            except InvalidInput as exc:
                out[r] = exc
        needed = {req.cache_key for r, req in enumerate(requests) if out[r] is None and req.cache_key not in embeddings}
        to_encode = [providers[k] for k in sorted(needed)]
        if to_encode:
            embeddings.update(self._encode(to_encode))
        return embeddings, hits

    def _check_pixels(self, cache_key: str, pixels: np.ndarray, original_hw: tuple[int, int] | None) -> _Pixels:
        size = self.info.image_size
        if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
            raise InvalidInput(f"pixels must be uint8 ({size},{size},3), got {pixels.dtype} {pixels.shape}",
                               "invalid_pixels")
        if original_hw is None or min(original_hw) < 1:
            raise InvalidInput("original_hw is required with pixels", "invalid_pixels")
        return _Pixels(cache_key, pixels, original_hw)

    def _encode(self, requests: list[_Pixels]) -> dict[str, _Embedding]:
        """uint8 (B,S,S,3) -> one vision-encoder call -> per image a (1,C,h,w) copy of each level, cached."""
        pixels = normalize_pixels([r.pixels for r in requests], self.placement)
        self.counters.add(vision_calls=1, images_encoded=len(requests))
        levels = self.model.get_image_embeddings(pixel_values=pixels)
        result = {}
        for i, req in enumerate(requests):
            h, w = req.original_hw
            # clone: a view would keep the whole batch's storage alive and break the cache's byte accounting
            emb = _Embedding(tuple(t[i : i + 1].clone() for t in levels), (int(h), int(w)))
            self.cache.put(req.cache_key, emb, emb.nbytes)
            result[req.cache_key] = emb
        return result

    def _chunks(self, requests: list[ClickRequest], items: list[_Item]):
        """Mask-decoder calls: objects with equal (signature, multimask) together, at most
        max_objects_per_forward each."""
        groups: dict[tuple, list[_Item]] = {}
        for it in items:
            req = requests[it.request]
            groups.setdefault((req.objects[it.obj].signature(), req.multimask_output), []).append(it)
        for key in sorted(groups):
            group = groups[key]
            for i in range(0, len(group), self.max_objects_per_forward):
                yield group[i : i + self.max_objects_per_forward]

    def _decode(self, requests, chunk: list[_Item], embeddings: dict[str, _Embedding]) -> dict[_Item, ObjectMasks]:
        """One mask-decoder call: batch dim = objects (each with its image's embedding), one object each."""
        placement, size = self.placement, self.info.image_size
        objs = [requests[it.request].objects[it.obj] for it in chunk]
        embs = [embeddings[requests[it.request].cache_key] for it in chunk]
        levels = [torch.cat([e.levels[k] for e in embs]) for k in range(len(embs[0].levels))]
        # ORIGINAL pixels -> model input frame (S x S square)
        scale = torch.tensor([[size / e.original_hw[1], size / e.original_hw[0]] for e in embs], dtype=torch.float32)
        kwargs: dict[str, torch.Tensor] = {}
        if objs[0].points_xy is not None:  # chunks are homogeneous (see _chunks)
            pts = torch.from_numpy(np.stack([np.asarray(o.points_xy, np.float32) for o in objs]))  # (B,n,2)
            kwargs["input_points"] = to_device((pts * scale[:, None, :]).unsqueeze(1), placement)
            labels = np.stack([np.asarray(o.point_labels, np.int64) for o in objs])
            kwargs["input_labels"] = to_device(torch.from_numpy(labels).unsqueeze(1), placement)
        if objs[0].box_xyxy is not None:
            boxes = torch.from_numpy(np.stack([np.asarray(o.box_xyxy, np.float32) for o in objs]))  # (B,4)
            kwargs["input_boxes"] = to_device((boxes * scale.repeat(1, 2)).unsqueeze(1), placement)
        if objs[0].mask_logits is not None:
            masks = torch.from_numpy(np.stack([np.asarray(o.mask_logits, np.float32) for o in objs]))
            kwargs["input_masks"] = to_device(masks.unsqueeze(1).to(placement.dtype), placement)
        multimask = requests[chunk[0].request].multimask_output
        self.counters.add(decoder_calls=1)
        res = self.model(image_embeddings=levels, multimask_output=multimask, **kwargs)
        logits = res.pred_masks[:, 0].to(torch.float16).cpu().numpy()  # (B,k,m,m)
        scores = res.iou_scores[:, 0].float().cpu().numpy()  # (B,k)
        obj_scores = res.object_score_logits[:, 0, 0].float().sigmoid().cpu().numpy()  # (B,)
        return {it: ObjectMasks(mask_logits=logits[i], scores=scores[i].astype(np.float32),
                                object_score=float(obj_scores[i]))
                for i, it in enumerate(chunk)}
