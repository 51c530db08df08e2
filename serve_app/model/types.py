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
    """

    pixels: np.ndarray
    original_hw: tuple[int, int]
    prompts: tuple[ConceptPrompt, ...]
    threshold: float = 0.5
    max_instances: int = 100


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
