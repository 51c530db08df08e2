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
   probabilities in float16; the kept masks of a detector call are gathered on the device and copied to the
   host at once). Upsampling and mask encoding happen on CPU replicas.

Errors follow the batch protocol of serve_app.model.protocols: pixels are checked and every new text is
tokenized on its own before the batched forward (a request that fails gets its InvalidInput and is left out),
post-processing failures stay with their request, and the batched forward runs under
runtime.run_isolated (an out-of-memory splits the batch; what still fails alone answers alone).

No Ray, no FastAPI.
"""

from __future__ import annotations

import logging
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
from serve_app.model import transformers_fixes
from serve_app.model.loading import Placement, load_model, load_tokenizer
from serve_app.model.protocols import ConceptAnswer
from serve_app.model.runtime import (
    BatchCounters,
    DeviceHealth,
    item_failure,
    normalize_pixels,
    run_isolated,
    to_device,
)
from serve_app.model.types import ConceptInstances, ConceptPrompt, ConceptRequest, ConceptResponse, ModelInfo

log = logging.getLogger(__name__)

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

    _health: DeviceHealth | None = None  # made by the first check_health
    _poison_text: str | None = None  # debug_poison_text

    def __init__(self, model, tokenizer, placement: Placement, model_id: str, *, text_cache_size: int = 1024,
                 max_pairs_per_forward: int = 32):
        transformers_fixes.install()  # the detector's spatial shapes stay on the host (no sync per decoder layer)
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
    def segment_batch(self, requests: list[ConceptRequest]) -> list[ConceptAnswer]:
        """Segment every prompt of every request. Output i belongs to request i: its ConceptResponse or its own
        Sam3Error (the batch protocol of serve_app.model.protocols); one bad request never fails the others."""
        self.counters.note_call(len(requests))
        answers: list[ConceptAnswer | None] = [self._check(r) for r in requests]
        valid = [r for r, err in zip(requests, answers) if err is None]
        results = iter(run_isolated(self._segment, valid, self.placement, self.counters, "concept segmentation"))
        return [err if err is not None else next(results) for err in answers]

    def check_health(self) -> None:
        if self._health is None:
            self._health = DeviceHealth(self.placement)
        self._health.check()

    def debug_stats(self) -> dict[str, Any]:
        return {**self.counters.snapshot(), "text_cache_size": len(self.text_cache),
                "text_cache_hits": self.text_cache.hits, "text_cache_misses": self.text_cache.misses,
                "runtime": self.placement.describe()}

    def debug_reset(self) -> None:
        self.counters.reset()
        self.text_cache.clear()
        self._poison_text = None

    def debug_poison_text(self, text: str | None) -> None:
        """From now on the tokenizer "fails" on prompt `text` (None: stop; debug_reset stops it too), as it
        did on lone surrogates before the ingress rejected them: the batch-isolation tests' poison, a request
        that passes every ingress check and fails in its own processing here. Only reachable through the
        deployment's debug interface (observability.debug_interface). A text already in the text cache is
        not tokenized again: poison a fresh one."""
        self._poison_text = text

    def _check(self, req: ConceptRequest) -> InvalidInput | None:
        size = self.info.image_size
        if req.pixels.shape != (size, size, 3) or req.pixels.dtype != np.uint8:
            return InvalidInput(f"pixels must be uint8 ({size},{size},3), got {req.pixels.dtype} {req.pixels.shape}",
                                "invalid_pixels")
        return None

    @torch.inference_mode()
    def _segment(self, requests: list[ConceptRequest]) -> list[ConceptAnswer]:
        """One batched forward over `requests` (pixels checked). A request with a text the tokenizer rejects,
        or whose post-processing fails, gets its own error; the rest run together."""
        t0 = time.perf_counter()
        texts, untokenizable = self._encode_texts({p.model_text for req in requests for p in req.prompts})
        answers: list[ConceptAnswer | None] = [_text_error(req.prompts, untokenizable) for req in requests]
        run = [req for req, err in zip(requests, answers) if err is None]
        if not run:
            return [a for a in answers if a is not None]
        t_vision = time.perf_counter()
        vision = self._encode_images(run)
        t_detector = time.perf_counter()
        pairs = [_Pair(r, p) for r, req in enumerate(run) for p in range(len(req.prompts))]
        results: dict[_Pair, ConceptInstances | Sam3Error] = {}
        for chunk in self._chunks(run, pairs):
            results.update(self._detect(run, chunk, vision, texts))
        t_end = time.perf_counter()
        self.counters.note_batch(len(run))
        self.counters.add(pairs=len(pairs))
        timings = {"vision_ms": (t_detector - t_vision) * 1e3,
                   "detector_ms": ((t_vision - t0) + (t_end - t_detector)) * 1e3}  # text encoding included
        outputs = iter([self._response(r, req, results, timings, len(run)) for r, req in enumerate(run)])
        return [err if err is not None else next(outputs) for err in answers]

    @staticmethod
    def _response(r: int, req: ConceptRequest, results: dict[_Pair, ConceptInstances | Sam3Error],
                  timings: dict[str, float], batch_size: int) -> ConceptAnswer:
        per_prompt = [results[_Pair(r, p)] for p in range(len(req.prompts))]
        for x in per_prompt:
            if isinstance(x, Sam3Error):
                return x
        return ConceptResponse(results=[x for x in per_prompt if isinstance(x, ConceptInstances)],
                               timings_ms=timings, batch_size=batch_size)

    # ----------------------------------------------------------------- stages
    def _encode_images(self, requests: list[ConceptRequest]):
        """uint8 (B,S,S,3) -> one vision-encoder call -> Sam3VisionEncoderOutput with batch dim B."""
        pixels = normalize_pixels([r.pixels for r in requests], self.placement)
        self.counters.add(vision_calls=1)
        return self.model.get_vision_features(pixel_values=pixels)

    def _encode_texts(self, texts: set[str]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], set[str]]:
        """(embeddings for every text the tokenizer accepts, from the cache or one batched text-encoder call
        for the misses; the texts it rejects). Each text is tokenized on its own, so one bad text cannot fail
        the others."""
        cached = {t: self.text_cache.get(t) for t in sorted(texts)}
        found = {t: v for t, v in cached.items() if v is not None}
        missing: list[str] = []
        ids: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        rejected: set[str] = set()
        for text in (t for t, v in cached.items() if v is None):
            try:
                input_ids, attention_mask = self._tokenize(text)
            except Exception as exc:  # the text's own fault: its requests get invalid_text (see _text_error)
                log.warning("the tokenizer rejected a prompt text (%d chars): %r", len(text), exc)
                rejected.add(text)
                continue
            missing.append(text)
            ids.append(input_ids)
            masks.append(attention_mask)
        if missing:
            input_ids = to_device(torch.cat(ids), self.placement)
            attention_mask = to_device(torch.cat(masks), self.placement)
            self.counters.add(text_calls=1)
            emb = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            for i, text in enumerate(missing):
                # clone: a view would pin the whole batch's tensor in the cache (unbounded bytes per entry)
                pair = (emb[i].clone(), attention_mask[i].clone())
                self.text_cache.put(text, pair)
                found[text] = pair
        return found, rejected

    def _tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One text -> (input_ids (1,32), attention_mask (1,32)) on the CPU, padded to SAM 3's 32 tokens."""
        if self._poison_text is not None and text == self._poison_text:
            raise TypeError("debug_poison_text: this text is poisoned (a simulated tokenizer failure)")
        tok = self.tokenizer([text], padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                             return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    def _chunks(self, requests: list[ConceptRequest], pairs: list[_Pair]):
        """Split pairs into detector calls: box and box-free prompts apart, at most max_pairs_per_forward."""
        def has_boxes(x: _Pair) -> bool:
            return requests[x.request].prompts[x.prompt].boxes_cxcywh is not None

        for group in ([x for x in pairs if not has_boxes(x)], [x for x in pairs if has_boxes(x)]):
            for i in range(0, len(group), self.max_pairs_per_forward):
                yield group[i : i + self.max_pairs_per_forward]

    def _detect(self, requests, chunk: list[_Pair], vision, texts) -> dict[_Pair, ConceptInstances | Sam3Error]:
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
        results: dict[_Pair, ConceptInstances | Sam3Error] = {}
        picks: dict[int, torch.Tensor] = {}
        for i, pair in enumerate(chunk):
            try:
                picks[i] = _select(requests[pair.request], scores[i])
            except Exception:
                results[pair] = item_failure("concept post-processing")
        masks = _kept_mask_probs(out.pred_masks, picks)
        for i, keep in picks.items():
            pair = chunk[i]
            try:
                results[pair] = _keep(requests[pair.request], scores[i], boxes[i], keep, masks[i])
            except torch.OutOfMemoryError:
                raise  # the batch's problem: run_isolated splits it
            except Exception:
                results[pair] = item_failure("concept post-processing")
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


def _select(req: ConceptRequest, scores: torch.Tensor) -> torch.Tensor:
    """One pair's kept queries (int64 (n,), CPU) from its scores (float32 (Q,), CPU): score > threshold, at most
    max_instances, highest first (ties in query order)."""
    keep = torch.nonzero(scores > req.threshold).flatten()
    return keep[scores[keep].argsort(descending=True, stable=True)][: req.max_instances]


def _kept_mask_probs(pred_masks: torch.Tensor, picks: dict[int, torch.Tensor]) -> dict[int, np.ndarray]:
    """The kept queries' mask probabilities of a detector call, with ONE gather on the device and ONE copy to
    the host for the whole chunk (not a sigmoid over every query of every pair, and not a sync per pair).
    pred_masks: mask logits (P,Q,h,w) on the device (the model's dtype); picks: pair row -> kept query indices
    (n,) -> pair row -> float16 (n,h,w) sigmoid probabilities (views of one array, in the picks' order).
    Elementwise the same operations as sigmoid-then-gather: the values are bit-identical."""
    rows = list(picks)
    num_queries = pred_masks.shape[1]
    flat = (torch.cat([picks[i] + i * num_queries for i in rows]) if rows
            else torch.zeros(0, dtype=torch.long))
    # indexing, not index_select: the CPU's index_select along dim 0 of (P*Q,h,w) is ~60x slower (torch 2.14)
    probs = pred_masks.flatten(0, 1)[flat.to(pred_masks.device)].float().sigmoid().to(torch.float16).cpu().numpy()
    out, start = {}, 0
    for i in rows:
        n = len(picks[i])
        out[i] = probs[start:start + n]
        start += n
    return out


def _keep(req: ConceptRequest, scores: torch.Tensor, boxes: torch.Tensor, keep: torch.Tensor,
          mask_probs: np.ndarray) -> ConceptInstances:
    """One pair's kept instances from its outputs on the CPU (scores float32 (Q,), normalised xyxy boxes (Q,4)),
    its kept queries `keep` (_select) and their mask probabilities (float16 (n,h,w), _kept_mask_probs); boxes
    in ORIGINAL pixels, clipped to the image."""
    h, w = req.original_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    kept_boxes = (boxes[keep] * scale).clamp_(min=0)
    kept_boxes = torch.minimum(kept_boxes, scale)
    return ConceptInstances(
        scores=scores[keep].numpy().astype(np.float32),
        boxes_xyxy=kept_boxes.numpy().astype(np.float32),
        mask_probs=mask_probs,
    )


def _text_error(prompts: tuple[ConceptPrompt, ...], rejected: set[str]) -> InvalidInput | None:
    """invalid_text for a request with a prompt whose text the tokenizer rejected, else None."""
    for i, p in enumerate(prompts):
        if p.model_text in rejected:
            return InvalidInput(f"prompts[{i}].text cannot be tokenized", "invalid_text")
    return None
