"""Start-up failures say ONE line with the cause and the fix (issue 11, item 8): a model that cannot be loaded
(no Hub, gated repo, unknown id, not a SAM 3 checkpoint, transformers too old) and storage that cannot be used.

The classification (serve_app.model.loading.classify_load_error, serve_app.storage.check) runs on the real
transformers / huggingface_hub / boto3 code paths where this offline machine can produce the failure (local
directories, HF_HUB_OFFLINE, a closed port); where only the Hub can answer (gated, 404, no network) its download
function is replaced by a fake that raises what huggingface_hub raises. Then: the line in the model deployments'
log (no traceback), the warm pool, the extraction from Ray's status message, /readyz, `sam3-serve run`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import traceback
from types import SimpleNamespace

import pytest

from serve_app.config import ModelConfig, StorageConfig, VideoConfig
from serve_app.errors import StartupFailure, startup_code, startup_lines
from serve_app.model.loading import (
    ModelLoadError,
    check_checkpoint_dir,
    classify_load_error,
    load_pretrained,
    model_load_errors,
    resolve_placement,
)
from tests.conftest import free_port

GATED_URL = "https://huggingface.co/facebook/sam3/resolve/main/config.json"


@pytest.fixture(scope="module")
def sam3_model_cls():
    from transformers import Sam3Model

    return Sam3Model


def _load(cls, model_id: str, **kw):
    cfg = ModelConfig(model_id=model_id, device="cpu", **kw)
    return load_pretrained(cls, cfg, resolve_placement(cfg))


def _assert_one_line(err: StartupFailure, code: str, *needles: str) -> None:
    assert err.code == code, err.line
    assert "\n" not in err.line and err.line.startswith("sam3-serve: cannot ")
    assert " Fix: " in err.line
    assert startup_lines(f"Traceback (most recent call last):\n  File x\nX: {err.line}\n") == [err.line]
    assert startup_code(err.line) == code
    for needle in needles:
        assert needle in err.line, (needle, err.line)


# ----------------------------------------------------------------------------- (d) not a SAM 3 checkpoint


def test_a_directory_without_config_json(tmp_path, sam3_model_cls):
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, str(tmp_path))
    _assert_one_line(err.value, "model_not_a_checkpoint", "has no config.json", "python -m serve_app.devtools.tiny_model")
    assert not err.value.retryable


def test_a_config_of_another_model_type(tmp_path, sam3_model_cls):
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, str(tmp_path))
    _assert_one_line(err.value, "model_not_a_checkpoint", "model type 'bert'", "not a SAM 3 model")


def test_a_sam3_config_without_weights_and_a_file(tmp_path, sam3_model_cls):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam3_video"}))
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, str(tmp_path))
    _assert_one_line(err.value, "model_not_a_checkpoint", "no weights")
    with pytest.raises(ModelLoadError) as err:
        check_checkpoint_dir(str(tmp_path / "config.json"))
    _assert_one_line(err.value, "model_not_a_checkpoint", "a file, not a checkpoint directory")


def test_transformers_own_error_for_a_directory_is_classified_too(tmp_path, sam3_model_cls):
    """Past the pre-check, what from_pretrained raises for a local directory (here: no weights) is known."""
    with pytest.raises(OSError) as raw:
        sam3_model_cls.from_pretrained(str(tmp_path), local_files_only=True)
    known = classify_load_error(raw.value, str(tmp_path))
    assert known is not None
    _assert_one_line(known, "model_not_a_checkpoint", "loading it failed")


def test_weights_left_random_are_not_a_checkpoint(tiny_model_dir):
    """The tiny checkpoint is a facebook/sam3 (sam3_video) layout: Sam3TrackerModel without the key mapping
    finds none of its weights (was a RuntimeError; now the same one line as any other wrong checkpoint)."""
    from transformers import Sam3TrackerModel

    with pytest.raises(ModelLoadError) as err:
        _load(Sam3TrackerModel, tiny_model_dir)
    _assert_one_line(err.value, "model_not_a_checkpoint", "weights random")


# ----------------------------------------------------------------------------- (c) unknown id / missing directory


def test_a_missing_directory_says_how_to_build_the_tiny_checkpoint(sam3_model_cls):
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "/nonexistent/tiny-sam3")
    _assert_one_line(err.value, "model_not_found", "no such directory",
                     "python -m serve_app.devtools.tiny_model /nonexistent/tiny-sam3")


def test_an_unknown_hub_id_offline(monkeypatch, sam3_model_cls):
    """The real path: HF_HUB_OFFLINE=1 (conftest) + local_files_only, a Hub id nobody has cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "facebook/sam3-does-not-exist", local_files_only=True)
    _assert_one_line(err.value, "model_not_found", "not in the local Hugging Face cache", "HF_HUB_OFFLINE=1",
                     "--model-id DIR", "python -m serve_app.devtools.tiny_model DIR")
    assert isinstance(err.value.__cause__, OSError)  # the original error stays reachable for debugging


def test_an_invalid_id_and_a_repo_the_hub_does_not_have(monkeypatch, sam3_model_cls):
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "not a repo id!", local_files_only=True)
    _assert_one_line(err.value, "model_not_found", "neither an existing directory nor a valid Hub repo id")

    from huggingface_hub.errors import RepositoryNotFoundError

    _fake_hub(monkeypatch, RepositoryNotFoundError("404 Client Error. Repository Not Found",
                                                   response=_response(404)))
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "someone/no-such-model")
    _assert_one_line(err.value, "model_not_found", "the Hub has no repo 'someone/no-such-model'")


# ----------------------------------------------------------------------------- (b) gated, (a) no network


def _response(status: int):
    try:
        import httpx2 as httpx  # what huggingface_hub 2.x raises with
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx  # type: ignore[no-redef]
    return httpx.Response(status, request=httpx.Request("HEAD", GATED_URL))


def _fake_hub(monkeypatch, exc: BaseException, *, token: str | None = None) -> None:
    """transformers' download calls answer `exc` (what huggingface_hub raises for that Hub answer)."""
    import huggingface_hub
    import transformers.utils.hub as hub

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(hub, "hf_hub_download", fail)
    monkeypatch.setattr(hub, "snapshot_download", fail)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_gated_repo_without_a_token(monkeypatch, sam3_model_cls):
    from huggingface_hub.errors import GatedRepoError

    _fake_hub(monkeypatch, GatedRepoError("401 Client Error. Cannot access gated repo", response=_response(401)))
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "facebook/sam3")
    _assert_one_line(err.value, "model_gated", "gated repo and HF_TOKEN is not set", "export HF_TOKEN=",
                     "accept the license at https://huggingface.co/facebook/sam3", "--model-id DIR")
    assert not err.value.retryable


def test_a_token_without_access_and_a_plain_403(monkeypatch, sam3_model_cls):
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    _fake_hub(monkeypatch, GatedRepoError("403 Client Error", response=_response(403)), token="hf_x")
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "facebook/sam3")
    _assert_one_line(err.value, "model_gated", "HF_TOKEN is set but its account has no access")

    _fake_hub(monkeypatch, HfHubHTTPError("403 Forbidden", response=_response(403)))
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "facebook/sam3")
    _assert_one_line(err.value, "model_gated", "refused the download (403)", "HF_TOKEN")


def test_no_network(monkeypatch, sam3_model_cls):
    """What huggingface_hub raises here when huggingface.co does not resolve and nothing is cached."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx  # type: ignore[no-redef]
    try:
        try:
            raise httpx.ConnectError("[Errno -2] Name or service not known")
        except httpx.ConnectError as connect:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from connect
    except LocalEntryNotFoundError as exc:
        offline_answer = exc
    _fake_hub(monkeypatch, offline_answer)
    with pytest.raises(ModelLoadError) as err:
        _load(sam3_model_cls, "facebook/sam3")
    _assert_one_line(err.value, "model_hub_unreachable", "cannot be reached (ConnectError",
                     "not in the local cache", "--model-id DIR", "python -m serve_app.devtools.tiny_model DIR")
    assert err.value.retryable


# ----------------------------------------------------------------------------- (e) transformers too old


def test_transformers_without_the_sam3_classes():
    with pytest.raises(ModelLoadError) as err, model_load_errors("facebook/sam3"):
        from transformers import Sam3ModelFromTheFuture  # type: ignore[attr-defined]  # noqa: F401
    _assert_one_line(err.value, "transformers_too_old", "has no SAM 3 support", 'pip install "transformers>=5.23"')

    missing = ModuleNotFoundError("No module named 'transformers.models.sam3_video'",
                                  name="transformers.models.sam3_video")
    assert classify_load_error(missing, "facebook/sam3").code == "transformers_too_old"
    unknown_type = ValueError("The checkpoint you are trying to load has model type `sam3_video` but Transformers "
                              "does not recognize this architecture.")
    assert classify_load_error(unknown_type, "facebook/sam3").code == "transformers_too_old"


def test_unknown_failures_keep_their_exception():
    other = ImportError("Sam3ImageProcessorFast requires the Torchvision library but it was not found")
    assert classify_load_error(other, "facebook/sam3") is None
    with pytest.raises(RuntimeError, match="CUDA error"), model_load_errors("facebook/sam3"):
        raise RuntimeError("CUDA error: out of memory")


# ----------------------------------------------------------------------------- the model deployments


class NotACheckpointRunner:
    @classmethod
    def from_config(cls, model, section):
        check_checkpoint_dir(model.model_id)
        raise AssertionError("unreachable")


class OldTransformersRunner:
    @classmethod
    def from_config(cls, model, section):
        from transformers import Sam3ModelOfTheFuture  # type: ignore[attr-defined]  # noqa: F401


class BrokenRunner:
    @classmethod
    def from_config(cls, model, section):
        raise RuntimeError("a bug")


@pytest.mark.parametrize("runner, code", [("NotACheckpointRunner", "model_not_a_checkpoint"),
                                          ("OldTransformersRunner", "transformers_too_old")])
def test_a_model_deployment_logs_one_line_and_raises_without_a_chain(tmp_path, caplog, runner, code):
    from serve_app.deployments.base import load_runner

    caplog.set_level(logging.INFO)
    with pytest.raises(ModelLoadError) as err:
        load_runner(f"{__name__}:{runner}", ModelConfig(model_id=str(tmp_path)), None)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in records] == [err.value.line] and err.value.code == code
    assert records[0].exc_info is None  # no traceback in the log
    # What Serve puts in the status message: a short traceback that ends in the line, no chained pages.
    text = "".join(traceback.format_exception(err.value))
    assert "direct cause" not in text and "During handling" not in text
    assert text.rstrip().endswith(err.value.line)


def test_an_unknown_constructor_failure_keeps_its_traceback(caplog):
    from serve_app.deployments.base import load_runner

    with pytest.raises(RuntimeError, match="a bug"):
        load_runner(f"{__name__}:BrokenRunner", ModelConfig(model_id="facebook/sam3"), None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_error_survives_pickling_and_rays_dual_exception():
    from ray.exceptions import RayTaskError

    from serve_app.storage.check import StorageError

    err = ModelLoadError.of("facebook/sam3", "model_gated", "gated\nrepo", "export HF_TOKEN")
    for e in (err, StorageError.of(StorageConfig(uri="s3://b/p"), "storage_bucket_missing", "no bucket", "mb it")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.line == e.line and back.code == e.code
    dual = RayTaskError("SessionActor.ready", "Traceback ...", err).as_instanceof_cause()
    assert isinstance(dual, ModelLoadError) and dual.line == err.line and dual.status_code == 503


def test_the_session_actor_defers_the_error_to_ready(tmp_path):
    """A session actor whose model cannot be loaded starts (no creation-task traceback) and `ready` raises."""
    from serve_app.sessions.actor import SessionActor

    actor = SessionActor(ModelConfig(model_id=str(tmp_path / "nope")), VideoConfig(),
                         StorageConfig(uri=f"file://{tmp_path}/store"))
    with pytest.raises(ModelLoadError) as err:
        actor.ready()
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize("code, tries", [("model_not_a_checkpoint", 1), ("model_hub_unreachable", 3)])
def test_the_warm_pool_logs_once_and_stops_or_backs_off(monkeypatch, caplog, code, tries):
    from serve_app.deployments import session_manager as sm

    err = ModelLoadError.of("facebook/sam3", code, "cause", "fix")
    started, killed, sleeps = [], [], []

    class Handle:
        class ready:  # noqa: N801  # the shape of an actor method
            @staticmethod
            async def remote():
                raise err

    def start():
        started.append(1)
        return f"a{len(started)}", Handle()

    async def sleep(s):
        sleeps.append(s)
        if len(sleeps) >= 3:
            raise asyncio.CancelledError

    monkeypatch.setattr(sm.ray, "kill", killed.append)
    monkeypatch.setattr(sm.asyncio, "sleep", sleep)
    manager = SimpleNamespace(pool=[], video=SimpleNamespace(warm_pool=1), _start_actor=start)
    caplog.set_level(logging.INFO)
    fill = sm.SessionManager.func_or_class._fill_pool
    if tries == 1:
        asyncio.run(fill(manager))  # a wrong setting: log it and stop
    else:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(fill(manager))
        assert sleeps == [30.0, 60.0, 120.0]  # the Hub may come back: a growing pause
    assert len(started) == tries == len(killed)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [err.line]
    assert all(r.exc_info is None for r in caplog.records)


# ----------------------------------------------------------------------------- Ray's status message -> the line

LINE = ("sam3-serve: cannot load the model '/tmp/x' [model_not_a_checkpoint]: the directory has no config.json. "
        "Fix: point --model-id at a checkpoint")
DEPLOY_FAILED_MESSAGE = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its constructor or "
    "initial health check failing. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:sam3:ConceptSegmenter.initialize_and_get_metadata()\x1b[39m (pid=1, ip=1.2.3.4)\n"
    '  File "/x/ray/serve/_private/replica.py", line 1928, in initialize\n'
    "    raise RuntimeError(traceback.format_exc()) from None\n"
    "RuntimeError: Traceback (most recent call last):\n"
    '  File "/work/main/serve_app/deployments/base.py", line 60, in load_runner\n'
    "    raise err.with_traceback(None) from None\n"
    f"serve_app.model.loading.ModelLoadError: {LINE}\n")


def test_the_line_is_picked_out_of_the_status_message():
    assert startup_lines(DEPLOY_FAILED_MESSAGE) == [LINE]
    assert startup_lines(DEPLOY_FAILED_MESSAGE + "\nClickSegmenter: " + DEPLOY_FAILED_MESSAGE) == [LINE]
    assert startup_lines("A replica failed to start: RuntimeError: boom") == []


@pytest.mark.parametrize("status, message, raised, lines", [
    ("DEPLOY_FAILED", "ConceptSegmenter: " + DEPLOY_FAILED_MESSAGE, "DeployFailed", [LINE]),
    ("DEPLOY_FAILED", "ConceptSegmenter: RuntimeError: boom", "DeployFailed", []),
    # still retrying, but for a cause retrying cannot fix: fail now
    ("DEPLOYING", "ConceptSegmenter: A replica failed to start. Retrying 2 more time(s). Error:\n" + LINE,
     "DeployFailed", [LINE]),
    # the Hub may come back: Serve's retries decide (timeout_s=0 ends this wait)
    ("DEPLOYING", LINE.replace("model_not_a_checkpoint", "model_hub_unreachable"), "NotRunning", []),
])
def test_wait_running_ends_with_the_line(monkeypatch, status, message, raised, lines):
    from serve_app.cluster import local

    monkeypatch.setattr(local, "app_status", lambda app: (status, message))
    monkeypatch.setattr(local, "read_pending", lambda app, min_age_s: [])
    with pytest.raises(local.NotRunning) as err:
        local.wait_running("sam3", timeout_s=0, poll_s=0)
    assert type(err.value).__name__ == raised
    if lines:
        assert err.value.lines == lines and str(err.value) == LINE


def test_known_tracebacks_are_dropped_from_the_forwarded_output():
    from serve_app.cluster.local import drop_known_tracebacks

    controller = [
        "INFO 2026-11-26 19:40:14,973 controller 1 -- Adding 1 replica to Deployment(name='X', app='sam3').",
        "ERROR 2026-11-26 19:40:38,153 controller 1 -- Exception in Replica(id='n4', deployment='X', app='sam3'), "
        "the replica will be stopped.",
        "Traceback (most recent call last):",
        '  File "/x/deployment_state.py", line 1555, in check_ready',
        "ray.exceptions.RayTaskError(RuntimeError): ray::ServeReplica:sam3:X.initialize_and_get_metadata()",
        "RuntimeError: Traceback (most recent call last):",
        '  File "/work/main/serve_app/deployments/base.py", line 60, in load_runner',
        f"serve_app.model.loading.ModelLoadError: {LINE}",
        "INFO 2026-11-26 19:40:39,000 controller 1 -- Adding 1 replica to Deployment(name='X', app='sam3').",
    ]
    assert drop_known_tracebacks(controller) == [controller[0], controller[-1]]
    replica = ["some output", LINE]  # the replica's own log line stays
    assert drop_known_tracebacks(replica) == replica
    unknown = ["ERROR 2026-11-26 19:40:38,153 controller 1 -- Exception", "Traceback (most recent call last):",
               "RuntimeError: a bug"]
    assert drop_known_tracebacks(unknown) == unknown
    headerless = ["before", "Traceback (most recent call last):", '  File "x", line 1', f"X: {LINE}", "after"]
    assert drop_known_tracebacks(headerless) == ["before", "after"]


def test_quiet_known_tracebacks_wraps_rays_printer(monkeypatch):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from serve_app.cluster.local import quiet_known_tracebacks

    printed: list[list[str]] = []
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", lambda data: printed.append(data["lines"]))])
    assert quiet_known_tracebacks() is True
    assert quiet_known_tracebacks() is False  # once
    dispatcher.emit({"lines": ["Traceback (most recent call last):", f"X: {LINE}"]})
    dispatcher.emit({"lines": ["hello"]})
    assert printed == [["hello"]]


# ----------------------------------------------------------------------------- /readyz and sam3-serve run


def _dep(status: str, running: int, message: str):
    from ray.serve.schema import ReplicaState

    return SimpleNamespace(status=status, replica_states={ReplicaState.RUNNING: running}, message=message)


def test_readyz_model_state_says_failed_with_the_line():
    from serve_app.ingress.routers.health import model_state

    app = SimpleNamespace(deployments={"ConceptSegmenter": _dep("DEPLOY_FAILED", 0, DEPLOY_FAILED_MESSAGE),
                                       "ClickSegmenter": _dep("UPDATING", 0, "Retrying. Error:\n" + LINE)})
    state, details = model_state(app)
    assert state == "failed"
    assert details["ConceptSegmenter"]["message"] == LINE and details["ClickSegmenter"]["startup_failures"] == [LINE]
    hub = LINE.replace("model_not_a_checkpoint", "model_hub_unreachable")
    state, _ = model_state(SimpleNamespace(deployments={"ConceptSegmenter": _dep("UPDATING", 0, hub),
                                                        "ClickSegmenter": _dep("HEALTHY", 1, "")}))
    assert state == "warming_up"


def test_sam3_serve_run_prints_the_line_and_exits_1(monkeypatch, capsys):
    import ray
    from ray import serve
    from ray.serve._private import api as serve_private

    from serve_app import cli
    from serve_app.cluster import local
    from tests.conftest import REPO

    class FakeClient:
        def deploy_apps(self, config, _blocking=False):
            pass

    def wait_running(app_name, **kw):
        raise local.DeployFailed(LINE, lines=[LINE])

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(serve, "shutdown", lambda: None)
    monkeypatch.setattr(serve_private, "serve_start", lambda **kw: FakeClient())
    monkeypatch.setattr(local, "wait_running", wait_running)
    monkeypatch.setattr(local, "quiet_known_tracebacks", lambda: True)
    code = cli.main(["run", "--config", str(REPO / "serve_config.yaml"), "--model-id", "/tmp/x", "--port", "8125"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == LINE


# ----------------------------------------------------------------------------- storage


def test_a_storage_directory_that_cannot_be_created(tmp_path, caplog):
    from serve_app.storage.check import StorageError, open_store_explained

    (tmp_path / "afile").write_text("x")
    cfg = StorageConfig(uri=f"file://{tmp_path}/afile/store")
    with pytest.raises(StorageError) as err:
        open_store_explained(cfg)
    _assert_one_line(err.value, "storage_not_writable", "cannot be created", "--storage-uri file:///")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [err.value.line]


def test_a_storage_directory_that_became_read_only(tmp_path, monkeypatch, caplog):
    import errno

    from serve_app.storage import local as local_store
    from serve_app.storage.check import StorageError, check_store, open_store_explained

    cfg = StorageConfig(uri=f"file://{tmp_path}/store")
    store = open_store_explained(cfg)
    check_store(store, cfg)  # works

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(local_store.tempfile, "mkstemp", read_only)  # root ignores chmod: fail the write itself
    with pytest.raises(StorageError) as err:
        check_store(store, cfg)
    _assert_one_line(err.value, "storage_not_writable", f"{tmp_path}/store cannot be written (Read-only file system)",
                     "writable")

    from serve_app.ingress.routers import health

    assert health._check_storage(store, cfg) == {"state": "failed", "code": "storage_not_writable",
                                                 "reason": err.value.line}
    # /readyz's `storage`: the same answer, logged once however often it is asked.
    services = SimpleNamespace(store=store, config=SimpleNamespace(storage=cfg))
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(ctx=SimpleNamespace(services=services))))
    monkeypatch.setattr(health, "_STORAGE_TTL_S", {"ok": 0.0, "failed": 0.0})
    with caplog.at_level(logging.INFO, logger=health.log.name):
        answers = [asyncio.run(health._storage_state(request)) for _ in range(3)]
    assert answers == [{"state": "failed", "code": "storage_not_writable", "reason": err.value.line}] * 3
    assert [r.getMessage() for r in caplog.records if r.name == health.log.name] == [err.value.line]


def _s3(monkeypatch, **kw) -> StorageConfig:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return StorageConfig(uri="s3://sam3-bucket/p", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                         max_attempts=1, connect_timeout_s=2, **kw)


def test_s3_at_a_wrong_endpoint_and_without_credentials(monkeypatch, tmp_path):
    from serve_app.storage import open_store
    from serve_app.storage.check import StorageError, check_store

    cfg = _s3(monkeypatch)
    with pytest.raises(StorageError) as err:
        check_store(open_store(cfg), cfg)
    _assert_one_line(err.value, "storage_unreachable", f"{cfg.endpoint_url} cannot be reached", "endpoint_url")
    assert err.value.retryable

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError) as err:
        check_store(open_store(cfg), cfg)
    _assert_one_line(err.value, "storage_no_credentials", "no S3 credentials", "AWS_ACCESS_KEY_ID")


@pytest.mark.parametrize("code, status, expect, needle", [
    ("NoSuchBucket", 404, "storage_bucket_missing", "aws s3 mb s3://sam3-bucket"),
    ("InvalidAccessKeyId", 403, "storage_access_denied", "s3:PutObject"),
    ("AccessDenied", 403, "storage_access_denied", "s3://sam3-bucket"),
])
def test_s3_answers(monkeypatch, code, status, expect, needle):
    """S3's refusals as botocore raises them (wrapped by S3Store's own Unavailable, as in a real call)."""
    from botocore.exceptions import ClientError

    from serve_app.errors import Unavailable
    from serve_app.storage.check import classify_storage_error

    cfg = _s3(monkeypatch)
    try:
        try:
            raise ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
        except ClientError as exc:
            raise Unavailable(f"object storage refused put ({code})", "storage_unavailable") from exc
    except Unavailable as wrapped:
        known = classify_storage_error(wrapped, cfg)
    assert known is not None
    _assert_one_line(known, expect, needle)
