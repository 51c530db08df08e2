"""Visual-prompt runner: clicks, boxes and previous masks through Sam3TrackerModel, with an embedding cache.

Per image the vision encoder runs once; its three feature levels are kept in a byte-bounded LRU
(EmbeddingCache) keyed by image id, and every click on that image runs only the prompt encoder and mask
decoder. The protocol that keeps correctness independent of routing:

    run([PromptRequest(image_id, objects)])            -> PromptResponse (cached) or EmbeddingMiss
    run([PromptRequest(image_id, objects, pixels, hw)]) -> PromptResponse (encodes once, then caches)

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

Automatic mode (`auto`) decodes a point grid in batches on one cached embedding, filters by predicted IoU,
stability and area, and runs box NMS (torchvision) here, on the model's device.

No Ray, no FastAPI.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from serve_app.config import ModelConfig
from serve_app.errors import InvalidInput, Sam3Error
from serve_app.model.embedding_cache import EmbeddingCache
from serve_app.model.loading import (
    TRACKER_KEY_MAPPING,
    Placement,
    load_pretrained,
    resolve_placement,
)
from serve_app.model.types import (
    AutoRequest,
    AutoResponse,
    EmbeddingMiss,
    ModelInfo,
    ObjectMasks,
    PromptObject,
    PromptRequest,
    PromptResponse,
)

# Upsampling work per chunk in automatic mode: masks x H x W float32 elements (~128 MB).
_UPSAMPLE_ELEMENTS = 32_000_000


@dataclass
class PromptStats:
    """Counters of model calls since start (or the last reset). `vision_calls` counts vision-encoder
    forwards (one per batch that had uncached images), `images_encoded` the images they covered."""

    batches: int = 0
    requests: int = 0
    objects: int = 0
    vision_calls: int = 0
    images_encoded: int = 0
    decoder_calls: int = 0
    misses_returned: int = 0
    auto_calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__, batch_sizes=list(self.batch_sizes[-1000:]))


@dataclass
class _Embedding:
    """One image's cached state: the three feature levels (each (1,C,h,w) on the device) + (H, W)."""

    levels: tuple[torch.Tensor, ...]
    original_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


def check_object(obj: PromptObject, index: int, original_hw: tuple[int, int], mask_size: int) -> None:
    """Raise InvalidInput when a prompt does not fit its image (ORIGINAL pixel frame, H x W)."""
    h, w = original_hw
    if obj.points_xy is None and obj.box_xyxy is None:
        raise InvalidInput(f"objects[{index}] needs points or a box", "empty_object")
    if obj.points_xy is not None:
        pts = np.asarray(obj.points_xy, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise InvalidInput(f"objects[{index}].points must be a list of [x, y]", "invalid_points")
        if obj.point_labels is None or len(obj.point_labels) != len(pts):
            raise InvalidInput(f"objects[{index}]: one point_label per point is required", "point_labels_mismatch")
        if not np.isfinite(pts).all():
            raise InvalidInput(f"objects[{index}].points must be finite", "invalid_points")
        if (pts[:, 0] < 0).any() or (pts[:, 1] < 0).any() or (pts[:, 0] > w).any() or (pts[:, 1] > h).any():
            raise InvalidInput(f"objects[{index}]: points must lie inside the {w}x{h} image", "point_outside_image")
    if obj.box_xyxy is not None:
        x0, y0, x1, y1 = (float(v) for v in obj.box_xyxy)
        if not np.isfinite([x0, y0, x1, y1]).all() or x1 <= x0 or y1 <= y0:
            raise InvalidInput(f"objects[{index}].box needs x0 < x1 and y0 < y1", "invalid_box")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise InvalidInput(f"objects[{index}].box must lie inside the {w}x{h} image", "box_outside_image")
    if obj.mask_logits is not None and obj.mask_logits.shape != (mask_size, mask_size):
        raise InvalidInput(f"objects[{index}].mask_input is {obj.mask_logits.shape}, this model needs "
                           f"({mask_size}, {mask_size})", "invalid_mask_input")


@dataclass(frozen=True)
class _Item:
    request: int
    obj: int


class PromptRunner:
    """Owns a Sam3TrackerModel on one device and the embedding cache of this replica. `run` and `auto` may
    be called from several threads at once: the model is read-only; counters and cache are locked."""

    def __init__(self, model, placement: Placement, model_id: str, *, cache_bytes: int,
                 max_objects_per_forward: int = 64):
        self.model = model
        self.placement = placement
        self.max_objects_per_forward = max_objects_per_forward
        self.cache = EmbeddingCache(cache_bytes)
        self.stats = PromptStats()
        self._lock = threading.Lock()
        pe = model.prompt_encoder
        self.info = ModelInfo(
            model_id=model_id,
            image_size=int(pe.input_image_size),
            mask_size=int(pe.mask_input_size[0]),
            device=str(placement.device),
            dtype=str(placement.dtype).removeprefix("torch."),
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, cache_bytes: int, max_objects_per_forward: int = 64) -> PromptRunner:
        """Sam3TrackerModel from the same checkpoint as the concept model (`tracker_model.*` weights)."""
        from transformers import Sam3TrackerModel

        placement = resolve_placement(cfg)
        model = load_pretrained(Sam3TrackerModel, cfg, placement, key_mapping=TRACKER_KEY_MAPPING)
        return cls(model, placement, cfg.model_id, cache_bytes=cache_bytes,
                   max_objects_per_forward=max_objects_per_forward)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def run(self, requests: list[PromptRequest]) -> list[PromptResponse | EmbeddingMiss | Sam3Error]:
        """Answer each request: PromptResponse, EmbeddingMiss (no pixels, not cached) or the Sam3Error of
        an invalid request. Output i belongs to request i; one bad request never fails the others."""
        t0 = time.perf_counter()
        out: list = [None] * len(requests)
        embeddings, hits = self._resolve(requests, out)
        t_vision = time.perf_counter()
        items = [_Item(r, o) for r, req in enumerate(requests) if out[r] is None for o in range(len(req.objects))]
        decoded: dict[_Item, ObjectMasks] = {}
        for chunk in self._chunks(requests, items):
            decoded.update(self._decode(requests, chunk, embeddings))
        t_end = time.perf_counter()
        timings = {"vision_ms": (t_vision - t0) * 1e3, "decoder_ms": (t_end - t_vision) * 1e3}
        with self._lock:
            s = self.stats
            s.batches += 1
            s.requests += len(requests)
            s.objects += len(items)
            s.misses_returned += sum(isinstance(x, EmbeddingMiss) for x in out)
            s.batch_sizes.append(len(requests))
        for r, req in enumerate(requests):
            if out[r] is None:
                out[r] = PromptResponse(
                    objects=[decoded[_Item(r, o)] for o in range(len(req.objects))],
                    original_hw=embeddings[req.image_id].original_hw,
                    cache_hit=hits[r], timings_ms=timings, batch_size=len(requests),
                )
        return out

    @torch.inference_mode()
    def auto(self, req: AutoRequest) -> AutoResponse | EmbeddingMiss:
        """Automatic mask generation on one image (see AutoRequest). Raises InvalidInput for bad knobs."""
        if req.points_per_side < 1 or req.points_per_batch < 1:
            raise InvalidInput("points_per_side and points_per_batch must be >= 1", "invalid_auto_options")
        t0 = time.perf_counter()
        out: list = [None]
        probe = PromptRequest(req.image_id, (), req.pixels, req.original_hw)
        embeddings, hits = self._resolve([probe], out)
        if out[0] is not None:
            if isinstance(out[0], Exception):
                raise out[0]
            return out[0]
        emb = embeddings[req.image_id]
        h, w = emb.original_hw
        t_vision = time.perf_counter()
        n = req.points_per_side
        grid = (np.arange(n, dtype=np.float32) + 0.5) / n
        gx, gy = np.meshgrid(grid, grid)  # row-major: y outer, x inner
        unit = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (n*n, 2) in [0,1]
        size = self.info.image_size
        kept: list[dict[str, torch.Tensor]] = []
        candidates = 0
        for start in range(0, len(unit), req.points_per_batch):
            pts = torch.from_numpy(unit[start : start + req.points_per_batch] * size).to(self.placement.device)
            p = len(pts)
            self._count("decoder_calls")
            res = self.model(
                image_embeddings=list(emb.levels),
                input_points=pts.view(1, p, 1, 2),
                input_labels=torch.ones(1, p, 1, dtype=torch.long, device=self.placement.device),
                multimask_output=True,
            )
            logits = res.pred_masks[0].flatten(0, 1).float()  # (p*3, m, m)
            scores = res.iou_scores[0].flatten().float()  # (p*3,)
            point_idx = torch.arange(start, start + p, device=logits.device).repeat_interleave(res.pred_masks.shape[2])
            candidates += len(scores)
            kept.append(self._filter_low_res(logits, scores, point_idx, (h, w), req))
        t_decode = time.perf_counter()
        merged = {k: torch.cat([c[k] for c in kept]) for k in kept[0]} if kept else None
        if merged is not None and len(merged["scores"]):
            from torchvision.ops import nms

            # 1) NMS on low-res boxes (scaled to original pixels): cheap pruning of the many candidates;
            # 2) exact boxes/areas of the survivors at (H,W), min_mask_area, and NMS again on those boxes,
            #    so the returned masks satisfy box_nms_thresh with the boxes they are returned with.
            merged = {k: v[nms(merged["boxes"], merged["scores"], req.box_nms_thresh)] for k, v in merged.items()}
            merged = self._exact_boxes(merged, (h, w), req)
            order = nms(merged["boxes"], merged["scores"], req.box_nms_thresh)[: req.max_masks]  # by score
            merged = {k: v[order] for k, v in merged.items()}
        t_end = time.perf_counter()
        with self._lock:
            self.stats.auto_calls += 1
        empty = merged is None or len(merged["scores"]) == 0
        m = self.info.mask_size

        def arr(key: str, shape: tuple, dtype) -> np.ndarray:
            return np.zeros(shape, dtype) if empty else merged[key].cpu().numpy().astype(dtype)

        return AutoResponse(
            mask_logits=arr("logits", (0, m, m), np.float16),
            scores=arr("scores", (0,), np.float32),
            stability=arr("stability", (0,), np.float32),
            boxes_xyxy=arr("boxes", (0, 4), np.float32),
            points_xy=(unit[arr("points", (0,), np.int64)] * np.array([w, h], np.float32)).astype(np.float32),
            original_hw=(h, w), cache_hit=hits[0], candidates=candidates,
            timings_ms={"vision_ms": (t_vision - t0) * 1e3, "decoder_ms": (t_decode - t_vision) * 1e3,
                        "filter_ms": (t_end - t_decode) * 1e3},
        )

    # ----------------------------------------------------------------- stages
    def _resolve(self, requests: list[PromptRequest], out: list) -> tuple[dict[str, _Embedding], list[bool]]:
        """Embedding per image id (cache, or one vision call for all uncached images that came with pixels
        in this batch); fills `out[r]` with EmbeddingMiss / InvalidInput for requests that cannot run."""
        providers: dict[str, PromptRequest] = {}  # image id -> a request of this batch carrying its pixels
        for r, req in enumerate(requests):
            if req.pixels is not None:
                try:
                    self._check_pixels(req)
                except InvalidInput as exc:
                    out[r] = exc
                    continue
                providers.setdefault(req.image_id, req)
        embeddings: dict[str, _Embedding] = {}
        hits = [False] * len(requests)
        looked_up: set[str] = set()
        for r, req in enumerate(requests):
            if out[r] is not None:
                continue
            if req.image_id not in looked_up:
                looked_up.add(req.image_id)
                cached = self.cache.get(req.image_id)
                if cached is not None:
                    embeddings[req.image_id] = cached
            emb = embeddings.get(req.image_id)
            if emb is not None:
                hits[r] = True
                hw = emb.original_hw
            elif req.image_id in providers:
                hw = providers[req.image_id].original_hw
            else:
                out[r] = EmbeddingMiss(req.image_id)
                continue
            try:
                for i, obj in enumerate(req.objects):
                    check_object(obj, i, hw, self.info.mask_size)
            except InvalidInput as exc:
                out[r] = exc
        needed = {req.image_id for r, req in enumerate(requests) if out[r] is None and req.image_id not in embeddings}
        to_encode = [providers[k] for k in sorted(needed)]
        if to_encode:
            embeddings.update(self._encode(to_encode))
        return embeddings, hits

    def _check_pixels(self, req: PromptRequest) -> None:
        size = self.info.image_size
        if req.pixels.shape != (size, size, 3) or req.pixels.dtype != np.uint8:
            raise InvalidInput(f"pixels must be uint8 ({size},{size},3), got {req.pixels.dtype} {req.pixels.shape}",
                               "invalid_pixels")
        if req.original_hw is None or min(req.original_hw) < 1:
            raise InvalidInput("original_hw is required with pixels", "invalid_pixels")

    def _encode(self, requests: list[PromptRequest]) -> dict[str, _Embedding]:
        """uint8 (B,S,S,3) -> one vision-encoder call -> per image a (1,C,h,w) copy of each level, cached."""
        pixels = torch.from_numpy(np.stack([r.pixels for r in requests])).to(self.placement.device)
        pixels = pixels.permute(0, 3, 1, 2).to(self.placement.dtype).div_(255.0).sub_(0.5).div_(0.5)
        with self._lock:
            self.stats.vision_calls += 1
            self.stats.images_encoded += len(requests)
        levels = self.model.get_image_embeddings(pixel_values=pixels)
        result = {}
        for i, req in enumerate(requests):
            # clone: a view would keep the whole batch's storage alive and break the cache's byte accounting
            emb = _Embedding(tuple(t[i : i + 1].clone() for t in levels), tuple(int(v) for v in req.original_hw))
            self.cache.put(req.image_id, emb, emb.nbytes)
            result[req.image_id] = emb
        return result

    def _chunks(self, requests: list[PromptRequest], items: list[_Item]):
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
        device, dtype, size = self.placement.device, self.placement.dtype, self.info.image_size
        objs = [requests[it.request].objects[it.obj] for it in chunk]
        embs = [embeddings[requests[it.request].image_id] for it in chunk]
        levels = [torch.cat([e.levels[k] for e in embs]) for k in range(len(embs[0].levels))]
        # ORIGINAL pixels -> model input frame (S x S square)
        scale = torch.tensor([[size / e.original_hw[1], size / e.original_hw[0]] for e in embs], dtype=torch.float32)
        kwargs: dict[str, torch.Tensor] = {}
        if objs[0].points_xy is not None:  # chunks are homogeneous (see _chunks)
            pts = torch.from_numpy(np.stack([np.asarray(o.points_xy, np.float32) for o in objs]))  # (B,n,2)
            kwargs["input_points"] = (pts * scale[:, None, :]).unsqueeze(1).to(device)
            labels = np.stack([np.asarray(o.point_labels, np.int64) for o in objs])
            kwargs["input_labels"] = torch.from_numpy(labels).unsqueeze(1).to(device)
        if objs[0].box_xyxy is not None:
            boxes = torch.from_numpy(np.stack([np.asarray(o.box_xyxy, np.float32) for o in objs]))  # (B,4)
            kwargs["input_boxes"] = (boxes * scale.repeat(1, 2)).unsqueeze(1).to(device)
        if objs[0].mask_logits is not None:
            masks = torch.from_numpy(np.stack([np.asarray(o.mask_logits, np.float32) for o in objs]))
            kwargs["input_masks"] = masks.unsqueeze(1).to(device, dtype)
        multimask = requests[chunk[0].request].multimask_output
        self._count("decoder_calls")
        res = self.model(image_embeddings=levels, multimask_output=multimask, **kwargs)
        logits = res.pred_masks[:, 0].to(torch.float16).cpu().numpy()  # (B,k,m,m)
        scores = res.iou_scores[:, 0].float().cpu().numpy()  # (B,k)
        obj_scores = res.object_score_logits[:, 0, 0].float().sigmoid().cpu().numpy()  # (B,)
        return {it: ObjectMasks(mask_logits=logits[i], scores=scores[i].astype(np.float32),
                                object_score=float(obj_scores[i]))
                for i, it in enumerate(chunk)}

    @staticmethod
    def _boxes(masks: torch.Tensor) -> torch.Tensor:
        """bool (c,h,w) -> float32 (c,4) tight boxes [x0, y0, x1, y1] in that grid's pixels (x1/y1 exclusive)."""
        h, w = masks.shape[-2:]
        rows, cols = masks.any(2).float(), masks.any(1).float()  # (c,h), (c,w)
        y0, y1 = rows.argmax(1), h - rows.flip(1).argmax(1)
        x0, x1 = cols.argmax(1), w - cols.flip(1).argmax(1)
        return torch.stack([x0, y0, x1, y1], 1).float()

    def _filter_low_res(self, logits, scores, point_idx, hw: tuple[int, int], req: AutoRequest) -> dict:
        """Keep candidates with predicted IoU >= pred_iou_thresh, stability (at the m x m logits: IoU of
        logits > +offset vs > -offset) >= stability_score_thresh and a non-empty mask; approximate boxes from
        the low-res masks scaled to ORIGINAL pixels."""
        off = req.stability_score_offset
        inter = (logits > off).flatten(1).sum(1).float()
        union = (logits > -off).flatten(1).sum(1).float()
        stability = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
        masks = logits > 0
        keep = (scores >= req.pred_iou_thresh) & (stability >= req.stability_score_thresh) & masks.flatten(1).any(1)
        h, w = hw
        m = logits.shape[-1]
        boxes = self._boxes(masks[keep]) * torch.tensor([w / m, h / m, w / m, h / m], device=logits.device)
        return {"logits": logits[keep].to(torch.float16), "scores": scores[keep], "points": point_idx[keep],
                "boxes": boxes, "stability": stability[keep]}

    def _exact_boxes(self, cand: dict, hw: tuple[int, int], req: AutoRequest) -> dict:
        """Upsample the candidates' logits to (H,W) in chunks (bilinear, half-pixel centres like the CPU
        ingress), replace their boxes by the exact tight boxes there, drop masks under min_mask_area."""
        h, w = hw
        per_chunk = max(1, _UPSAMPLE_ELEMENTS // (h * w))
        boxes, keep = [], []
        for s in range(0, len(cand["scores"]), per_chunk):
            up = F.interpolate(cand["logits"][s : s + per_chunk, None].float(), size=(h, w), mode="bilinear",
                               align_corners=False)[:, 0] > 0
            boxes.append(self._boxes(up))
            keep.append(up.flatten(1).sum(1) >= max(1, req.min_mask_area))
        keep_t = torch.cat(keep)
        return {**{k: v[keep_t] for k, v in cand.items() if k != "boxes"}, "boxes": torch.cat(boxes)[keep_t]}

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
