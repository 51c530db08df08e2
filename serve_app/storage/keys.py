"""The object key layout (DESIGN.md "Storage layout") and the validation that guards it.

Keys are relative to the store's root (the `s3://bucket/prefix` prefix or the `file://` directory is
added by the backend) and always start with the tenant:

    t/{tenant}/images/{sha256}                 an uploaded image, content-addressed
    t/{tenant}/uploads/{upload_id}             a presigned-PUT upload
    t/{tenant}/jobs/{job_id}/input.json        a job's input body
    t/{tenant}/jobs/{job_id}/record.json       a job's state (serve_app.jobs.records.JobRecord)
    t/{tenant}/jobs/{job_id}/result.json       a job's result, written before the record says succeeded
    t/{tenant}/jobs/{job_id}/overlay.png       a job's optional overlay
    t/{tenant}/results/{result_id}/result.json  a synchronous request's result ("return": "url")
    t/{tenant}/results/{result_id}/overlay.png  …and its overlay
    t/{tenant}/jobs-active/{job_id}            marker: the job is queued or running (recovery scans these)
    t/{tenant}/jobs-idem/{sha256(key)}         marker: Idempotency-Key -> job id and body hash
    t/{tenant}/sessions/{sid}/record.json      a video session's record (+ journal/, checkpoints/)
    t/{tenant}/sessions/{sid}/journal/{seq}    a session's prompt journal, seq zero-padded
    t/{tenant}/sessions/{sid}/frames/{i}.jpg   extracted frames (+ frames/index.json, the manifest)
    t/{tenant}/sessions/{sid}/masks/{i:06d}.json  a computed frame's objects (RLE), for playback and exports
    t/{tenant}/videos/{sha256}                 a source video, content-addressed
    t/{tenant}/exports/{export_id}.zip         dataset exports (export_id = the job id)
    t/{tenant}/jobs/{job_id}/state.json        a running job's resume state (+ checkpoint.bin: pcs_video model state)
    t/{tenant}/videos-meta/{sha256}.json       a library video's name and probe metadata
    t/{tenant}/videos-index/{inv ms}-{sha256}  newest-first index of the video library
    t/{tenant}/usage/uploads-{YYYY-MM-DD}.json  the tenant's upload bytes of that UTC day (quota ledger)
    t/{tenant}/quarantine/{key}                an unreadable object moved aside (`key` without its t/{tenant}/),
                                               e.g. quarantine/jobs/{job_id}/record.json
    sys/probes/conditional-writes/{id}         reserved prefix `sys/` (outside every tenant): the start-up
                                               probe of conditional writes (storage/base.py), deleted after

Every id that reaches a key is either generated here (`new_id`, `new_job_id`) or validated against
`[A-Za-z0-9_-]{1,64}` (sha256: 64 lowercase hex), so no client string can add a `/`, a `..` or another
tenant's prefix. `check_key` is the last line of defence inside the backends.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from serve_app.errors import InvalidInput

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_MAX_KEY_CHARS = 900
_MAX_MS = 16**12 - 1  # 12 hex digits of milliseconds: good until the year 10889


def validate_id(value: object, what: str = "id") -> str:
    """Return `value` if it is a valid id (`[A-Za-z0-9_-]{1,64}`), else raise InvalidInput."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(f"{what} must match [A-Za-z0-9_-]{{1,64}}", f"invalid_{what}")
    return value


def validate_sha256(value: object) -> str:
    """Return `value` if it is 64 lowercase hex digits (an image id), else raise InvalidInput."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput("image_id must be 64 lowercase hex digits (the sha256 of the image)", "invalid_image_id")
    return value


def validate_tenant(value: object) -> str:
    return validate_id(value, "tenant")


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return `key` if it is a safe relative key, else raise InvalidInput.

    Safe: `/`-separated segments of `[A-Za-z0-9_.-]` that do not start with a dot (so no `.`/`..`, no
    hidden names that the local backend uses for itself), no leading or doubled `/`. With `prefix=True`
    the key may end with `/` or be empty (a listing prefix).
    """
    if not isinstance(key, str) or len(key) > _MAX_KEY_CHARS:
        raise InvalidInput("storage key is not a string of at most 900 characters", "invalid_key")
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and not body:
        return key
    if not all(_SEGMENT.fullmatch(segment) for segment in body.split("/")):
        raise InvalidInput(f"unsafe storage key {key!r}", "invalid_key")
    return key


RESERVED_PREFIX = "sys/"  # the service's own objects; tenants live under t/, so no tenant key is ever here


def probe_key() -> str:
    """A fresh key for one probe of the storage's conditional writes (ArtifactStore.probe_conditional_writes)."""
    return f"{RESERVED_PREFIX}probes/conditional-writes/{new_id()}"


def quarantine_key(tenant: str, key: str) -> str:
    """Where an unreadable object `key` of `tenant` is moved aside: `t/{tenant}/quarantine/{rest of key}`."""
    head = tenant_prefix(tenant)
    if not key.startswith(head) or key.startswith(head + "quarantine/"):
        raise InvalidInput(f"{key!r} is not a key of tenant {tenant} outside its quarantine", "invalid_key")
    return check_key(f"{head}quarantine/{key[len(head):]}")


def new_id() -> str:
    """A fresh id: 12 hex digits of milliseconds since the epoch + 20 random hex digits (sorts by time)."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def new_job_id() -> str:
    """A fresh job id that sorts NEWEST first: 12 hex digits of (2**48-1 - ms) + 8 random hex digits.

    S3 lists keys in ascending order, so listing `jobs/` returns the most recent jobs first.
    """
    return f"{_MAX_MS - int(time.time() * 1000):012x}{secrets.token_hex(4)}"


def tenant_prefix(tenant: str) -> str:
    return f"t/{validate_tenant(tenant)}/"


def image_key(tenant: str, sha256: str) -> str:
    return f"{tenant_prefix(tenant)}images/{validate_sha256(sha256)}"


def upload_key(tenant: str, upload_id: str) -> str:
    return f"{tenant_prefix(tenant)}uploads/{validate_id(upload_id, 'upload_id')}"


def result_key(tenant: str, result_id: str) -> str:
    return f"{tenant_prefix(tenant)}results/{validate_id(result_id, 'result_id')}/result.json"


def result_overlay_key(tenant: str, result_id: str) -> str:
    return f"{tenant_prefix(tenant)}results/{validate_id(result_id, 'result_id')}/overlay.png"


def jobs_prefix(tenant: str) -> str:
    """Prefix under which every job's objects live (`list` it for the newest jobs first)."""
    return f"{tenant_prefix(tenant)}jobs/"


def _job_dir(tenant: str, job_id: str) -> str:
    return f"{jobs_prefix(tenant)}{validate_id(job_id, 'job_id')}/"


def job_input_key(tenant: str, job_id: str) -> str:
    return _job_dir(tenant, job_id) + "input.json"


def job_record_key(tenant: str, job_id: str) -> str:
    return _job_dir(tenant, job_id) + "record.json"


def job_result_key(tenant: str, job_id: str) -> str:
    return _job_dir(tenant, job_id) + "result.json"


def job_overlay_key(tenant: str, job_id: str) -> str:
    return _job_dir(tenant, job_id) + "overlay.png"


def job_id_of_record_key(tenant: str, key: str) -> str | None:
    """The job id if `key` is `t/{tenant}/jobs/{job_id}/record.json`, else None."""
    head, tail = jobs_prefix(tenant), "/record.json"
    if key.startswith(head) and key.endswith(tail):
        job_id = key[len(head):-len(tail)]
        return job_id if _ID.fullmatch(job_id) else None
    return None


def upload_usage_key(tenant: str, day: str) -> str:
    """The stored upload-bytes counter of `tenant` for UTC `day` (YYYY-MM-DD) (serve_app.pipelines.quotas)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"not a day: {day!r}")
    return f"{tenant_prefix(tenant)}usage/uploads-{day}.json"


def active_jobs_prefix(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}jobs-active/"


def active_job_key(tenant: str, job_id: str) -> str:
    return active_jobs_prefix(tenant) + validate_id(job_id, "job_id")


def idempotency_key(tenant: str, client_key: str) -> str:
    """Marker for an Idempotency-Key header value (any string; only its sha256 reaches the key)."""
    if not isinstance(client_key, str) or not 1 <= len(client_key) <= 255:
        raise InvalidInput("Idempotency-Key must be 1-255 characters", "invalid_idempotency_key")
    return f"{tenant_prefix(tenant)}jobs-idem/{hashlib.sha256(client_key.encode()).hexdigest()}"


def session_prefix(tenant: str, session_id: str) -> str:
    return f"{tenant_prefix(tenant)}sessions/{validate_id(session_id, 'session_id')}/"


def session_journal_key(tenant: str, session_id: str, seq: int) -> str:
    """Journal entry `seq` (>= 0), zero-padded to 10 digits so entries list in order."""
    if not isinstance(seq, int) or seq < 0:
        raise InvalidInput("journal sequence must be a non-negative integer")
    return f"{session_prefix(tenant, session_id)}journal/{seq:010d}"


def session_frame_key(tenant: str, session_id: str, index: int) -> str:
    if not isinstance(index, int) or index < 0:
        raise InvalidInput("frame index must be a non-negative integer", "invalid_frame_index")
    return f"{session_prefix(tenant, session_id)}frames/{index}.jpg"


def export_key(tenant: str, export_id: str) -> str:
    return f"{tenant_prefix(tenant)}exports/{validate_id(export_id, 'export_id')}.zip"


def session_masks_key(tenant: str, session_id: str, index: int) -> str:
    """One propagated frame's results (objects with RLE masks at the frame's size), zero-padded so a listing
    is in frame order."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise InvalidInput("frame index must be a non-negative integer", "invalid_frame_index")
    return f"{session_prefix(tenant, session_id)}masks/{index:06d}.json"


def session_masks_prefix(tenant: str, session_id: str) -> str:
    return f"{session_prefix(tenant, session_id)}masks/"


def video_key(tenant: str, video_id: str) -> str:
    """A source video, content-addressed by the sha256 of its bytes (reused by `video_id`)."""
    if not isinstance(video_id, str) or not _SHA256.fullmatch(video_id):
        raise InvalidInput("video_id must be 64 lowercase hex digits (the sha256 of the video)", "invalid_video_id")
    return f"{tenant_prefix(tenant)}videos/{video_id}"


def job_state_key(tenant: str, job_id: str) -> str:
    """A running job's own resume state (e.g. pcs_video: its session and how far it got), kept between attempts."""
    return _job_dir(tenant, job_id) + "state.json"


def job_checkpoint_key(tenant: str, job_id: str) -> str:
    """A running job's saved model state (pcs_video: the video session after its last finished chunk)."""
    return _job_dir(tenant, job_id) + "checkpoint.bin"


def exports_prefix(tenant: str) -> str:
    return f"{tenant_prefix(tenant)}exports/"


# -- media library (serve_app.pipelines.media_library) ---------------------------------------------------
def video_meta_key(tenant: str, video_id: str) -> str:
    """A library video's metadata (name, size, probe), JSON, beside its bytes at `video_key`."""
    video_key(tenant, video_id)  # validates the id
    return f"{tenant_prefix(tenant)}videos-meta/{video_id}.json"


def videos_index_prefix(tenant: str) -> str:
    """Newest-first index of the library's videos: `videos-index/{inverted ms}-{video_id}` (empty objects)."""
    return f"{tenant_prefix(tenant)}videos-index/"


def video_index_key(tenant: str, created_ms: int, video_id: str) -> str:
    video_key(tenant, video_id)
    return f"{videos_index_prefix(tenant)}{_MAX_MS - int(created_ms):012x}-{video_id}"
