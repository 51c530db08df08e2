"""Video sessions on SAM 3: text prompts (detect + track), clicks/boxes/masks (track), both in one session.

One `VideoRunner` per process loads `Sam3VideoModel` (detector + tracker, one copy of the ViT),
`Sam3VideoProcessor` (frame preprocessing, text tokens) and `Sam3TrackerVideoProcessor` (click encoding).
Each user session is a `VideoSession` holding ONE transformers `Sam3VideoInferenceSession`:

- Text (`add_text`): the prompt is added to the session (prompts are global: every later frame step runs the
  detector once per active prompt) and frame k is processed at once (detect + track) and returned. A
  following `propagate` from k reuses that step instead of running frame k twice, so text + propagate gives
  exactly transformers' own `add_text_prompt` + `propagate_in_video_iterator` result.
- Clicks / boxes / masks (`add_objects`, `add_clicks`, `add_mask`): run by `model.tracker_model` (a
  Sam3TrackerVideoModel without vision encoder) directly on the Sam3Video session, one object or several per
  call, with the vision features of frame k computed by the shared ViT + tracker neck. A new id creates an
  object; a tracked id (text-detected or clicked) is REFINED. Following Meta's SAM 2/3 video predictor, a
  prompted frame is always stored as a CONDITIONING frame (`add_all_frames_to_correct_as_cond`), and the
  object's previous mask logits on that frame are fed to the mask decoder with the new clicks
  (`iter_use_prev_mask_pred`). transformers stores a correction on a tracked frame as a non-conditioning
  output (recomputed, i.e. lost, by the next propagation) and never feeds the previous logits.
- Clicks-only sessions: `Sam3VideoModel.forward` cannot run without a text prompt (its detector raises "No
  prompts available for detection"), so while a session has no text prompt, frame steps run the tracker
  alone (`tracker_model(inference_session, frame_idx, reverse)` = Sam3TrackerVideoModel's propagation step,
  features from the shared ViT: no second vision encoder in memory). Once a text prompt is added, frame steps
  run the full detect + track model and the clicked objects are tracked with the detected ones.
- Objects a user prompted (created or refined) are protected from the detector's automatic heuristics: they
  are never removed or suppressed by the hotstart rules and never "reconditioned" by a detection within
  `recondition_every_nth_frame` frames of a user-prompted frame (Meta drops detector conditioning there too).
  Clicked objects belong to no text prompt: each is its own group for association and non-overlap, so a
  detection of a prompt never merges into it (a text prompt may detect the same thing again under a new id).

`propagate` runs frame steps in Meta's order ("both" = forward from k, then backward from k-1: every frame
once), checks `should_stop` before each frame (cooperative cancellation), and prunes the session as it goes:
non-conditioning outputs further than KEEP = max(num_maskmem, max_object_pointers_in_encoder) = 16 frames
behind the current one are dropped (the tracker never reads them again), the 1008 px `high_res_masks` of
every output is dropped once its memory is encoded, and conditioning outputs are never dropped. Memory then
stays flat in video length; outputs are identical to an unpruned session for the same calls. A later pass
that starts where outputs were pruned sees less memory than an unpruned session would (as Meta's
`trim_past_non_cond_mem_for_eval`); within one "both" call the 16 frames after k are kept for the backward
half.

Frames are read lazily: `session.processed_frames` is a Mapping whose `len()` is the full frame count (the
tracker uses it) and whose `__getitem__` decodes + preprocesses frame i through a small LRU.

Frame results (`VideoFrameResult`) are built from the RAW low-res logits, not from
`Sam3VideoProcessor.postprocess_outputs` (which upsamples every mask to the video size and binarises it:
downsampling that again would lose the logits). The same keep rules are applied: an object is reported iff
its mask upsampled to (H,W) is non-empty and it is not suppressed or hotstart-removed; boxes come from the
upsampled masks exactly as postprocess_outputs computes them; scores are postprocess_outputs' scores. So
ids, scores and boxes equal transformers' own path. The non-overlap rule (per text prompt, the object with
the highest tracker score keeps a contested pixel) is applied at the LOW resolution: losing logits are set
to -10 there, whereas postprocess_outputs applies it to the upsampled binary masks; the two can differ by
about one low-res pixel along contested borders. Masks of non-contested pixels are the model's logits as is.

Results are deterministic for a given device/dtype. A VideoSession is NOT thread-safe: one caller at a time
(the runner may serve many sessions from several threads). A session changed while a `propagate` iterator
is open makes that iterator raise.

No Ray, no FastAPI.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from serve_app.config import ModelConfig
from serve_app.errors import InvalidInput, NotFound, Unavailable
from serve_app.model import transformers_fixes
from serve_app.model.loading import Placement, load_model, local_files_only
from serve_app.model.prompt_geometry import check_points_and_box
from serve_app.model.video_batching import install_batched_forward, object_batching
from serve_app.model.video_types import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    FrameSource,
    SessionIncompatible,
    VideoCounters,
    VideoFrameResult,
    VideoModelInfo,
    VideoObjectPrompt,
    pack_session_checkpoint,
    read_session_header,
)

log = logging.getLogger(__name__)


class _DropObjectCapWarning(logging.Filter):
    """transformers warns "hitting self.max_num_objects=…" on EVERY frame once a text prompt has filled the
    object cap: an expected state for a session, not news, and it would flood the actors' logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("hitting self.max_num_objects")


logging.getLogger("transformers.models.sam3_video.modeling_sam3_video").addFilter(_DropObjectCapWarning())

Direction = Literal["forward", "backward", "both"]
DIRECTIONS = ("forward", "backward", "both")

NO_OBJ_LOGIT = -10.0  # logit given to pixels an object loses under the non-overlap rule (sigmoid = 4.5e-5)
_PREV_LOGIT_CLAMP = 32.0  # Meta clamps the previous mask logits fed with new clicks to +-32
_FAR = 10**9  # "first seen" frame of a protected object: never inside the hotstart window

# Our state on the transformers session object (pickled with it).
_USER_FRAMES = "sam3serve_user_frames"  # {obj_id: set of frames the user prompted it on}: protected objects
_USER_CREATED = "sam3serve_user_created"  # ids created by clicks/masks (no text prompt)


def _clicked_prompt_id(obj_id: int) -> int:
    """The pseudo prompt id of an object created by clicks: unique and negative (no text prompt has it), so
    the detector never associates a detection with it and the non-overlap rule leaves it alone."""
    return -1 - obj_id


# -----------------------------------------------------------------------------------------------------------
# Lazy frames


class LazyFrames(Mapping):
    """`processed_frames` of a session: frame i -> preprocessed (3,S,S) tensor, read on demand.

    len() is the full frame count (transformers uses it for the number of object pointers); only the last
    `capacity` frames are kept (LRU). `decode(i)` is FrameSource.get_frame + preprocessing."""

    def __init__(self, num_frames: int, decode: Callable[[int], torch.Tensor], capacity: int):
        self.num_frames = num_frames
        self.capacity = max(1, capacity)
        self._decode = decode
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self):
        return iter(range(self.num_frames))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and 0 <= key < self.num_frames

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self:
            raise KeyError(i)
        item = self._items.get(i)
        if item is None:
            item = self._decode(i)
            self._items[i] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(i)
        return item

    def cached(self) -> list[int]:
        return list(self._items)

    def tensors(self) -> list[torch.Tensor]:
        return list(self._items.values())


# -----------------------------------------------------------------------------------------------------------
# Runner


class VideoRunner:
    """Owns Sam3VideoModel and its processors on one device; makes and restores VideoSessions.

    Sessions may be used from several threads at once (one thread per session): the model is read-only and
    the runner's counters are locked."""

    def __init__(self, model, processor, tracker_processor, placement: Placement, model_id: str, *,
                 revision: str | None = None, frame_cache_size: int = 4, batch_objects: bool = True):
        self.model = model
        self.processor = processor
        self.tracker_processor = tracker_processor
        self.placement = placement
        self.model_id = model_id
        self.revision = revision
        self.frame_cache_size = frame_cache_size
        # True: frame steps run the tracked objects in one batched tracker call (video_batching: equal to
        # transformers' per-object loop within float rounding, not bit for bit); False: transformers' loop.
        self.batch_objects = batch_objects
        self.counters = VideoCounters()
        self._lock = threading.Lock()
        tcfg = model.config.tracker_config
        self.keep_frames = int(max(tcfg.num_maskmem, tcfg.max_object_pointers_in_encoder))
        self.info = VideoModelInfo(
            model_id=model_id,
            image_size=int(model.config.image_size),
            mask_size=int(model.low_res_mask_size),
            device=str(placement.device),
            dtype=str(placement.dtype).removeprefix("torch."),
            hotstart_delay=int(model.hotstart_delay),
            max_num_objects=int(model.max_num_objects),
        )
        _guard_reconditioning(model)
        install_batched_forward(model.tracker_model)
        transformers_fixes.install()  # bounded mask IoU, fewer host syncs per frame (see there)

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, score_threshold_detection: float | None = None,
                    new_det_thresh: float | None = None, max_num_objects: int | None = None,
                    hotstart_delay: int | None = None, frame_cache_size: int = 4,
                    batch_objects: bool = True) -> VideoRunner:
        """Load the checkpoint of `cfg` (facebook/sam3 layout). The keyword overrides replace the checkpoint's
        Sam3VideoConfig values (None = keep); the tiny random test model needs score_threshold_detection=0,
        new_det_thresh=0, a small max_num_objects and hotstart_delay=0. batch_objects: see `batch_objects`."""
        from transformers import Sam3TrackerVideoProcessor, Sam3VideoModel, Sam3VideoProcessor

        overrides = {k: v for k, v in dict(score_threshold_detection=score_threshold_detection,
                                           new_det_thresh=new_det_thresh, max_num_objects=max_num_objects,
                                           hotstart_delay=hotstart_delay).items() if v is not None}
        # compile: the ViT backbone, the one module both vision paths call (the detector's
        # get_vision_features and this runner's per-frame backbone call)
        model, placement = load_model(Sam3VideoModel, cfg, compile_targets=("detector_model.vision_encoder.backbone",),
                                      **overrides)
        local = local_files_only(cfg)
        try:
            processor = Sam3VideoProcessor.from_pretrained(cfg.model_id, revision=cfg.revision or "main",
                                                           local_files_only=local)
            tracker_processor = Sam3TrackerVideoProcessor.from_pretrained(cfg.model_id, revision=cfg.revision or "main",
                                                                          local_files_only=local)
        except OSError as exc:
            raise Unavailable(f"cannot load the video processors from {cfg.model_id!r}: {exc}",
                              "model_unavailable") from exc
        return cls(model, processor, tracker_processor, placement, cfg.model_id, revision=cfg.revision,
                   frame_cache_size=frame_cache_size, batch_objects=batch_objects)

    # ------------------------------------------------------------------ public
    def new_session(self, source: FrameSource, *, prune: bool = True) -> VideoSession:
        """An empty session over `source` (nothing is decoded yet). prune=False keeps every output (tests,
        benchmarks: memory then grows with the video)."""
        from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

        _check_source(source)
        dev = self.placement.device
        hf = Sam3VideoInferenceSession(video=None, video_height=source.height, video_width=source.width,
                                       inference_device=dev, inference_state_device=dev, video_storage_device=dev,
                                       dtype=self.placement.dtype, max_vision_features_cache_size=1)
        return VideoSession(self, source, hf, prune=prune)

    def load_session(self, data: bytes, source: FrameSource, *, prune: bool = True) -> VideoSession:
        """Restore a session from `VideoSession.save()` bytes over the same video.

        SECURITY: the payload is a pickle (torch.load(weights_only=False) runs code): load only checkpoints this
        service wrote itself, from its own storage, never bytes a client supplied. Raises SessionIncompatible
        (a clear message) when the header does not match this runner (format version, transformers version,
        model id/revision, dtype) or the frame source; the caller should then rebuild by replaying."""
        import transformers

        _check_source(source)
        header, offset = read_session_header(data)
        expected = self.checkpoint_header()
        expected.update(num_frames=source.num_frames, height=source.height, width=source.width)
        for key, want in expected.items():
            got = header.get(key)
            if got != want:
                raise SessionIncompatible(
                    f"video session checkpoint has {key}={got!r}, this replica needs {want!r} (transformers "
                    f"{transformers.__version__}, model {self.model_id!r}): rebuild the session from its journal")
        state = torch.load(io.BytesIO(bytes(data[offset:])), map_location=self.placement.device, weights_only=False)
        hf = state["session"]
        dev = self.placement.device
        hf.inference_device = hf.inference_state_device = hf.video_storage_device = dev
        hf.cache.inference_device = hf.cache.inference_state_device = dev
        return VideoSession(self, source, hf, prune=prune, fresh=state.get("fresh"))

    def checkpoint_header(self) -> dict[str, Any]:
        """The header fields a checkpoint must carry to be loadable here (frame count and size come on top)."""
        import transformers

        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "transformers": transformers.__version__,
                "model_id": self.model_id, "revision": self.revision, "dtype": self.info.dtype}

    def check_health(self) -> None:
        """Raise if the device can no longer run a kernel."""
        x = torch.ones(8, device=self.placement.device)
        if float((x * 2).sum().item()) != 16.0:
            raise RuntimeError(f"device {self.placement.device} returned a wrong result")
        if self.placement.device.type == "cuda":
            torch.cuda.synchronize(self.placement.device)

    def debug_stats(self) -> dict[str, int]:
        """The runner's counters (all sessions together) as a plain dict."""
        with self._lock:
            return self.counters.snapshot()

    def debug_reset(self) -> None:
        """Zero the runner's counters (sessions keep theirs)."""
        with self._lock:
            self.counters = VideoCounters()

    # ----------------------------------------------------------------- helpers
    def _count(self, session_counters: VideoCounters, **deltas: int) -> None:
        for name, delta in deltas.items():
            setattr(session_counters, name, getattr(session_counters, name) + delta)
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)

    def _preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H,W,3) -> (3,S,S) on the device in the model dtype, exactly as
        Sam3VideoProcessor.init_video_session preprocesses a whole video."""
        out = self.processor.video_processor(videos=frame[None], device=self.placement.device, return_tensors="pt")
        return out.pixel_values_videos[0, 0].to(self.placement.device, dtype=self.placement.dtype)


def _check_source(source: FrameSource) -> None:
    if source.num_frames <= 0 or source.height <= 0 or source.width <= 0:
        raise InvalidInput(f"a video needs frames and a size, got {source.num_frames} frames of "
                           f"{source.width}x{source.height}", "invalid_video")


def _guard_reconditioning(model) -> None:
    """Wrap the model's `_prepare_recondition_masks` so a detection never re-conditions a user-prompted object
    within `recondition_every_nth_frame` frames of a frame the user prompted it on (it would overwrite the
    user's correction with the detector's mask). Installed once per model instance; sessions without user
    objects are unaffected."""
    if getattr(model, "_sam3serve_guarded", False):
        return
    original = model._prepare_recondition_masks
    window = max(int(model.recondition_every_nth_frame), 1)

    def prepare(*args, **kwargs):
        session = kwargs.get("inference_session")
        frame_idx = kwargs.get("frame_idx")
        user_frames = getattr(session, _USER_FRAMES, None)
        matches = kwargs.get("trk_id_to_max_iou_high_conf_det")
        if user_frames and matches and frame_idx is not None:
            kwargs["trk_id_to_max_iou_high_conf_det"] = {
                obj_id: det for obj_id, det in matches.items()
                if not any(abs(f - frame_idx) <= window for f in user_frames.get(obj_id, ()))}
        return original(*args, **kwargs)

    model._prepare_recondition_masks = prepare
    model._sam3serve_guarded = True


# -----------------------------------------------------------------------------------------------------------
# Session


@dataclass
class _Raw:
    """One frame's model output before the keep rules (tensors on the device)."""

    frame_index: int
    masks: dict[int, torch.Tensor]  # obj id -> (1,m,m) logits
    scores: dict[int, float]  # obj id -> reported score
    tracker_scores: dict[int, float]  # obj id -> tracker probability (ranks objects for non-overlap)
    suppressed: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)  # hotstart-removed so far (text steps)
    text: bool = False  # from a detect + track step (hotstart buffering applies)
    # Tracker-only steps: the probabilities stay on the device until _finish reads them with the masks (one
    # device->host copy per frame instead of two). probs[prob_index[obj_id]] is both the score and the tracker
    # score of obj_id; `scores`/`tracker_scores` are then empty until `materialize()`. Class defaults, so
    # checkpoints pickled before these fields existed load.
    probs: torch.Tensor | None = None
    prob_index: dict[int, int] | None = None

    def materialize(self) -> None:
        """Read lazy probabilities into scores/tracker_scores (one host sync)."""
        if self.probs is None or self.prob_index is None:
            return
        values = self.probs.tolist()
        self.scores = {i: values[k] for i, k in self.prob_index.items()}
        self.tracker_scores = dict(self.scores)
        self.probs = self.prob_index = None


class VideoSession:
    """One user's video session (see the module docstring). Made by VideoRunner.new_session/load_session."""

    def __init__(self, runner: VideoRunner, source: FrameSource, hf_session, *, prune: bool = True,
                 fresh: tuple[int, _Raw] | None = None):
        self.runner = runner
        self.source = source
        self.prune = prune
        self.counters = VideoCounters()
        self._s = hf_session
        self._fresh = fresh  # (k, raw) of add_text's step on frame k while nothing else has changed
        self._version = 0
        self._attach(hf_session)

    def _attach(self, hf) -> None:
        hf.processed_frames = LazyFrames(self.source.num_frames, self._decode, self.runner.frame_cache_size)
        hf.video_height, hf.video_width = self.source.height, self.source.width
        if not hasattr(hf, "obj_with_new_inputs"):  # set by transformers only once a detection was added
            hf.obj_with_new_inputs = []
        if not hasattr(hf, _USER_FRAMES):
            setattr(hf, _USER_FRAMES, {})
        if not hasattr(hf, _USER_CREATED):
            setattr(hf, _USER_CREATED, set())

    # ---------------------------------------------------------------- properties
    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.source.height, self.source.width)

    @property
    def object_ids(self) -> list[int]:
        """Ids of the objects the session tracks now."""
        return sorted(int(i) for i in self._s.obj_ids)

    @property
    def prompts(self) -> list[str]:
        """Active text prompts, in the order added."""
        return [self._s.prompts[k] for k in sorted(self._s.prompts)]

    @property
    def processed_frames(self) -> LazyFrames:
        return self._s.processed_frames

    @property
    def inference_session(self):
        """The transformers Sam3VideoInferenceSession (tests and debugging)."""
        return self._s

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_text(self, frame_index: int, text: str) -> VideoFrameResult:
        """Add a text prompt (active on every frame processed from now on; several may be active) and detect
        + track on `frame_index`. Returns that frame's result, with prompt_to_obj_ids."""
        frame_index = self._check_frame(frame_index)
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise InvalidInput("the text prompt is empty", "empty_text")
        self._changed()
        self.runner.processor.add_text_prompt(self._s, text)
        raw = self._text_step(frame_index, reverse=False)
        self._after_step(frame_index, reverse=False, protect=None)
        self._fresh = (frame_index, raw)
        return self._finish(raw)

    def add_clicks(self, frame_index: int, obj_id: int | None, points_xy, labels, box_xyxy=None, *,
                   clear_old_points: bool = False) -> VideoFrameResult:
        """Clicks (ORIGINAL pixels, labels 1 = positive / 0 = negative) and/or a box on one object: a new object
        (obj_id new or None = next free id) or a refinement of a tracked one. Returns the frame's result."""
        points = None if points_xy is None else np.asarray(points_xy, dtype=np.float32).reshape(-1, 2)
        lbl = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        box = None if box_xyxy is None else np.asarray(box_xyxy, dtype=np.float32).reshape(-1)
        return self.add_objects(frame_index, [VideoObjectPrompt(obj_id, points, lbl, box, None, clear_old_points)])

    def add_mask(self, frame_index: int, obj_id: int | None, mask: np.ndarray) -> VideoFrameResult:
        """The exact mask (bool (H,W), ORIGINAL size) of a new or existing object on `frame_index`."""
        return self.add_objects(frame_index, [VideoObjectPrompt(obj_id, mask=np.asarray(mask))])

    @torch.inference_mode()
    def add_objects(self, frame_index: int, objects: Sequence[VideoObjectPrompt]) -> VideoFrameResult:
        """Prompt several objects on one frame in one tracker call (see VideoObjectPrompt). Every prompted frame
        becomes a conditioning frame of its object. Returns the frame's result (all objects with an output on
        that frame), with prompted_obj_ids. A session holds at most the model's max_num_objects objects, the
        detected ones included (InvalidInput `too_many_objects`: transformers' detector fails beyond it)."""
        frame_index = self._check_frame(frame_index)
        if not objects:
            raise InvalidInput("no objects to prompt", "empty_objects")
        s = self._s
        ids = self._resolve_ids(objects)
        for i, obj in enumerate(objects):
            self._check_prompt(obj, i)
        limit = int(self.runner.model.max_num_objects)  # transformers' detector crashes past it
        if len(s.obj_ids) + sum(i not in s._obj_id_to_idx for i in ids) > limit:
            raise InvalidInput(f"a session tracks at most {limit} objects (now {len(s.obj_ids)}): remove one first",
                               "too_many_objects")
        self._changed()
        self._ensure_features(frame_index)
        k = frame_index
        tm = self.runner.model.tracker_model
        encoded, high_res, score_logits = [], [], []
        for obj_id, obj in zip(ids, objects):
            self._register_user_object(obj_id, k)
            idx = s.obj_id_to_idx(obj_id)
            point_inputs, mask_inputs = self._encode_prompt(idx, k, obj)
            od = s.output_dict_per_obj[idx]
            prev = od["cond_frame_outputs"].get(k) or od["non_cond_frame_outputs"].get(k)
            tracked = s.frames_tracked_per_obj[idx].get(k)
            is_init = tracked is None
            reverse = bool(tracked["reverse"]) if tracked else False
            prev_logits = None
            if point_inputs is not None and prev is not None and prev.get("pred_masks") is not None:
                prev_logits = prev["pred_masks"].to(self.runner.placement.device).clamp(
                    -_PREV_LOGIT_CLAMP, _PREV_LOGIT_CLAMP)
            out = tm._run_single_frame_inference(
                inference_session=s, frame_idx=k, obj_idx=idx, batch_size=1, is_init_cond_frame=is_init,
                point_inputs=point_inputs, mask_inputs=mask_inputs, reverse=reverse,
                prev_sam_mask_logits=prev_logits, streaming=False)
            od["non_cond_frame_outputs"].pop(k, None)
            s.store_output(idx, k, output_value=out, is_conditioning_frame=True)
            if not is_init:
                s.frames_tracked_per_obj[idx][k] = {"reverse": reverse}
            encoded.append(idx)
            high_res.append(out["high_res_masks"])
            score_logits.append(out["object_score_logits"])
        tm._batch_encode_memories(inference_session=s, frame_idx=k, objects_needing_memory_encoding=encoded,
                                  high_res_masks_for_memory=high_res, object_score_logits_for_memory=score_logits,
                                  is_mask_from_pts_per_obj=[True] * len(encoded))
        s.obj_with_new_inputs = []
        self.runner._count(self.counters, tracker_calls=1)
        self._after_step(k, reverse=False, protect=None, prune=False)
        result = self._finish(self._stored_raw(k))
        result.prompted_obj_ids = list(ids)
        return result

    @torch.inference_mode()
    def remove_object(self, obj_id: int) -> None:
        """Remove a tracked object from every frame (its id is not reused; a text prompt may detect the same
        thing again later under a new id). Unknown id: NotFound `object_not_found`."""
        s = self._s
        if not isinstance(obj_id, (int, np.integer)) or int(obj_id) not in s._obj_id_to_idx:
            raise NotFound(f"object {obj_id} is not tracked in this session (tracked: {self.object_ids})",
                           "object_not_found")
        obj_id = int(obj_id)
        self._changed()
        s.remove_object(obj_id, strict=True)
        for d in (s.obj_id_to_score, s.obj_first_frame_idx, s.trk_keep_alive, s.obj_id_to_last_occluded,
                  s.unmatched_frame_inds, s.obj_id_to_prompt_id, getattr(s, _USER_FRAMES)):
            d.pop(obj_id, None)
        getattr(s, _USER_CREATED).discard(obj_id)
        for pair in [p for p in s.overlap_pair_to_frame_inds if obj_id in p]:
            del s.overlap_pair_to_frame_inds[pair]

    @torch.inference_mode()
    def reset(self) -> None:
        """Back to a new session over the same video (transformers' reset_state semantics): prompts, objects,
        outputs and id numbering are cleared; the decoded-frame LRU is kept."""
        from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

        self._changed()
        old = self._s
        dev = self.runner.placement.device
        hf = Sam3VideoInferenceSession(video=None, video_height=self.source.height, video_width=self.source.width,
                                       inference_device=dev, inference_state_device=dev, video_storage_device=dev,
                                       dtype=self.runner.placement.dtype, max_vision_features_cache_size=1)
        frames = old.processed_frames
        self._s = hf
        self._attach(hf)
        hf.processed_frames = frames

    # ---------------------------------------------------------------- propagate
    def propagate(self, start_frame_index: int, direction: Direction = "both", max_frames: int | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[VideoFrameResult]:
        """Track (and, with text prompts, detect) through the video; yields one VideoFrameResult per frame.

        forward: start, start+1, ... ; backward: start, start-1, ... ; both: forward from start, then backward
        from start-1 (every frame of the range exactly once). max_frames: at most this many frames beyond the
        start in each direction (transformers' max_frame_num_to_track); None = to the ends of the video.
        With text prompts and the model's hotstart_delay > 0, results are held back up to hotstart_delay
        frames (as transformers does) so objects removed by the hotstart heuristics are hidden.
        should_stop() is called before each frame; True ends the iteration at once (results held back by
        hotstart are dropped). Validation errors are raised at the call, before any frame is processed."""
        start_frame_index = self._check_frame(start_frame_index)
        if direction not in DIRECTIONS:
            raise InvalidInput(f"direction must be one of {DIRECTIONS}, got {direction!r}", "invalid_direction")
        if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 0):
            raise InvalidInput("max_frames must be an integer >= 0", "invalid_max_frames")
        if not self._s.prompts and not self._s.obj_ids:
            raise InvalidInput("nothing to propagate: add a text prompt or an object first", "nothing_to_propagate")
        return self._propagate(int(start_frame_index), direction, max_frames, should_stop)

    @torch.inference_mode()
    def _propagate(self, start: int, direction: str, max_frames: int | None,
                   should_stop: Callable[[], bool] | None) -> Iterator[VideoFrameResult]:
        self._version += 1  # an older iterator of this session stops; add_text's step stays reusable
        version = self._version
        n = self.num_frames
        span = n if max_frames is None else int(max_frames)
        forward = range(start, min(start + span, n - 1) + 1)
        if direction == "forward":
            passes = [(forward, False)]
        elif direction == "backward":
            passes = [(range(start, max(start - span, 0) - 1, -1), True)]
        else:
            passes = [(forward, False), (range(start - 1, max(start - span, 0) - 1, -1), True)]
        # In "both", the backward half reads the forward half's first frames: keep them until it ran.
        protect = (start, start + self.runner.keep_frames) if direction == "both" else None
        hotstart = int(self.runner.model.hotstart_delay)
        for order, reverse in passes:
            buffer: list[_Raw] = []
            last = order[-1] if len(order) else None
            for t in order:
                if should_stop is not None and should_stop():
                    return
                if self._version != version:
                    raise RuntimeError("the video session changed while a propagation was running")
                fresh, self._fresh = self._fresh, None
                if fresh is not None and fresh[0] == t:
                    raw = fresh[1]
                else:
                    raw = self._text_step(t, reverse) if self._s.prompts else self._track_step(t, reverse)
                    self._after_step(t, reverse, protect)
                if raw.text and hotstart > 0:
                    buffer.append(raw)
                    self._s.hotstart_removed_obj_ids.update(raw.removed)
                    if t == last:
                        ready, buffer = buffer, []
                    elif len(buffer) >= hotstart:
                        ready, buffer = buffer[:1], buffer[1:]
                    else:
                        ready = []
                    for r in ready:
                        yield self._finish(r)
                else:
                    yield self._finish(raw)

    # ---------------------------------------------------------------- state
    def state_nbytes(self) -> int:
        """Bytes of tensor storage the session holds (outputs, memories, prompts, feature cache, frame LRU)."""
        return _tensor_nbytes(self._s)

    @torch.inference_mode()
    def save(self) -> bytes:
        """The session as bytes (header + torch.save pickle), without frames or cached features. Load with
        VideoRunner.load_session on a replica with the same transformers version, model and dtype."""
        s = self._s
        frames, features = s.processed_frames, s.cache._vision_features
        s.processed_frames, s.cache._vision_features = None, {}
        try:
            buf = io.BytesIO()
            torch.save({"session": s, "fresh": self._fresh}, buf)
        finally:
            s.processed_frames, s.cache._vision_features = frames, features
        header = self.runner.checkpoint_header()
        header.update(num_frames=self.num_frames, height=self.source.height, width=self.source.width)
        return pack_session_checkpoint(header, buf.getvalue())

    # ---------------------------------------------------------------- steps
    def _text_step(self, t: int, reverse: bool) -> _Raw:
        """transformers' detect + track step on frame t (with our user objects protected)."""
        s = self._s
        self._protect_user_objects(reverse)
        before = set(s.obj_ids)
        with object_batching(self.runner.batch_objects):
            out = self.runner.model(inference_session=s, frame_idx=t, reverse=reverse)
        new = any(i not in before for i in out.obj_id_to_mask)
        self.runner._count(self.counters, frames_processed=1, vision_calls=1, detector_calls=len(s.prompts),
                           tracker_calls=int(bool(before)) + int(new))
        user_created = getattr(s, _USER_CREATED)
        tracker_scores = {int(k): float(v) for k, v in (out.obj_id_to_tracker_score or {}).items()}
        scores = {}
        for i in out.obj_id_to_mask:
            i = int(i)
            scores[i] = tracker_scores.get(i, 0.0) if i in user_created else float(out.obj_id_to_score.get(i, 0.0))
        return _Raw(t, {int(k): v for k, v in out.obj_id_to_mask.items()}, scores, tracker_scores,
                    suppressed=set(out.suppressed_obj_ids or ()), removed=set(out.removed_obj_ids or ()), text=True)

    def _track_step(self, t: int, reverse: bool) -> _Raw:
        """Tracker-only step (no text prompt): Sam3TrackerVideoModel's propagation step on the session."""
        s = self._s
        if not s.obj_ids:
            return _Raw(t, {}, {}, {})
        self._ensure_features(t)
        with object_batching(self.runner.batch_objects):
            out = self.runner.model.tracker_model(inference_session=s, frame_idx=t, reverse=reverse)
        self.runner._count(self.counters, frames_processed=1, tracker_calls=1)
        masks = out.pred_masks.reshape(len(out.object_ids), 1, *out.pred_masks.shape[-2:])
        probs = out.object_score_logits.reshape(-1).float().sigmoid()  # read by _finish with the masks
        ids = [int(i) for i in out.object_ids]
        return _Raw(t, {i: masks[j] for j, i in enumerate(ids)}, {}, {}, probs=probs,
                    prob_index={i: j for j, i in enumerate(ids)})

    def _stored_raw(self, k: int) -> _Raw:
        """Frame k from the outputs stored in the session (after a click/mask call)."""
        s = self._s
        user_created = getattr(s, _USER_CREATED)
        masks, probs = {}, []
        for obj_id in s.obj_ids:
            od = s.output_dict_per_obj[s._obj_id_to_idx[obj_id]]
            out = od["cond_frame_outputs"].get(k) or od["non_cond_frame_outputs"].get(k)
            if out is None:
                continue
            masks[int(obj_id)] = out["pred_masks"].reshape(1, *out["pred_masks"].shape[-2:])
            probs.append(out["object_score_logits"].float().sigmoid().reshape(-1)[0])
        # one host read for all objects (the same per-object sigmoid values, stacked)
        values = torch.stack(probs).tolist() if probs else []
        tracker_scores = dict(zip(masks, values))
        scores = {obj_id: prob if obj_id in user_created else float(s.obj_id_to_score.get(obj_id, 0.0))
                  for obj_id, prob in tracker_scores.items()}
        return _Raw(k, masks, scores, tracker_scores, suppressed=set(s.suppressed_obj_ids.get(k, ())))

    def _after_step(self, t: int, reverse: bool, protect: tuple[int, int] | None, prune: bool | None = None) -> None:
        """Drop what no later step reads: high_res_masks of frame t; with pruning, non-conditioning outputs more
        than keep_frames behind t (except the protected range), and old per-frame metadata."""
        s = self._s
        prune = self.prune if prune is None else prune
        keep = self.runner.keep_frames
        for idx, od in s.output_dict_per_obj.items():
            for store in od.values():
                out = store.get(t)
                if out is not None:
                    out.pop("high_res_masks", None)
            if not prune:
                continue
            nc = od["non_cond_frame_outputs"]
            stale = [f for f in nc if (f > t + keep if reverse else f < t - keep)
                     and not (protect is not None and protect[0] <= f <= protect[1])]
            for f in stale:
                del nc[f]
                s.frames_tracked_per_obj[idx].pop(f, None)
        if prune:
            for per_frame in (s.obj_id_to_tracker_score_frame_wise, s.suppressed_obj_ids):
                for f in [f for f in per_frame if abs(f - t) > keep]:
                    del per_frame[f]
            # The hotstart rules only test len(list) >= threshold: capping the lists there keeps every
            # decision and stops transformers from deep-copying ever longer lists on every frame.
            model = self.runner.model
            for lists, cap in ((s.unmatched_frame_inds, model.hotstart_unmatch_thresh),
                               (s.overlap_pair_to_frame_inds, model.hotstart_dup_thresh)):
                for frames in lists.values():
                    if len(frames) > max(int(cap), 1):
                        del frames[: len(frames) - max(int(cap), 1)]

    def _protect_user_objects(self, reverse: bool) -> None:
        """Keep the hotstart heuristics off user-prompted objects for the next detect + track step."""
        s = self._s
        keep_alive = int(self.runner.model.max_trk_keep_alive)
        for obj_id in getattr(s, _USER_FRAMES):
            if obj_id in s._obj_id_to_idx:
                s.trk_keep_alive[obj_id] = keep_alive
                s.unmatched_frame_inds.pop(obj_id, None)
                s.obj_first_frame_idx[obj_id] = _FAR if reverse else -_FAR

    def _ensure_features(self, t: int) -> None:
        """Tracker vision features of frame t in the session cache (ViT + tracker neck, no detector neck)."""
        s = self._s
        if t in s.cache._vision_features:
            return
        model = self.runner.model
        pixels = s.get_frame(t).unsqueeze(0)
        backbone = model.detector_model.vision_encoder.backbone(pixels)
        feats, pos = model.get_vision_features_for_tracker(backbone)
        s.cache.cache_vision_features(t, {"vision_feats": feats, "vision_pos_embeds": pos})
        self.runner._count(self.counters, vision_calls=1)

    def _decode(self, i: int) -> torch.Tensor:
        frame = self.source.get_frame(i)
        frame = np.asarray(frame)
        h, w = self.source.height, self.source.width
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {i} is {frame.dtype} {frame.shape}, the video is uint8 ({h},{w},3)")
        self.runner._count(self.counters, frames_decoded=1)
        return self.runner._preprocess(frame)

    # ---------------------------------------------------------------- prompts helpers
    def _resolve_ids(self, objects: Sequence[VideoObjectPrompt]) -> list[int]:
        s = self._s
        taken = set(int(i) for i in s.obj_ids)
        next_id = max([int(s.max_obj_id), *taken, *getattr(s, _USER_FRAMES)], default=-1) + 1
        ids = []
        for i, obj in enumerate(objects):
            if obj.obj_id is None:
                while next_id in ids:
                    next_id += 1
                ids.append(next_id)
                next_id += 1
            else:
                if not isinstance(obj.obj_id, (int, np.integer)) or isinstance(obj.obj_id, bool) or obj.obj_id < 0:
                    raise InvalidInput(f"objects[{i}].obj_id must be an integer >= 0", "invalid_object_id")
                if int(obj.obj_id) in ids:
                    raise InvalidInput(f"object {obj.obj_id} is prompted twice in one call", "duplicate_object")
                ids.append(int(obj.obj_id))
        return ids

    def _check_prompt(self, obj: VideoObjectPrompt, i: int) -> None:
        h, w = self.source.height, self.source.width
        if obj.mask is not None:
            if obj.points_xy is not None or obj.box_xyxy is not None:
                raise InvalidInput(f"objects[{i}]: a mask excludes points and a box", "mask_with_points")
            m = np.asarray(obj.mask)
            if m.shape != (h, w):
                raise InvalidInput(f"objects[{i}].mask is {m.shape}, the video is ({h}, {w})", "invalid_mask")
            return
        check_points_and_box(obj.points_xy, obj.point_labels, obj.box_xyxy, f"objects[{i}]", (h, w))

    def _register_user_object(self, obj_id: int, k: int) -> None:
        """Mark obj_id as user-prompted on frame k; a new id gets the metadata transformers keeps per object."""
        s = self._s
        user_frames = getattr(s, _USER_FRAMES)
        if obj_id not in s._obj_id_to_idx:  # a new object created by a click/mask
            getattr(s, _USER_CREATED).add(obj_id)
            s.obj_id_to_prompt_id[obj_id] = _clicked_prompt_id(obj_id)
            s.obj_id_to_score[obj_id] = 1.0
            s.obj_first_frame_idx[obj_id] = -_FAR
            s.trk_keep_alive[obj_id] = int(self.runner.model.max_trk_keep_alive)
            s.max_obj_id = max(int(s.max_obj_id), obj_id)  # the detector numbers new objects above it
            s.removed_obj_ids.discard(obj_id)
            s.hotstart_removed_obj_ids.discard(obj_id)
            user_frames[obj_id] = set()
        user_frames.setdefault(obj_id, set()).add(k)

    def _encode_prompt(self, idx: int, k: int, obj: VideoObjectPrompt):
        """Store obj's inputs on frame k in the session: (point_inputs, None) or (None, mask_inputs)."""
        s = self._s
        dev = self.runner.placement.device
        if obj.mask is not None:  # as Sam3TrackerVideoProcessor.process_new_mask_for_video_frame
            size = self.runner.tracker_processor.target_size
            mask = torch.from_numpy(np.asarray(obj.mask, dtype=bool)).to(dev).float()[None, None]
            mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            mask_inputs = (mask >= 0.5).to(s.dtype)
            s.mask_inputs_per_obj[idx][k] = mask_inputs
            s.point_inputs_per_obj[idx].pop(k, None)
            return None, mask_inputs
        # as Sam3TrackerVideoProcessor.process_new_points_or_boxes_for_video_frame
        kwargs: dict[str, Any] = {}
        if obj.points_xy is not None:
            kwargs["input_points"] = [[np.asarray(obj.points_xy, dtype=np.float32).reshape(-1, 2).tolist()]]
            kwargs["input_labels"] = [[np.asarray(obj.point_labels, dtype=np.int64).reshape(-1).tolist()]]
        if obj.box_xyxy is not None:
            kwargs["input_boxes"] = [[np.asarray(obj.box_xyxy, dtype=np.float32).reshape(-1).tolist()]]
        enc = self.runner.tracker_processor(original_sizes=[[self.source.height, self.source.width]],
                                            return_tensors="pt", **kwargs)
        points = enc.get("input_points", torch.zeros(1, 1, 0, 2))
        labels = enc.get("input_labels", torch.zeros(1, 1, 0, dtype=torch.int64)).to(torch.int64)
        if "input_boxes" in enc:
            box = enc["input_boxes"].reshape(1, 1, 2, 2)
            points = torch.cat([box, points], dim=2)
            labels = torch.cat([torch.tensor([[[2, 3]]], dtype=torch.int64), labels], dim=2)
        else:
            old = s.point_inputs_per_obj[idx].get(k)
            if old is not None and not obj.clear_old_points:
                points = torch.cat([old["point_coords"].to(points.device), points], dim=2)
                labels = torch.cat([old["point_labels"].to(labels.device, torch.int64), labels], dim=2)
        point_inputs = {"point_coords": points.to(dev), "point_labels": labels.to(dev)}
        s.point_inputs_per_obj[idx][k] = point_inputs
        s.mask_inputs_per_obj[idx].pop(k, None)
        return point_inputs, None

    # ---------------------------------------------------------------- results
    def _finish(self, raw: _Raw) -> VideoFrameResult:
        """Keep rules of Sam3VideoProcessor.postprocess_outputs on the raw low-res logits (module docstring).

        The device computes what a result needs (per object: which rows and columns of the mask upsampled to
        the video size are non-empty, the lazy tracker probability, the fp16 logits after the non-overlap
        rule) and it is read back in ONE copy; emptiness and boxes are then taken on the host from the row and
        column flags: the first/last non-empty row and column are exactly what torchvision's masks_to_boxes
        computes (argmax of the flags and of the flipped flags), so boxes are identical. The non-overlap rule
        takes emptiness as a device mask (`_non_overlap(valid=...)`): no host sync in between."""
        s = self._s
        m = self.runner.info.mask_size
        hidden = raw.suppressed | set(s.hotstart_removed_obj_ids)
        cand = [i for i in sorted(raw.masks) if i not in hidden]
        if not cand:
            return VideoFrameResult.empty(raw.frame_index, m)
        n, h, w = len(cand), self.source.height, self.source.width
        logits = torch.cat([raw.masks[i].reshape(1, *raw.masks[i].shape[-2:]) for i in cand], dim=0)
        binary = F.interpolate(logits.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1) > 0
        rows, cols = binary.any(dim=2), binary.any(dim=1)  # (N, H), (N, W): as masks_to_boxes
        groups = [s.obj_id_to_prompt_id.get(i, _clicked_prompt_id(i)) for i in cand]
        shared = len(set(groups)) < len(groups)  # a group of >= 2 objects: the non-overlap rule has work
        if raw.probs is not None and shared:
            raw.materialize()  # the non-overlap rule ranks objects on the host
        parts = []
        lazy_probs, lazy_index = raw.probs, raw.prob_index
        lazy = lazy_probs is not None and lazy_index is not None
        if lazy_probs is not None and lazy_index is not None:
            where = [lazy_index[i] for i in cand]
            probs = lazy_probs if where == list(range(lazy_probs.numel())) else torch.stack(
                [lazy_probs[k] for k in where])
            parts.append(probs.reshape(-1).float().view(torch.uint8))
        out = _non_overlap(logits, [raw.tracker_scores.get(i, 0.0) for i in cand], groups,
                           valid=rows.any(dim=1) if shared else None)
        out16 = out.to(torch.float16)
        parts += [out16.reshape(-1).view(torch.uint8), rows.reshape(-1).view(torch.uint8),
                  cols.reshape(-1).view(torch.uint8)]
        host = torch.cat(parts).cpu().numpy()  # the one device -> host copy of the frame
        o = 4 * n if lazy else 0
        logits_np = host[o:o + out16.numel() * 2].view(np.float16).reshape(out16.shape)
        o += out16.numel() * 2
        rows_np = host[o:o + n * h].view(np.bool_).reshape(n, h)
        cols_np = host[o + n * h:].view(np.bool_).reshape(n, w)
        keep = np.flatnonzero(rows_np.any(axis=1)).tolist()
        if not keep:
            return VideoFrameResult.empty(raw.frame_index, m)
        kept_ids = [cand[j] for j in keep]
        r, c = rows_np[keep], cols_np[keep]
        boxes = np.stack([c.argmax(axis=1), r.argmax(axis=1), (w - 1) - c[:, ::-1].argmax(axis=1),
                          (h - 1) - r[:, ::-1].argmax(axis=1)], axis=1).astype(np.float32)
        prompt_to_obj_ids: dict[str, list[int]] = {}
        for j in keep:
            if groups[j] in s.prompts:
                prompt_to_obj_ids.setdefault(s.prompts[groups[j]], []).append(cand[j])
        if lazy:
            scores = host[:4 * n].view(np.float32)[keep]
        else:
            scores = np.asarray([raw.scores[i] for i in kept_ids], dtype=np.float32)
        return VideoFrameResult(
            frame_index=raw.frame_index,
            object_ids=np.asarray(kept_ids, dtype=np.int64),
            scores=scores,
            boxes_xyxy=boxes,
            mask_logits=logits_np if len(keep) == n else logits_np[keep],
            prompt_to_obj_ids=prompt_to_obj_ids,
        )

    # ---------------------------------------------------------------- misc
    def _check_frame(self, frame_index) -> int:
        if not isinstance(frame_index, (int, np.integer)) or isinstance(frame_index, bool) \
                or not 0 <= frame_index < self.num_frames:
            raise InvalidInput(f"frame_index must be in [0, {self.num_frames}), got {frame_index!r}",
                               "frame_out_of_range")
        return int(frame_index)

    def _changed(self) -> None:
        self._version += 1
        self._fresh = None


def _non_overlap(logits: torch.Tensor, probs: list[float], groups: list[int],
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """Within each group (text prompt), a pixel positive for several objects stays positive only for the
    object with the highest tracker probability (the first in id order on ties); the others get NO_OBJ_LOGIT
    there. The rule of Sam3VideoProcessor._apply_object_wise_non_overlapping_constraints, at low resolution.

    valid: an (N,) bool device tensor, or None (all valid): the rule applies to the valid objects only, as if
    the others were not there (rows of invalid objects are not meaningful). Computed without a host sync:
    the winner of a pixel is the valid positive object ranked first by (-float32 probability, position) =
    the first arg-max of the probabilities as float32 (what a float32 score tensor + argmax picks); an object
    with probability 0 never wins a pixel and, in a group with >= 2 valid objects, loses all of its own."""
    if len(set(groups)) == len(groups):  # no group of two: nothing to do (no device work either)
        return logits
    pos = logits > 0
    posv = pos if valid is None else pos & valid[:, None, None]
    p32 = [float(np.float32(p)) for p in probs]
    rows: list[torch.Tensor | None] = [None] * len(groups)
    for g in sorted(set(groups)):
        members = [j for j, x in enumerate(groups) if x == g]
        if len(members) < 2:
            continue
        claimers = sorted((j for j in members if p32[j] > 0), key=lambda j: (-p32[j], j))
        if len(claimers) > 1:  # claimer r loses where one ranked before it is positive (count >= 2 with itself)
            ranked = torch.stack([posv[j] for j in claimers])
            lose = ranked & (ranked.cumsum(dim=0) >= 2)
            for r, j in enumerate(claimers):
                rows[j] = lose[r]
        zeros = [j for j in members if not p32[j] > 0]
        if zeros:
            crowded = None if valid is None else torch.stack([valid[j] for j in members]).sum() >= 2
            for j in zeros:
                rows[j] = posv[j] if crowded is None else posv[j] & crowded
    if all(r is None for r in rows):
        return logits
    nothing = torch.zeros_like(pos[0])
    lose_all = torch.stack([nothing if r is None else r for r in rows])
    return logits.masked_fill(lose_all, NO_OBJ_LOGIT)


def _tensor_nbytes(session) -> int:
    """Bytes of the distinct tensor storages reachable from a transformers session (dicts, lists, sets,
    ModelOutputs, transformers helper objects such as the feature cache, and the LRU of LazyFrames)."""
    seen_storage: set[tuple[int, str]] = set()
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [session]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            key = (st.data_ptr(), str(o.device))
            if key not in seen_storage:
                seen_storage.add(key)
                total += st.nbytes()
            continue
        if id(o) in seen or o is None or isinstance(o, (int, float, str, bytes, bool, torch.device, torch.dtype)):
            continue
        seen.add(id(o))
        if isinstance(o, LazyFrames):
            stack.extend(o.tensors())
        elif isinstance(o, Mapping):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif type(o).__module__.startswith("transformers.") and not isinstance(o, torch.nn.Module) \
                and hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return total
