"""Shared fixtures: the tiny offline SAM 3 checkpoint and ONE local Ray + Serve for the whole session.

Markers follow the folders (tests/unit -> unit, tests/integration -> integration, tests/deploy -> deploy).
Nothing here touches the network: the checkpoint is built offline and every server binds 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.fixtures.s3"]

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in ("unit", "integration", "deploy", "e2e", "gpu"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def short_tmpdir() -> str:
    """Ray puts AF_UNIX sockets under its temp dir (107-byte path limit): keep the path short."""
    return tempfile.mkdtemp(prefix="sam3ray-", dir="/tmp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The tiny random SAM 3 checkpoint (facebook/sam3 layout), built once per session, offline."""
    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): the tiny model
    is dispatch-bound, and one thread is several times faster on 2 shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (logical CPUs > cores so several replicas fit) with its temp files in a test dir."""
    import ray

    from tests.fixtures import s3

    tmp = short_tmpdir()
    os.environ["RAY_TMPDIR"] = tmp
    # Replicas inherit the environment Ray starts with: the test S3 credentials (the standard AWS env
    # chain, as in production), and nothing that could reach a real AWS account.
    os.environ.update(AWS_ACCESS_KEY_ID=s3.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=s3.SECRET_KEY,
                      AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.path.join(tmp, "no-aws-config"),
                      AWS_SHARED_CREDENTIALS_FILE=os.path.join(tmp, "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    ray.init(num_cpus=16, num_gpus=0, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def serve_args(model_dir: str, storage: dict | None = None, **overrides) -> dict:
    """AppConfig args for tests: the tiny model, small fixed replica counts, quick job leases.

    `storage`: the app's StorageConfig fields (e.g. from tests.fixtures.s3.s3_storage_config(...)).
    """
    args = {
        "storage": storage or {},
        "jobs": {"lease_s": 3, "heartbeat_interval_s": 1, "recovery_interval_s": 1, "queued_pickup_timeout_s": 2,
                 "video_chunk_frames": 4,  # pcs_video: several chunks even for the 16-frame test videos
                 "worker": {"num_cpus": 0.5, "max_ongoing_requests": 16}},
        "model": {"model_id": model_dir},
        "concept": {
            "replica": {"num_cpus": 1, "num_gpus": 0, "max_ongoing_requests": 32, "max_queued_requests": 64},
            # A wait long enough that concurrent test requests reliably share a batch, and every request through
            # the batch queue (no eager_when_idle): tests that count batches see deterministic ones.
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.25, "eager_when_idle": False},
            "max_concurrent_batches": 1,
        },
        "click": {
            "replica": {"num_cpus": 1, "num_gpus": 0, "max_ongoing_requests": 32, "max_queued_requests": 64},
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02, "eager_when_idle": False},
            "cache_bytes": 8 * 1024 * 1024,  # ~60 tiny-model images (131 kB each in fp32)
            "max_objects": 4, "max_points_per_object": 8,  # see tests/integration/test_click_http.py
            "auto": {"points_per_side": 8, "max_points_per_side": 16, "points_per_batch": 32},
        },
        "ingress": {"replica": {"num_cpus": 1, "max_ongoing_requests": 64, "max_queued_requests": 128}},
        "limits": {"max_image_bytes": 200_000, "max_image_pixels": 1_000_000},  # see tests/bad_inputs.py
        # The model deployments' debug_* methods (counters, cache resize, reset): the tests prove cache and
        # batching behaviour with them. Off (403 debug_disabled) unless set.
        "observability": {"debug_interface": True},
        # Video sessions on the tiny checkpoint: detection thresholds 0 (the random detector scores ~0.25) and
        # at most 4 objects, a small actor, a short start wait (tests retry 409 session_starting).
        "video": {"score_threshold_detection": 0.0, "new_det_thresh": 0.0, "max_num_objects": 4,
                  "hotstart_delay": 0, "actor": {"num_cpus": 0.5, "num_gpus": 0}, "warm_pool": 1,
                  "start_timeout_s": 5.0, "manager": {"num_cpus": 0.5},
                  "limits": {"max_video_bytes": 2_000_000, "max_frames": 120, "max_objects": 4}},
    }
    for key, value in overrides.items():
        args[key] = {**args.get(key, {}), **value}
    return args


@pytest.fixture(scope="module")
def module_seaweedfs(tmp_path_factory):
    """A SeaweedFS of the requesting test module's own, shared by its tests (they may stop and restart it);
    stopped after the module. For apps whose storage a test takes away (the session's `seaweedfs` must stay up)."""
    from tests.fixtures import s3

    server = s3._server(tmp_path_factory.mktemp("seaweedfs-module"))  # skips when SeaweedFS is not installed
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_video_model_dir(tmp_path_factory) -> str:
    """The tiny checkpoint with a tracker that "sees" objects (object-score bias +10, SAM3_VIDEO.md pitfall 5):
    the video sessions' model (video.model_id), so clicks and tracking produce masks."""
    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3-video"), object_score_bias=10.0))


@pytest.fixture(scope="session")
def app_storage(seaweedfs):
    """The StorageConfig of the session's sam3 app: a fresh prefix on the session's SeaweedFS."""
    from tests.fixtures import s3

    # the app's own bucket is listed too: s3:// inputs there are still refused outside the caller's t/{tenant}/
    return s3.s3_storage_config(seaweedfs, allowed_url_buckets=[s3.BUCKET, s3.INPUT_BUCKET, "sam3-no-such-bucket"])


@pytest.fixture(scope="session")
def serve_url(ray_session, tiny_model_dir, tiny_video_model_dir, app_storage) -> str:
    """Base URL of the sam3 app (real Serve proxy on 127.0.0.1) built from build_app(args), storing its
    artifacts on the session's SeaweedFS (a fresh prefix)."""
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = serve_args(tiny_model_dir, storage=app_storage.model_dump(), video={"model_id": tiny_video_model_dir})
    serve.run(build_app(args), name="sam3", route_prefix="/")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def concept_handle(serve_url):
    from ray import serve

    return serve.get_deployment_handle("ConceptSegmenter", app_name="sam3")


@pytest.fixture(scope="session")
def click_handle(serve_url):
    from ray import serve

    return serve.get_deployment_handle("ClickSegmenter", app_name="sam3")


# -- a second app with API keys (auth.mode api_keys): tests/integration/test_auth.py, test_tenants.py ---------------

ACME_KEY = "acme-key-1"  # tenant "acme" of the `auth_url` app
GLOBEX_KEY = "globex-key-1"  # tenant "globex" of the `auth_url` app
AUTH_APP = "sam3auth"
# tenants of the `auth_url` app with one tight limit each (tests/integration/test_quotas.py): key -> tenant
QUOTA_KEYS = {"rate-key-1": "q-rate", "flight-key-1": "q-flight", "bytes-key-1": "q-bytes", "jobs-key-1": "q-jobs"}
QUOTA_LIMITS = {"q-rate": {"requests_per_s": 0.5, "burst": 3}, "q-flight": {"max_inflight_model_requests": 1},
                "q-bytes": {"upload_bytes_per_day": 300_000}, "q-jobs": {"max_concurrent_jobs": 1}}
AUTH_CORS_ORIGIN = "https://allowed.example"  # the `auth_url` app's only CORS origin


@pytest.fixture(scope="session")
def auth_url(serve_url, tiny_model_dir, tiny_video_model_dir, seaweedfs) -> str:
    """Base URL of a second sam3 app ("sam3auth" at /auth on the session's Serve) that requires API keys:
    ACME_KEY -> tenant acme, GLOBEX_KEY -> tenant globex (no limits), QUOTA_KEYS -> tenants with one limit each
    (QUOTA_LIMITS; so the app runs a QuotaKeeper); CORS for AUTH_CORS_ORIGIN only; its own fresh prefix on
    the session's SeaweedFS; no warm video actor. Deleted at the end of the session."""
    import hashlib

    from ray import serve

    from serve_app.app import build_app
    from tests.fixtures import s3

    keys = [{"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "tenant": tenant, "name": f"{tenant}-tests"}
            for key, tenant in ((ACME_KEY, "acme"), (GLOBEX_KEY, "globex"), *QUOTA_KEYS.items())]
    args = serve_args(tiny_model_dir, storage=s3.s3_storage_config(seaweedfs).model_dump(),
                      video={"model_id": tiny_video_model_dir, "warm_pool": 0},
                      auth={"mode": "api_keys", "keys": keys, "cors_origins": [AUTH_CORS_ORIGIN],
                            "tenant_quotas": QUOTA_LIMITS})
    serve.run(build_app(args), name=AUTH_APP, route_prefix="/auth")
    yield f"{serve_url}/auth"
    serve.delete(AUTH_APP)
