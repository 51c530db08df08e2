"""Concept segmentation runner: many images x many prompts through Sam3Model with shared encodings.

For a batch of ConceptRequests the runner
1. encodes all images in ONE vision-encoder call: pixels uint8 (B,S,S,3) -> normalised (B,3,S,S);
2. encodes each distinct prompt text once (an LRU of text embeddings serves repeated concepts);
3. runs the DETR detector + mask decoder over the (image, prompt) pairs, gathering each pair's vision
   features by index, in chunks of `max_pairs_per_forward`. Pairs with exemplar boxes and pairs without
   run in separate chunks: adding the geometry encoder changes the prompt sequence, so mixing them would
   make a prompt's result depend on its batch neighbours;
4. keeps, per pair, instances with score > threshold (score = sigmoid(logit) * sigmoid(presence)), at most
   max_instances, highest first, and returns compact numpy outputs (boxes in original pixels, low-res mask
   probabilities in float16). Upsampling and mask encoding happen on CPU replicas.

No Ray, no FastAPI.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from serve_app.config import ConceptConfig, ModelConfig
from serve_app.errors import InvalidInput, Sam3Error
from serve_app.model.loading import Placement, load_model, load_tokenizer
from serve_app.model.runtime import BatchCounters, check_device_health, normalize_pixels, to_device
from serve_app.model.types import ConceptInstances, ConceptRequest, ConceptResponse, ModelInfo

TEXT_LENGTH = 32  # SAM 3 pads every prompt to 32 tokens


class TextEmbeddingCache:
    """Bounded LRU: prompt text -> (embedding (32,D) on device, attention mask (32,) int64). Thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            item = self._items.get(text)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(text)
            self.hits += 1
            return item

    def put(self, text: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[text] = value
            self._items.move_to_end(text)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


@dataclass
class ConceptCounters(BatchCounters):
    """Every call of a model part is counted (read through ConceptRunner.debug_stats)."""

    pairs: int = 0
    vision_calls: int = 0
    text_calls: int = 0
    detector_calls: int = 0


@dataclass(frozen=True)
class _Pair:
    request: int  # index in the batch
    prompt: int  # index in that request's prompts


class ConceptRunner:
    """Owns a Sam3Model and its tokenizer on one device (implements ConceptRunnerProtocol).
    `segment_batch` may be called from several threads at once (Serve's concurrent batches): the model is
    read-only and the counters and cache are locked."""

    def __init__(self, model, tokenizer, placement: Placement, model_id: str, *, text_cache_size: int = 1024,
                 max_pairs_per_forward: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.placement = placement
        self.max_pairs_per_forward = max_pairs_per_forward
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.counters = ConceptCounters()
        vision_cfg = model.config.vision_config
        image_size = vision_cfg.image_size
        self.info = ModelInfo(
            model_id=model_id,
            image_size=int(image_size),
            mask_size=int(vision_cfg.backbone_feature_sizes[0][0]),
            device=str(placement.device),
            dtype=str(placement.dtype).removeprefix("torch."),
        )

    @classmethod
    def from_config(cls, model: ModelConfig, concept: ConceptConfig | None = None) -> ConceptRunner:
        from transformers import Sam3Model

        concept = concept or ConceptConfig()
        # compile: the vision encoder only (the detector compiles too, but with graph breaks and a
        # recompilation per pair count; it is the smaller cost)
        sam3, placement = load_model(Sam3Model, model, compile_targets=("vision_encoder",))
        return cls(sam3, load_tokenizer(model), placement, model.model_id, text_cache_size=model.text_cache_size,
                   max_pairs_per_forward=concept.max_pairs_per_forward)

    # ------------------------------------------------------------------ public
    def segment_batch(self, requests: list[ConceptRequest]) -> list[ConceptResponse | Sam3Error]:
        """Segment every prompt of every valid request; a request with bad pixels gets its InvalidInput as
        its answer and does not disturb the others. Output i belongs to request i."""
        out: list[ConceptResponse | Sam3Error | None] = [self._check(r) for r in requests]
        valid = [r for r, err in zip(requests, out) if err is None]
        answers = iter(self._segment(valid) if valid else [])
        return [err if err is not None else next(answers) for err in out]

    def check_health(self) -> None:
        check_device_health(self.placement)

    def debug_stats(self) -> dict[str, Any]:
        return {**self.counters.snapshot(), "text_cache_size": len(self.text_cache),
                "text_cache_hits": self.text_cache.hits, "text_cache_misses": self.text_cache.misses,
                "runtime": self.placement.describe()}

    def debug_reset(self) -> None:
        self.counters.reset()
        self.text_cache.clear()

    def _check(self, req: ConceptRequest) -> InvalidInput | None:
        size = self.info.image_size
        if req.pixels.shape != (size, size, 3) or req.pixels.dtype != np.uint8:
            return InvalidInput(f"pixels must be uint8 ({size},{size},3), got {req.pixels.dtype} {req.pixels.shape}",
                                "invalid_pixels")
        return None

    @torch.inference_mode()
    def _segment(self, requests: list[ConceptRequest]) -> list[ConceptResponse]:
        t0 = time.perf_counter()
        vision = self._encode_images(requests)
        t_vision = time.perf_counter()
        pairs = [_Pair(r, p) for r, req in enumerate(requests) for p in range(len(req.prompts))]
        texts = self._encode_texts({requests[x.request].prompts[x.prompt].model_text for x in pairs})
        results: dict[_Pair, ConceptInstances] = {}
        for chunk in self._chunks(requests, pairs):
            results.update(self._detect(requests, chunk, vision, texts))
        t_end = time.perf_counter()
        self.counters.note_batch(len(requests))
        self.counters.add(pairs=len(pairs))
        timings = {"vision_ms": (t_vision - t0) * 1e3, "detector_ms": (t_end - t_vision) * 1e3}
        return [
            ConceptResponse(
                results=[results[_Pair(r, p)] for p in range(len(req.prompts))],
                timings_ms=timings,
                batch_size=len(requests),
            )
            for r, req in enumerate(requests)
        ]

    # ----------------------------------------------------------------- stages
    def _encode_images(self, requests: list[ConceptRequest]):
        """uint8 (B,S,S,3) -> one vision-encoder call -> Sam3VisionEncoderOutput with batch dim B."""
        pixels = normalize_pixels([r.pixels for r in requests], self.placement)
        self.counters.add(vision_calls=1)
        return self.model.get_vision_features(pixel_values=pixels)

    def _encode_texts(self, texts: set[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Embeddings for every text, from the cache or one batched text-encoder call for the misses."""
        cached = {t: self.text_cache.get(t) for t in sorted(texts)}
        found = {t: v for t, v in cached.items() if v is not None}
        missing = [t for t, v in cached.items() if v is None]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                 return_tensors="pt").to(self.placement.device)
            self.counters.add(text_calls=1)
            emb = self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
            for i, text in enumerate(missing):
                # clone: a view would pin the whole batch's tensor in the cache (unbounded bytes per entry)
                pair = (emb[i].clone(), tok.attention_mask[i].clone())
                self.text_cache.put(text, pair)
                found[text] = pair
        return found

    def _chunks(self, requests: list[ConceptRequest], pairs: list[_Pair]):
        """Split pairs into detector calls: box and box-free prompts apart, at most max_pairs_per_forward."""
        def has_boxes(x: _Pair) -> bool:
            return requests[x.request].prompts[x.prompt].boxes_cxcywh is not None

        for group in ([x for x in pairs if not has_boxes(x)], [x for x in pairs if has_boxes(x)]):
            for i in range(0, len(group), self.max_pairs_per_forward):
                yield group[i : i + self.max_pairs_per_forward]

    def _detect(self, requests, chunk: list[_Pair], vision, texts) -> dict[_Pair, ConceptInstances]:
        index = to_device(torch.tensor([x.request for x in chunk]), self.placement)
        vision_embeds = type(vision)(
            fpn_hidden_states=tuple(t.index_select(0, index) for t in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(t.index_select(0, index) for t in vision.fpn_position_encoding),
        )
        prompts = [requests[x.request].prompts[x.prompt] for x in chunk]
        text_embeds = torch.stack([texts[p.model_text][0] for p in prompts])
        attention_mask = torch.stack([texts[p.model_text][1] for p in prompts])
        kwargs = {}
        if prompts[0].boxes_cxcywh is not None:  # chunks are homogeneous (see _chunks)
            kwargs = self._box_inputs(prompts)
        self.counters.add(detector_calls=1)
        out = self.model(
            vision_embeds=vision_embeds,
            text_embeds=BaseModelOutputWithPooling(pooler_output=text_embeds),
            attention_mask=attention_mask,
            **kwargs,
        )
        scores = (out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()).cpu()  # (P,Q)
        boxes = out.pred_boxes.float().cpu()  # (P,Q,4) normalised xyxy
        mask_probs = out.pred_masks.float().sigmoid()  # (P,Q,h,w)
        results = {}
        for i, pair in enumerate(chunk):
            req = requests[pair.request]
            keep = torch.nonzero(scores[i] > req.threshold).flatten()
            keep = keep[scores[i, keep].argsort(descending=True, stable=True)][: req.max_instances]
            h, w = req.original_hw
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            kept_boxes = (boxes[i, keep] * scale).clamp_(min=0)
            kept_boxes = torch.minimum(kept_boxes, scale)
            results[pair] = ConceptInstances(
                scores=scores[i, keep].numpy().astype(np.float32),
                boxes_xyxy=kept_boxes.numpy().astype(np.float32),
                mask_probs=mask_probs[i, keep.to(mask_probs.device)].to(torch.float16).cpu().numpy(),
            )
        return results

    def _box_inputs(self, prompts) -> dict[str, torch.Tensor]:
        """Pad exemplar boxes to (P,K,4) cxcywh with label -10 marking padding (ignored by the model)."""
        k = max(len(p.box_labels) for p in prompts)
        boxes = torch.zeros(len(prompts), k, 4, dtype=torch.float32)
        labels = torch.full((len(prompts), k), -10, dtype=torch.long)
        for i, p in enumerate(prompts):
            n = len(p.box_labels)
            boxes[i, :n] = torch.from_numpy(np.asarray(p.boxes_cxcywh, dtype=np.float32))
            labels[i, :n] = torch.from_numpy(np.asarray(p.box_labels, dtype=np.int64))
        return {"input_boxes": to_device(boxes.to(self.placement.dtype), self.placement),
                "input_boxes_labels": to_device(labels, self.placement)}
