"""Typed application config: the `applications[].args` block of serve_config.yaml.

`AppConfig.model_validate(args)` runs in `serve_app.app.build_app`, so a typo in serve_config.yaml (or in
the Helm values that render the same block) fails the deploy instead of being silently ignored. Every
model forbids unknown keys. Environment variables carry only secrets and endpoints (HF_TOKEN, AWS_*).

This module imports nothing else from serve_app.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """Which SAM 3 checkpoint to load and how."""

    model_id: str = Field(
        "facebook/sam3",
        description="Hugging Face Hub id (gated facebook/sam3 needs HF_TOKEN) or a local directory "
        "in the facebook/sam3 layout, e.g. the tiny checkpoint from `python -m serve_app.devtools.tiny_model`.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); ignored for local dirs.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when the replica has a GPU, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 on CPU."
    )
    text_cache_size: int = Field(
        1024, ge=0, description="Text embeddings kept per replica (LRU, keyed by the prompt text); 0 disables."
    )
    local_files_only: bool = Field(
        False, description="Never contact the Hub (also implied by HF_HUB_OFFLINE=1)."
    )
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="Attention kernels: auto = transformers' default (sdpa: every SAM 3 sub-model "
        "supports it); eager = plain matmul + softmax (for comparisons)."
    )
    tf32: bool = Field(
        True, description="On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (process-wide, "
        "set at load; false = strict fp32). No effect on CPU."
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off", description="torch.compile mode for the vision encoder (the heaviest part): off, or a torch.compile "
        "mode. Each new batch size compiles again on its first call (warm up before timing)."
    )


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling for one deployment (see Ray Serve's `autoscaling_config`)."""

    min_replicas: int = Field(1, ge=0, description="0 lets the deployment scale to zero when idle.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default min_replicas).")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Per-replica load the autoscaler aims for.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Sustained overload before adding replicas.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Sustained underload before removing replicas.")
    metrics_interval_s: float = Field(10.0, gt=0, description="How often replicas report load (reaction speed).")
    look_back_period_s: float = Field(30.0, gt=0, description="Window over which load is averaged.")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class ReplicaConfig(StrictModel):
    """Placement, concurrency and scaling of one Serve deployment."""

    num_replicas: int = Field(1, ge=1, description="Fixed replica count; ignored when `autoscaling` is set.")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscaling instead of a fixed count.")
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs reserved per replica.")
    num_gpus: float | Literal["auto"] = Field(
        0.0, description="GPUs per replica. 'auto' = 1 if the Ray cluster has a GPU when the app is built, "
        "else 0 (laptops); on a single-GPU cluster concept and click both on 'auto' get 0.5 each (they share "
        "it). Set it explicitly on clusters whose GPU pool may scale to zero."
    )
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'H100' (optional).")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests queued per caller before back-pressure (429); -1 = unbounded."
    )
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0, description="Drain time for in-flight requests.")


class BatchingConfig(StrictModel):
    """Dynamic batching knobs, passed to the deployment as its Serve `user_config`. To change them without a
    restart, override the deployment's user_config in the Serve config (`deployments: [{name:
    ConceptSegmenter, user_config: {...}}]`, then `serve deploy`): Serve calls `reconfigure` on the running
    replicas. Changing them under `args` (or through Helm values) is a new app version: replicas restart."""

    max_batch_size: int = Field(8, ge=1, le=256, description="Requests merged into one model call.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=10, description="How long the first request of a batch waits for company."
    )
    eager_when_idle: bool = Field(
        True, description="A request that finds its replica idle (nothing else in flight) runs at once as a batch "
        "of one instead of waiting batch_wait_timeout_s for company; under load requests queue and batches "
        "form as configured. false = every request goes through the batch queue (deterministic batches in tests)."
    )


def _gpu_replica(**overrides) -> ReplicaConfig:
    base = dict(num_cpus=1.0, num_gpus="auto", max_ongoing_requests=32, max_queued_requests=128)
    return ReplicaConfig(**{**base, **overrides})


class ConceptConfig(StrictModel):
    """ConceptSegmenter: SAM 3 text/exemplar concept segmentation (Sam3Model) on GPU replicas."""

    replica: ReplicaConfig = Field(default_factory=_gpu_replica, description="Placement and scaling.")
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Dynamic batching (the deployment's Serve user_config; see BatchingConfig)."
    )
    max_concurrent_batches: int = Field(
        2, ge=1, le=8, description="Batches in flight per replica (overlaps CPU pre/post with GPU work); "
        "fixed at replica start."
    )
    max_pairs_per_forward: int = Field(
        32, ge=1, description="(image, prompt) pairs per detector forward; bigger batches are chunked."
    )

    @model_validator(mode="after")
    def _enough_ongoing(self) -> "ConceptConfig":
        need = self.batching.max_batch_size * self.max_concurrent_batches
        if self.replica.max_ongoing_requests < need:
            raise ValueError(
                f"concept.replica.max_ongoing_requests ({self.replica.max_ongoing_requests}) must be >= "
                f"max_batch_size * max_concurrent_batches ({need}), or batches can never fill"
            )
        return self


def _ingress_replica() -> ReplicaConfig:
    return ReplicaConfig(num_cpus=1.0, num_gpus=0.0, max_ongoing_requests=64, max_queued_requests=256)


class IngressConfig(StrictModel):
    """Sam3Ingress: the FastAPI front door on CPU replicas."""

    replica: ReplicaConfig = Field(default_factory=_ingress_replica, description="Placement and scaling.")
    model_timeout_s: float = Field(60.0, gt=0, description="Max wait for a model replica's answer (then 504).")
    retry_after_s: int = Field(
        2, ge=1, description="Retry-After seconds sent with every 429/503 that does not carry its own "
        "(model replicas saturated, unavailable or warming up; storage outages use storage.retry_after_s).")
    cpu_threads: int | None = Field(
        None, ge=1, le=256,
        description="Threads for CPU work (decode, resize, mask encoding, overlays) per ingress and JobWorker "
        "replica; None = the replica's num_cpus rounded up (at least 1, at most the CPUs it may run on; num_cpus 0: "
        "those CPUs). "
        "Requests beyond it queue for a thread.")


class LimitsConfig(StrictModel):
    """Request limits enforced by the ingress before anything reaches a GPU."""

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Upload size limit (413 above).")
    max_image_pixels: int = Field(
        40_000_000, ge=1024, description="Decoded width*height limit (decompression bombs get 413)."
    )
    max_prompts: int = Field(16, ge=1, le=64, description="Prompts per request.")
    max_text_chars: int = Field(256, ge=1, le=1024, description="Characters per text prompt.")
    max_boxes_per_prompt: int = Field(16, ge=1, le=256, description="Exemplar boxes per prompt.")
    max_instances: int = Field(100, ge=1, description="Upper bound and default for `max_instances`.")
    max_output_pixels: int = Field(
        1_000_000_000, ge=1024,
        description="Output budget per request: masks x width x height of the ORIGINAL image, counted before "
        "encoding (a mask's worst-case CPU and response size grow with the image's pixels); a polygon mask "
        "counts 4 times. Concept and automatic answers over it keep their highest-scoring masks that fit and "
        "say `truncated`; clicks drop multimask candidates first, then get 413 output_too_large. Must be >= "
        "max_image_pixels. The default is 25 RLE masks of a 40 MP image (worst case, noisy masks: ~10 s of one "
        "core, ~45 MB of RLE) or 6 polygon masks (~35 MB of JSON), 250 RLE masks of 4 MP.")
    max_overlay_pixels: int = Field(
        4 * 1024 * 1024, ge=65_536,
        description="Largest overlay PNG (width x height): overlays of larger images are downscaled to fit "
        "(aspect kept), never refused.")

    @model_validator(mode="after")
    def _one_mask_fits(self) -> "LimitsConfig":
        if self.max_output_pixels < self.max_image_pixels:
            raise ValueError("limits.max_output_pixels must be >= limits.max_image_pixels (one mask of the "
                             "largest image must fit)")
        return self


class StorageConfig(StrictModel):
    """Where uploads, results, overlays and exports live (see DESIGN.md "Storage layout").

    Credentials never appear here: S3 uses the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
    AWS_PROFILE, IRSA web identity, instance metadata).
    """

    uri: str = Field(
        "file:///tmp/sam3-serve",
        description="file:///abs/dir for single-machine development, or s3://bucket/prefix.",
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, SeaweedFS); None = AWS. Also AWS_ENDPOINT_URL_S3."
    )
    region: str | None = Field(None, description="S3 region; None = the standard AWS chain.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 bucket addressing; 'path' for most self-hosted S3-compatible servers."
    )
    presign_endpoint_url: str | None = Field(
        None, description="Endpoint written into presigned S3 URLs when clients reach S3 by another address "
        "than the service does (e.g. in-cluster MinIO behind a public ingress); None = endpoint_url.",
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of this service as clients see it; presigned URLs of the file:// backend "
        "point at its /v1/blobs route.",
    )
    presign_expiry_s: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned GET/PUT URLs handed to clients."
    )
    max_upload_bytes: int = Field(
        1024**3, ge=1, description="Largest object a presigned PUT (POST /v1/uploads) may write."
    )
    allowed_url_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets that s3://bucket/key image inputs may be read from (with the service's credentials); "
        "empty = none. This store's own bucket is not implied: list it to allow it.",
    )
    tenant_url_prefixes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per tenant, the only s3:// inputs it may read, as \"bucket/key-prefix\" entries (e.g. "
        "{\"acme\": [\"acme-data/videos/\"]}); a tenant listed here ignores allowed_url_buckets. Whatever the lists "
        "say, this store's own bucket is readable only under the caller's own t/{tenant}/ prefix.",
    )
    default_tenant: str = Field(
        "default", pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Tenant whose key prefix t/{tenant}/ is used until authentication assigns tenants.",
    )
    connect_timeout_s: float = Field(3.0, gt=0, description="Per-attempt timeout to connect to storage.")
    read_timeout_s: float = Field(15.0, gt=0, description="Per-attempt timeout waiting for storage to answer.")
    max_attempts: int = Field(
        3, ge=1, le=10, description="Attempts per storage call (botocore adaptive retry mode), first included."
    )
    max_pool_connections: int = Field(
        64, ge=1, description="HTTP connections kept per S3 client; size it to the replica's concurrency."
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent when storage is unavailable (503).")
    io_threads: int = Field(
        16, ge=1, le=256,
        description="Threads for blocking storage calls per ingress and JobWorker replica, apart from the CPU "
        "threads (ingress.cpu_threads), so a slow storage cannot starve decoding.")

    @model_validator(mode="after")
    def _known_scheme(self) -> "StorageConfig":
        if self.uri.startswith("s3://"):
            if not self.uri[len("s3://"):].split("/", 1)[0]:
                raise ValueError("storage.uri s3://bucket/prefix needs a bucket")
        elif not self.uri.startswith("file:///"):
            raise ValueError("storage.uri must be file:///absolute/dir or s3://bucket/prefix")
        return self


class JobsConfig(StrictModel):
    """Asynchronous jobs (POST /v1/jobs): leases, heartbeats, retries and recovery.

    A running job holds a lease of `lease_s` renewed every `heartbeat_interval_s`; a job whose lease expired
    (its replica died) is re-dispatched by any replica's recovery loop, at most `max_attempts` runs in all.
    """

    lease_s: float = Field(30.0, gt=0, description="How long a claim stays valid without a heartbeat.")
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="How often a running job renews its lease; must be < lease_s (lease_s/3 is good)."
    )
    max_attempts: int = Field(3, ge=1, le=20, description="Runs per job before it is failed for good.")
    recovery_interval_s: float = Field(
        10.0, gt=0, description="How often each worker looks for expired leases and stranded queued jobs."
    )
    queued_pickup_timeout_s: float = Field(
        30.0, gt=0, description="A queued job nobody claimed for this long is re-dispatched by recovery "
        "(also the delay before a retryable failure runs again).",
    )
    max_concurrent_jobs: int = Field(2, ge=1, description="Jobs one worker replica runs at once.")
    idempotency_ttl_s: float = Field(
        86400.0, gt=0, description="An Idempotency-Key is remembered this long (per tenant): a retry within it "
        "returns the same job; after it, the key makes a new job.")
    max_concurrent_video_jobs: int = Field(
        1, ge=1, description="pcs_video jobs one worker replica runs at once (more wait, their leases held). "
        "Video jobs so use at most worker replicas x this many session actors: the rest of video.max_sessions "
        "stays for interactive sessions.")
    video_chunk_frames: int = Field(
        32, ge=1, le=10_000, description="pcs_video tracks this many frames per chunk, then stores the chunk's "
        "masks and the session state: a job whose worker died resumes after its last stored chunk.")
    worker: ReplicaConfig = Field(
        default_factory=lambda: ReplicaConfig(num_cpus=1.0, num_gpus=0.0, max_ongoing_requests=64),
        description="JobWorker replicas (CPU): they run jobs against the model deployments and recover "
        "jobs whose worker died. More replicas = more jobs at once and faster recovery.",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> "JobsConfig":
        if self.heartbeat_interval_s >= self.lease_s:
            raise ValueError("jobs.heartbeat_interval_s must be < jobs.lease_s")
        return self


class AutoMaskConfig(StrictModel):
    """Defaults and bounds of automatic mask generation (POST /v1/auto/image); requests may override the
    defaults within the bounds."""

    points_per_side: int = Field(16, ge=1, le=64, description="Grid of points_per_side^2 single clicks.")
    max_points_per_side: int = Field(
        64, ge=1, le=64, description="Largest points_per_side a request may ask (400 points_per_side_too_large "
        "above); at most 64 (12,288 candidates; the replica keeps the 1,024 best by predicted IoU before NMS).")
    points_per_batch: int = Field(
        64, ge=1, le=1024, description="Grid points per mask-decoder call (GPU memory); also the most a request "
        "may ask (larger asks are lowered to it: chunking never changes the masks).")
    pred_iou_thresh: float = Field(0.88, ge=0, le=1, description="Drop candidates whose predicted IoU is lower.")
    stability_score_thresh: float = Field(
        0.95, ge=0, le=1, description="Drop candidates whose stability (IoU of the mask at logit +offset vs "
        "-offset) is lower.")
    min_pred_iou_thresh: float = Field(
        0.0, ge=0, le=1, description="Floor of pred_iou_thresh, for this config and for requests (400 "
        "pred_iou_thresh_too_low below). The work is bounded whatever the thresholds (max_points_per_side, the "
        "replica's 1,024-candidate cap, limits.max_output_pixels); raise it to refuse near-useless requests.")
    min_stability_score_thresh: float = Field(
        0.0, ge=0, le=1, description="Floor of stability_score_thresh, for this config and for requests (400 "
        "stability_score_thresh_too_low below).")
    stability_score_offset: float = Field(1.0, gt=0, description="Logit offset of the stability score.")
    box_nms_thresh: float = Field(0.7, gt=0, le=1, description="Box IoU above which the lower-scored mask is dropped.")
    min_mask_area: int = Field(0, ge=0, description="Drop masks with fewer pixels (original resolution).")
    max_masks: int = Field(
        256, ge=1, le=1024, description="Masks returned at most (highest score first; also within "
        "limits.max_output_pixels).")

    @model_validator(mode="after")
    def _above_floors(self) -> "AutoMaskConfig":
        if self.pred_iou_thresh < self.min_pred_iou_thresh:
            raise ValueError("click.auto.pred_iou_thresh must be >= click.auto.min_pred_iou_thresh")
        if self.stability_score_thresh < self.min_stability_score_thresh:
            raise ValueError("click.auto.stability_score_thresh must be >= click.auto.min_stability_score_thresh")
        return self


def _click_replica() -> ReplicaConfig:
    return _gpu_replica(max_ongoing_requests=64, max_queued_requests=256)


class ClickConfig(StrictModel):
    """ClickSegmenter: clicks/boxes/masks per object and automatic masks (Sam3TrackerModel, loaded from
    model.model_id) on GPU replicas, each with an LRU of image embeddings.

    GPU sharing: by default ClickSegmenter and ConceptSegmenter get GPUs of their own (num_gpus 'auto' = 1
    each when the cluster has two or more GPUs), so a click (a few ms of decoder work) never queues behind
    a concept batch and the two scale independently. On a single-GPU cluster 'auto' gives each 0.5 (they
    share it); fractions can also be set explicitly. Shared, the weights (~1.7 GB + ~0.9 GB in bf16) plus
    cache_bytes must fit in the GPU's memory.
    """

    replica: ReplicaConfig = Field(
        default_factory=_click_replica,
        description="Placement and scaling. num_gpus 'auto' = 1 GPU per replica (not shared with "
        "ConceptSegmenter) when the cluster has 2+ GPUs, 0.5 on a single-GPU cluster; or set fractions.",
    )
    batching: BatchingConfig = Field(
        default_factory=lambda: BatchingConfig(max_batch_size=16, batch_wait_timeout_s=0.002),
        description="Clicks of concurrent requests merged into one decoder pass (Serve user_config; see "
        "BatchingConfig).",
    )
    cache_bytes: int = Field(
        2 * 1024**3, ge=0,
        description="Image-embedding cache per replica, in bytes (LRU). facebook/sam3 in bf16 needs ~10.6 MB "
        "per image (fp32 on CPU: ~21 MB), so 2 GiB holds ~200 images; 0 disables caching.",
    )
    routing: Literal["consistent_hash", "default"] = Field(
        "consistent_hash",
        description="consistent_hash: requests for an image go to the replica whose cache likely holds it "
        "(Ray's ConsistentHashRouter keyed by image_id; a miss after a scale event or fallback recomputes). "
        "default: Serve's power-of-two-choices router (no affinity).",
    )
    num_fallback_replicas: int = Field(
        2, ge=0, description="consistent_hash: replicas tried after the image's own one when it is saturated.")
    precompute_on_upload: bool = Field(
        True, description="POST /v1/images computes the embedding by default (the first click is fast); "
        "a request can skip it with precompute=false.")
    max_objects: int = Field(16, ge=1, le=256, description="Objects per POST /v1/pvs/image request.")
    max_points_per_object: int = Field(32, ge=1, le=256, description="Points per object.")
    max_objects_per_forward: int = Field(64, ge=1, description="Objects per mask-decoder call; more are chunked.")
    auto: AutoMaskConfig = Field(default_factory=AutoMaskConfig, description="Automatic mask generation.")

    @model_validator(mode="after")
    def _consistent(self) -> "ClickConfig":
        if self.replica.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(f"click.replica.max_ongoing_requests ({self.replica.max_ongoing_requests}) must be "
                             f">= click.batching.max_batch_size ({self.batching.max_batch_size})")
        if self.auto.points_per_side > self.auto.max_points_per_side:
            raise ValueError("click.auto.points_per_side must be <= click.auto.max_points_per_side")
        return self


class VideoLimitsConfig(StrictModel):
    """What one video session may hold; enforced at ingest and on every prompt (4xx with a code above)."""

    max_video_bytes: int = Field(2 * 1024**3, ge=1024, description="Largest source video (413 video_too_large).")
    max_duration_s: float = Field(3600.0, gt=0, description="Longest source video (413 video_too_long).")
    max_frame_pixels: int = Field(
        3840 * 2160, ge=1024, description="Largest decoded frame, width*height (413 frame_too_large).")
    max_frames: int = Field(
        900, ge=1, description="Frames a session processes at most: the processing fps is min(source fps, "
        "requested fps, max_frames / duration).")
    max_objects: int = Field(16, ge=1, le=256, description="Objects a session tracks at once (400 too_many_objects).")
    max_text_prompts: int = Field(4, ge=1, le=16, description="Active text prompts per session.")
    max_points_per_object: int = Field(32, ge=1, le=256, description="Clicks per object per prompt call.")
    max_objects_per_call: int = Field(16, ge=1, le=256, description="Objects prompted in one call.")


class SessionActorConfig(StrictModel):
    """Placement of a video session actor (one per session, a named Ray actor holding its state)."""

    num_gpus: float | Literal["auto"] = Field(
        "auto", description="GPU share per session actor: 'auto' = 0.25 when the Ray cluster has a GPU (four "
        "sessions per GPU), else 0 (CPU). A per-process CUDA memory cap of the same fraction is applied.")
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs per session actor.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. 'H100' (optional).")
    namespace: str = Field("sam3-video", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                           description="Ray namespace of the session actors (their names are looked up in it).")


class VideoConfig(StrictModel):
    """Video sessions: ingest on the CPU ingress, one session actor per session (SessionManager deployment)."""

    model_id: str | None = Field(None, description="Checkpoint of the video model; None = model.model_id.")
    score_threshold_detection: float | None = Field(
        None, ge=0, le=1, description="Detection score threshold override (None = the checkpoint's).")
    new_det_thresh: float | None = Field(
        None, ge=0, le=1, description="Score a new detection needs to become a tracked object (None = the checkpoint's).")
    max_num_objects: int | None = Field(
        None, ge=1, description="Objects the model tracks at most (None = the checkpoint's).")
    hotstart_delay: int | None = Field(
        None, ge=0, description="Frames the detector waits before confirming objects (None = the checkpoint's; "
        "results then arrive with that delay).")
    batch_tracker_objects: bool = Field(
        True, description="Track a frame's objects in one batched tracker call instead of transformers' loop over "
        "objects (equal within float rounding; 1.1-1.45x frames/s at 3-10 objects on CPU). false = transformers' "
        "own per-object path, bit for bit.")
    actor: SessionActorConfig = Field(default_factory=SessionActorConfig, description="Session actor placement.")
    warm_pool: int = Field(
        1, ge=0, le=64, description="Idle session actors kept with the model loaded, so a new session does not "
        "wait for a model load.")
    max_sessions: int = Field(32, ge=1, description="Live (not parked) sessions per SessionManager replica (429 above).")
    start_timeout_s: float = Field(
        1.0, gt=0, description="How long a request waits for a session actor to start (model load, a GPU node "
        "being added) before answering 409 session_starting + Retry-After.")
    idle_ttl_s: float = Field(
        900.0, gt=0, description="A session idle this long is parked: checkpointed, its actor and GPU share freed; "
        "its next request revives it.")
    retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="A parked session older than this (since last use) is deleted with "
        "its frames, masks, journal and checkpoints.")
    reaper_interval_s: float = Field(30.0, gt=0, description="How often idle and expired sessions are looked for.")
    checkpoint_after_propagate: bool = Field(
        True, description="Save the session state after each completed propagation, so a rebuild loads it "
        "instead of replaying the journal.")
    limits: VideoLimitsConfig = Field(default_factory=VideoLimitsConfig, description="Per-session limits.")
    manager: ReplicaConfig = Field(
        default_factory=lambda: ReplicaConfig(num_cpus=0.5, num_gpus=0.0, max_ongoing_requests=256),
        description="SessionManager replicas (CPU): session records, actor pool, parking and rebuilds.")

    @model_validator(mode="after")
    def _retention_after_idle(self) -> "VideoConfig":
        if self.retention_s < self.idle_ttl_s:
            raise ValueError("video.retention_s must be >= video.idle_ttl_s")
        return self


TENANT_PATTERN = r"^[a-z0-9-]{1,40}$"


class ApiKeyEntry(StrictModel):
    """One API key: its SHA-256 (never the key itself) and the tenant it acts for. Make one with
    `sam3-serve hash-key --generate`."""

    key_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key as 64 lowercase hex digits "
        "(`sam3-serve hash-key`); the key itself is never configured or stored.")
    tenant: str = Field(
        pattern=TENANT_PATTERN, description="Tenant the key acts for (a-z, 0-9, '-'; 1-40 characters): its "
        "objects live under t/{tenant}/ and only its keys see them. Several keys may share a tenant (rotation).")
    name: str | None = Field(
        None, max_length=100, description="A label for operators (e.g. 'ci-bot'); never used to authenticate.")


class QuotaConfig(StrictModel):
    """One tenant's fair share (README "Quotas"). Every limit is optional: unset (null) = unlimited. Enforced
    for every ingress replica together by the QuotaKeeper deployment (requests, model work, upload bytes) and
    by the jobs' active markers in storage (concurrent jobs). Exceeding one: 429 with `rate_limited` or
    `quota_exceeded`, the limit's name and a Retry-After."""

    requests_per_s: float | None = Field(
        None, gt=0, description="Token bucket refill rate: sustained API requests per second (public routes and "
        "CORS preflights not counted). Over it: 429 rate_limited, Retry-After = when the next token is due.")
    burst: int | None = Field(
        None, ge=1, description="Token bucket size: requests allowed at once after a quiet spell (default: "
        "max(1, ceil(requests_per_s)).")
    max_inflight_model_requests: int | None = Field(
        None, ge=1, description="Concurrent model work: POST /v1/pcs/image, /v1/pvs/image, /v1/auto/image and a "
        "video session's prompts/propagate in progress at once (over it: 429 quota_exceeded, Retry-After 1).")
    upload_bytes_per_day: int | None = Field(
        None, ge=1, description="Bytes a tenant may send per UTC day: request bodies plus the declared size of "
        "presigned uploads (POST /v1/uploads). Over it: 429 quota_exceeded, Retry-After = until UTC midnight.")
    max_concurrent_jobs: int | None = Field(
        None, ge=1, description="Jobs queued or running at once (all kinds; an Idempotency-Key replay of an "
        "existing job is never refused). Over it: 429 quota_exceeded, Retry-After 5.")

    @property
    def limited(self) -> bool:
        """True when any limit is set."""
        return any(value is not None for value in self.model_dump().values())

    @property
    def bucket_size(self) -> float:
        import math

        assert self.requests_per_s is not None
        return float(self.burst if self.burst is not None else max(1, math.ceil(self.requests_per_s)))

    def merged(self, override: "QuotaConfig") -> "QuotaConfig":
        """These limits with the ones `override` sets explicitly replacing them."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class AuthConfig(StrictModel):
    """Who may call the API and as which tenant (see README "Authentication and tenants"). With api_keys every
    route but the public ones (GET /healthz, /readyz, CORS preflights, the docs when public_docs, the signed
    /v1/blobs URLs of the file:// backend) needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (WebSocket:
    also `?api_key=`); a missing or unknown key is a 401."""

    mode: Literal["none", "api_keys"] = Field(
        "none", description="none = no authentication: every caller is storage.default_tenant (one trusted "
        "network); api_keys = every non-public request needs a configured key and acts as its tenant.")
    keys: list[ApiKeyEntry] = Field(
        default_factory=list, description="API keys as {key_sha256, tenant, name?}, merged with keys_file's.")
    keys_file: str | None = Field(
        None, description="YAML or JSON file holding a list of {key_sha256, tenant, name?} entries, merged with "
        "`keys` (the Helm chart mounts auth.existingSecret's keys.yaml here). Read when each ingress replica "
        "starts (not when the app is built: a missing or malformed file fails the replica's start with one line), "
        "then again within ~10 s of each change (a bad change is logged, the keys before stay).")
    public_docs: bool = Field(
        True, description="Serve /docs, /redoc and /openapi.json without a key; false = they need one too.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API cross-origin (CORS), e.g. "
        "'https://app.example.com', or '*' (then without credentials); empty = no CORS headers at all.")
    quotas: QuotaConfig = Field(
        default_factory=QuotaConfig, description="Every tenant's limits (storage.default_tenant's too): "
        "requests_per_s, burst, max_inflight_model_requests, upload_bytes_per_day, max_concurrent_jobs; "
        "unset = unlimited.")
    tenant_quotas: dict[str, QuotaConfig] = Field(
        default_factory=dict, description="Per-tenant overrides of `quotas`: {tenant: {limit: value}}; a limit "
        "set here replaces the default one for that tenant (null = unlimited for it).")

    def quota_of(self, tenant: str) -> QuotaConfig:
        """`tenant`'s effective limits: `quotas` with its `tenant_quotas` entry applied."""
        override = self.tenant_quotas.get(tenant)
        return self.quotas if override is None else self.quotas.merged(override)

    @property
    def any_quota(self) -> bool:
        """True when some tenant has a limit (the app then runs the QuotaKeeper)."""
        return self.quotas.limited or any(q.limited for q in self.tenant_quotas.values())

    @model_validator(mode="after")
    def _consistent(self) -> "AuthConfig":
        import re

        check_unique_keys(self.keys, "auth.keys")
        if self.mode == "api_keys" and not self.keys and not self.keys_file:
            raise ValueError("auth.mode api_keys needs at least one key in auth.keys or auth.keys_file")
        if self.keys_file is not None and not self.keys_file.startswith("/"):
            raise ValueError(f"auth.keys_file must be an absolute path (replicas do not share a working "
                             f"directory), got {self.keys_file!r}")
        for tenant in self.tenant_quotas:
            if not re.fullmatch(TENANT_PATTERN, tenant):
                raise ValueError(f"auth.tenant_quotas: {tenant!r} is not a tenant id ({TENANT_PATTERN})")
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(f"auth.cors_origins: {origin!r} is not an origin: scheme://host[:port], no path "
                                 "or trailing slash (or '*')")
        return self

    def load_keys(self) -> list[ApiKeyEntry]:
        """`keys` plus the entries of `keys_file`, read now, checked together (no hash twice; api_keys mode: at
        least one key). Raises ValueError with one line naming the file and what is wrong with it."""
        entries = list(self.keys)
        if self.keys_file:
            entries += read_keys_file(self.keys_file)
        check_unique_keys(entries, f"auth.keys + auth.keys_file {self.keys_file}" if self.keys_file else "auth.keys")
        if self.mode == "api_keys" and not entries:
            raise ValueError(f"auth.mode api_keys but auth.keys and auth.keys_file {self.keys_file} hold no key")
        return entries


def read_keys_file(path: str) -> list[ApiKeyEntry]:
    """The entries of an auth.keys_file: a YAML (or JSON) list of {key_sha256, tenant, name?}; an empty file is
    an empty list. ValueError (one line) when it cannot be read or is not such a list."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"auth.keys_file {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"auth.keys_file {path}: not valid YAML/JSON{at}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"auth.keys_file {path}: must hold a list of {{key_sha256, tenant, name}} entries, "
                         f"not a {type(data).__name__}")
    try:
        return TypeAdapter(list[ApiKeyEntry]).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"auth.keys_file {path}: entry {loc}: {first['msg']} "
                         f"({exc.error_count()} error(s) in all)") from None


def check_unique_keys(entries: list[ApiKeyEntry], where: str) -> None:
    """ValueError when a key hash appears twice (for one tenant or, worse, for two)."""
    seen: dict[str, ApiKeyEntry] = {}
    for entry in entries:
        other = seen.setdefault(entry.key_sha256, entry)
        if other is entry:
            continue
        label = f"key_sha256 {entry.key_sha256[:12]}..."
        if other.tenant != entry.tenant:
            raise ValueError(f"{where}: {label} is given to two tenants ({other.tenant!r} and {entry.tenant!r}): a key "
                             "must identify exactly one tenant")
        raise ValueError(f"{where}: {label} appears twice (tenant {entry.tenant!r}); list each key once")


class ObservabilityConfig(StrictModel):
    """What the service exposes about itself besides Ray Serve's metrics (port 8080)."""

    debug_interface: bool = Field(
        False, description="Enable the debug_* methods of the model deployments (model-call counters, cache "
        "resize, counter reset) for tests and benchmarks. Never needed in production; off = they answer 403.")


class WebConfig(StrictModel):
    """The web playground (serve_app/web/): static pages served by the ingress at /ui/ (and / redirects there)."""

    enabled: bool = Field(
        True, description="Serve the web playground at /ui/ (public static files; the page itself calls the API "
        "with the key typed into it). false = /ui/ and / answer 404.")


class AppConfig(StrictModel):
    """Root of `applications[].args` in serve_config.yaml (and of the Helm chart's `app` values)."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Checkpoint and device.")
    concept: ConceptConfig = Field(default_factory=ConceptConfig, description="Concept segmentation deployment.")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="HTTP ingress deployment.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Artifact storage.")
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="Asynchronous jobs.")
    click: ClickConfig = Field(
        default_factory=ClickConfig, description="Click (points/boxes/masks) and automatic mask deployment.")
    video: VideoConfig = Field(default_factory=VideoConfig, description="Video sessions.")
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API keys (tenant per key), public routes and CORS.")
    observability: ObservabilityConfig = Field(
        default_factory=ObservabilityConfig, description="Debug interface and other self-inspection.")
    web: WebConfig = Field(default_factory=WebConfig, description="The web playground.")

    @model_validator(mode="after")
    def _default_tenant_is_a_tenant(self) -> "AppConfig":
        import re

        if self.auth.mode == "none" and not re.fullmatch(TENANT_PATTERN, self.storage.default_tenant):
            raise ValueError(f"storage.default_tenant {self.storage.default_tenant!r} must match {TENANT_PATTERN} "
                             "(the tenant of every request while auth.mode is none)")
        return self


def known_tenants(cfg: AppConfig) -> list[str]:
    """Every tenant this deployment serves: storage.default_tenant and the tenants of auth.keys + auth.keys_file
    (sorted, once each; an unreadable keys file counts its inline keys only: the ingress refuses to start on it).
    Background work that scans storage per tenant (job recovery, the session reaper) covers these, as read when
    its replica starts."""
    try:
        entries = cfg.auth.load_keys()
    except ValueError:
        entries = list(cfg.auth.keys)
    return sorted({cfg.storage.default_tenant, *(entry.tenant for entry in entries)})
