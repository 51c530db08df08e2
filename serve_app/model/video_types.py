"""Messages of the video model layer (serve_app.model.video): small, picklable, numpy only.

No torch here: the CPU ingress and the session manager import this module. Coordinates are ORIGINAL video
pixels (x right, y down) unless a field says otherwise; frame indices are 0-based positions in the decoded
frame sequence.

Also here, because a torch-free caller needs them: the `FrameSource` a session reads its frames from, the
`SessionIncompatible` error, and the framing of a session checkpoint (`pack_session_checkpoint` /
`read_session_header`), so a header can be inspected without unpickling anything.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from serve_app.errors import Conflict


@dataclass(frozen=True)
class FrameSource:
    """Where a video session reads its frames: read LAZILY, one at a time, never all at once.

    num_frames: frame count (> 0). height, width: ORIGINAL frame size in pixels (after any rotation).
    get_frame(i): uint8 RGB (height, width, 3) for 0 <= i < num_frames. It is called from the model replica's
        thread, may be slow (decoding), and must return the same pixels for the same i every time (results
        are only deterministic if the frames are).
    """

    num_frames: int
    height: int
    width: int
    get_frame: Callable[[int], np.ndarray]

    @classmethod
    def from_array(cls, frames: np.ndarray) -> FrameSource:
        """Frames already in memory, uint8 (T,H,W,3) (tests, tiny clips)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T,H,W,3), got {frames.dtype} {frames.shape}")
        return cls(int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2]), lambda i: frames[i])


@dataclass(frozen=True)
class VideoObjectPrompt:
    """The prompt of one object on one frame (VideoSession.add_objects).

    obj_id: the object to create or refine. An id the session tracks (text-detected or clicked) is REFINED:
        the new prompt is decoded together with the object's previous mask on that frame and stored as a
        conditioning frame. Any other id creates a new object with that id; None = the next free id.
    points_xy: float32 (n,2) clicks in ORIGINAL pixels; point_labels: int64 (n,) 1 = positive, 0 = negative
        (None iff points_xy is None).
    box_xyxy: float32 (4,) [x0, y0, x1, y1] in ORIGINAL pixels. A box replaces the object's earlier clicks on
        that frame (SAM encodes the box as the first two prompt points).
    mask: bool (H,W) at the ORIGINAL size: the object's exact mask on that frame (excludes points and box).
    clear_old_points: False = the points are added to the object's earlier clicks on that frame (one more
        click in a UI); True = they replace them.
    """

    obj_id: int | None = None
    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box_xyxy: np.ndarray | None = None
    mask: np.ndarray | None = None
    clear_old_points: bool = False


@dataclass
class VideoFrameResult:
    """The objects visible on one frame, sorted by object id.

    object_ids: int64 (n,) session object ids (stable across frames; an id is never reused for another
        object, except that `reset` restarts the numbering).
    scores: float32 (n,) in [0,1]: for text-detected objects the detection score (as transformers'
        Sam3VideoProcessor.postprocess_outputs reports it); for objects created by clicks/masks the tracker's
        object-presence probability on this frame.
    boxes_xyxy: float32 (n,4) tight boxes of the masks upsampled (bilinear) to the ORIGINAL frame size,
        [x0, y0, x1, y1] with x1/y1 the last mask pixel (inclusive, torchvision's masks_to_boxes, as in
        postprocess_outputs), before the non-overlap rule.
    mask_logits: float16 (n,m,m) low-res mask logits covering the whole frame (m = VideoModelInfo.mask_size,
        288 for facebook/sam3): upsample bilinearly (align_corners=False) to (H,W) and threshold at 0.
        Objects of the same text prompt do not overlap at this resolution (see serve_app.model.video).
    prompt_to_obj_ids: text prompt -> ids in this frame detected by it (objects created by clicks or
        masks belong to no prompt).
    prompted_obj_ids: for add_objects/add_clicks/add_mask, the ids the call created or refined, in call
        order (an object may be prompted yet absent from object_ids when its mask is empty); else [].
    """

    frame_index: int
    object_ids: np.ndarray
    scores: np.ndarray
    boxes_xyxy: np.ndarray
    mask_logits: np.ndarray
    prompt_to_obj_ids: dict[str, list[int]] = field(default_factory=dict)
    prompted_obj_ids: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, frame_index: int, mask_size: int) -> VideoFrameResult:
        return cls(frame_index, np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                   np.zeros((0, mask_size, mask_size), np.float16))


@dataclass
class VideoCounters:
    """Work done (plain ints) by one session, or by all sessions of a runner, since creation.

    frames_processed: frame steps run (detector + tracker, or tracker only); a frame reused from add_text
        is not counted again. detector_calls: DETR detector passes (one per text prompt per frame step).
    tracker_calls: tracker invocations (a propagation step with objects, a step adding new detections,
        a click/mask call). vision_calls: vision-encoder (ViT) passes. frames_decoded: FrameSource.get_frame
        calls (frames preprocessed into the small LRU).
    """

    frames_processed: int = 0
    detector_calls: int = 0
    tracker_calls: int = 0
    vision_calls: int = 0
    frames_decoded: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class VideoModelInfo:
    """What a caller needs to know about the loaded video model."""

    model_id: str
    image_size: int
    mask_size: int
    device: str
    dtype: str
    hotstart_delay: int
    max_num_objects: int


class SessionIncompatible(Conflict):
    """A session checkpoint this replica cannot load (other format, transformers version, model, dtype or
    video): rebuild the session by replaying its journal instead."""

    code = "session_incompatible"


# ---------------------------------------------------------------------------------------------------------
# Session checkpoint framing: MAGIC | uint32 big-endian header length | header JSON (utf-8) | payload
# (the payload is a torch.save pickle: load only the service's own checkpoints, never client-supplied bytes).

CHECKPOINT_MAGIC = b"SAM3VSES"
CHECKPOINT_FORMAT = "sam3-serve/video-session"
CHECKPOINT_VERSION = 1
_LEN = struct.Struct(">I")


def pack_session_checkpoint(header: dict, payload: bytes) -> bytes:
    """Frame a header (plain JSON) and a payload into one blob."""
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return CHECKPOINT_MAGIC + _LEN.pack(len(raw)) + raw + payload


def read_session_header(data: bytes) -> tuple[dict, int]:
    """(header, payload offset) of a blob from pack_session_checkpoint; SessionIncompatible if it is not one."""
    start = len(CHECKPOINT_MAGIC) + _LEN.size
    if len(data) < start or not bytes(data[: len(CHECKPOINT_MAGIC)]) == CHECKPOINT_MAGIC:
        raise SessionIncompatible("not a sam3-serve video session checkpoint (bad magic)")
    (length,) = _LEN.unpack_from(data, len(CHECKPOINT_MAGIC))
    try:
        header = json.loads(bytes(data[start : start + length]))
    except ValueError as exc:
        raise SessionIncompatible(f"corrupt video session checkpoint header: {exc}") from exc
    if not isinstance(header, dict):
        raise SessionIncompatible("corrupt video session checkpoint header")
    return header, start + length
