"""SessionManager without Serve, on the session's real Ray: when no GPU share is free the session's actor
stays pending and `acquire` answers SessionStarting (409 + Retry-After) within video.start_timeout_s instead
of hanging; deleting the session releases the pending actor."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.config import AppConfig, StorageConfig
from serve_app.deployments.session_manager import SessionManager, SessionStarting
from serve_app.sessions.ingest import IngestLimits, ingest_video
from serve_app.sessions.records import SessionOptions, SessionSource
from serve_app.storage import open_store
from tests.videos import make_video


def test_a_session_without_a_free_gpu_share_is_starting_not_hanging(ray_session, tiny_model_dir, tmp_path):
    import ray

    storage = StorageConfig(uri=f"file://{tmp_path}/store")
    cfg = AppConfig.model_validate({
        "model": {"model_id": tiny_model_dir}, "storage": storage.model_dump(),
        # one GPU per session actor on a cluster without GPUs: the actor can never be scheduled here (on
        # Kubernetes this pending demand is what makes the autoscaler add a GPU node)
        "video": {"actor": {"num_gpus": 1, "num_cpus": 0}, "warm_pool": 0, "start_timeout_s": 0.5}})
    assert ray.cluster_resources().get("GPU", 0) == 0
    video = make_video(str(tmp_path / "v.mp4"), n=4, h=48, w=64)

    async def scenario() -> None:
        manager = SessionManager.func_or_class.__new__(SessionManager.func_or_class)
        await SessionManager.func_or_class.__init__(manager, cfg)
        record = await manager.create(SessionSource(), SessionOptions())
        meta = await asyncio.to_thread(ingest_video, open_store(storage), "default", record.session_id, video.path,
                                       IngestLimits(10**8, 60, 10**7, 100))
        await manager.ingest_done(record.session_id, {"num_frames": meta.num_frames, "fps": meta.fps,
                                                      "width": meta.width, "height": meta.height}, SessionSource())
        for _ in range(2):  # asked again, still starting (the same pending actor, no second one)
            with pytest.raises(SessionStarting) as err:
                await asyncio.wait_for(manager.acquire(record.session_id), 30)  # a hang guard, not a timing check
            assert err.value.status_code == 409 and err.value.retry_after_s >= 1
        owners = await manager.debug_pool()
        name, generation = owners["owners"][record.session_id]
        assert generation == 1
        pending = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name]
        assert len(pending) == 1
        await manager.delete(record.session_id)
        assert (await manager.debug_pool())["owners"] == {}
        for task in manager._tasks:
            task.cancel()

    asyncio.run(scenario())
