"""Messages between the CPU ingress and the GPU model replicas: small, picklable, numpy only.

No torch here: the ingress imports this module. Coordinate frames are stated per field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ConceptPrompt:
    """One concept for one image.

    text: the phrase ("person in red shirt"); None for a box-only prompt (the model then uses "visual").
    boxes_cxcywh: float32 (k,4) exemplar boxes, normalised to [0,1] by the ORIGINAL width/height,
        centre-x, centre-y, width, height (the Sam3Model `input_boxes` convention); None = no boxes.
    box_labels: int64 (k,) 1 = positive exemplar, 0 = negative; None iff boxes_cxcywh is None.
    """

    text: str | None
    boxes_cxcywh: np.ndarray | None = None
    box_labels: np.ndarray | None = None

    @property
    def model_text(self) -> str:
        return self.text if self.text is not None else "visual"


@dataclass(frozen=True)
class ConceptRequest:
    """One image and its prompts, as the GPU replica receives it.

    pixels: uint8 (S,S,3) RGB, the EXIF-corrected image resized (aspect NOT kept) to the model's square
        input size S; normalisation happens on the replica.
    original_hw: (H, W) of the EXIF-corrected original, used to scale boxes back to pixels.
    threshold: keep instances whose score (sigmoid(logit) * sigmoid(presence)) is > threshold.
    max_instances: keep at most this many per prompt, highest score first.
    tenant: whose request this is (per-tenant model-time metrics only; the model ignores it).
    """

    pixels: np.ndarray
    original_hw: tuple[int, int]
    prompts: tuple[ConceptPrompt, ...]
    threshold: float = 0.5
    max_instances: int = 100
    tenant: str = "default"


@dataclass
class ConceptInstances:
    """Kept instances of one prompt, sorted by descending score.

    scores: float32 (n,) in [0,1].
    boxes_xyxy: float32 (n,4) in ORIGINAL image pixels (x0, y0, x1, y1), clipped to the image.
    mask_probs: float16 (n,h,w) sigmoid mask probabilities at the model's low resolution (h=w=288 for
        facebook/sam3), covering the whole image; upsample to (H,W) and compare with mask_threshold.
    """

    scores: np.ndarray
    boxes_xyxy: np.ndarray
    mask_probs: np.ndarray


@dataclass
class ConceptResponse:
    """Per-prompt results for one ConceptRequest, in prompt order, plus replica-side timings (ms)."""

    results: list[ConceptInstances]
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to know about the loaded checkpoint."""

    model_id: str
    image_size: int
    mask_size: int
    device: str
    dtype: str


# ---------------------------------------------------------------------------------------------------------
# Visual prompts (ClickSegmenter / Sam3TrackerModel): points, boxes, previous masks; automatic mode.


@dataclass(frozen=True)
class ClickObject:
    """The prompts of one object on one image.

    points_xy: float32 (n,2) click positions in ORIGINAL image pixels (x right, y down; EXIF-rotated
        image), or None. point_labels: int64 (n,) 1 = positive (foreground), 0 = negative; None iff
        points_xy is None.
    box_xyxy: float32 (4,) [x0, y0, x1, y1] in ORIGINAL image pixels, or None.
    mask_logits: float16 (m,m) low-res mask logits of a previous prediction for this object (m = the
        model's mask size, ModelInfo.mask_size; the `mask_input` handle decoded), or None.
    At least one of points_xy / box_xyxy is set.
    """

    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box_xyxy: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def signature(self) -> tuple[int, bool, bool]:
        """Objects with equal signatures run in one mask-decoder call (no padding, so batching never
        changes a result)."""
        n = 0 if self.points_xy is None else len(self.points_xy)
        return (n, self.box_xyxy is not None, self.mask_logits is not None)


@dataclass(frozen=True)
class ClickRequest:
    """Clicks/boxes on one image, as the ClickSegmenter receives it.

    cache_key: the key of the replica's embedding cache: "{tenant}/{sha256 of the image bytes}" from the
        ingress (any string to the model layer).
    objects: one ClickObject per object (may be empty: then the call only fills the cache).
    pixels: uint8 (S,S,3) RGB, the EXIF-corrected image resized (aspect NOT kept) to the model's square
        input size S, or None: the replica then answers from its cache or returns EmbeddingMiss.
    original_hw: (H, W) of the EXIF-corrected original; required with pixels (kept in the cache with the
        embedding, so a cached call needs neither).
    multimask_output: True = three candidate masks per object; False = the single-mask output.
    """

    cache_key: str
    objects: tuple[ClickObject, ...]
    pixels: np.ndarray | None = None
    original_hw: tuple[int, int] | None = None
    multimask_output: bool = False


@dataclass(frozen=True)
class EmbeddingMiss:
    """The replica does not hold `cache_key`'s embedding: send the request again with pixels."""

    cache_key: str


@dataclass
class ObjectMasks:
    """Mask candidates of one object, in the model's output order (not sorted).

    mask_logits: float16 (k,m,m) low-res logits covering the whole image (k = 3 with multimask_output,
        else 1); upsample to (H,W) and threshold at 0. Each (m,m) slice is also that candidate's
        refinement input (ClickObject.mask_logits).
    scores: float32 (k,) predicted IoU of each candidate.
    object_score: float in [0,1], sigmoid of the model's object-presence logit.
    """

    mask_logits: np.ndarray
    scores: np.ndarray
    object_score: float


@dataclass
class ClickResponse:
    """Per-object results of a ClickRequest, in object order, plus replica-side facts.

    original_hw: (H, W) the masks are to be upsampled to. cache_hit: the embedding came from the cache
    (no vision-encoder call for this request). timings_ms: replica-side stage times.
    """

    objects: list[ObjectMasks]
    original_hw: tuple[int, int]
    cache_hit: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1


@dataclass(frozen=True)
class AutoRequest:
    """Automatic mask generation ("segment everything") on one image.

    A grid of points_per_side x points_per_side single positive clicks (cell centres) is decoded in
    batches of points_per_batch with three candidates each; candidates with predicted IoU <
    pred_iou_thresh or stability score < stability_score_thresh (computed on the m x m logits) are
    dropped; box NMS at box_nms_thresh runs first on low-res boxes (cheap pruning), then the survivors
    are upsampled to the original size, masks with area < min_mask_area (ORIGINAL pixels) dropped, and
    NMS runs again on their exact tight boxes, so no two returned boxes overlap by more than
    box_nms_thresh. pixels/original_hw: as in ClickRequest. max_masks caps the output (highest score
    first).
    """

    cache_key: str
    pixels: np.ndarray | None = None
    original_hw: tuple[int, int] | None = None
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_area: int = 0
    max_masks: int = 256


@dataclass
class AutoResponse:
    """Kept masks, sorted by descending score.

    mask_logits: float16 (n,m,m) low-res logits (threshold 0 after upsampling to original_hw).
    scores: float32 (n,) predicted IoU. stability: float32 (n,). boxes_xyxy: float32 (n,4) tight boxes in
    ORIGINAL pixels (x1/y1 exclusive) of the masks upsampled on the replica, the boxes NMS used.
    points_xy: float32 (n,2) the grid point (ORIGINAL pixels) that produced each mask.
    """

    mask_logits: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    boxes_xyxy: np.ndarray
    points_xy: np.ndarray
    original_hw: tuple[int, int]
    cache_hit: bool
    candidates: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)

