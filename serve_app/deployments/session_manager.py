"""SessionManager: creates, looks up, lists, parks, rebuilds and deletes video sessions (CPU deployment).

It owns the session records in storage (serve_app.sessions.records) and a warm pool of SessionActors
(serve_app.sessions.actor: named Ray actors with the video model loaded and a GPU share each). A session is
owned by exactly one actor at a time: `acquire` returns the name of the actor attached to it, building one
when there is none (first use, after parking, or after the owner died: a new generation, rebuilt from the
checkpoint + journal). Callers then talk to the actor directly, by name.

Scaling: each attach needs a free GPU share; when the cluster has none, the actor stays pending, the Ray
autoscaler (KubeRay GPU worker group) adds a node, and `acquire` answers SessionStarting (409 +
Retry-After) after `video.start_timeout_s` instead of hanging. Idle sessions are parked (checkpoint, actor
back to the pool or killed, GPU share freed) and parked sessions past `video.retention_s` are deleted.

Actors are not detached: they belong to this replica and die with it (a redeploy frees their GPUs); the
next request then rebuilds the session from storage under a new generation.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
from ray import serve

from serve_app.config import AppConfig, known_tenants
from serve_app.errors import Conflict, NotFound, Overloaded, StartupFailure, Unavailable, startup_lines
from serve_app.sessions.actor import AttachInfo, SessionActor
from serve_app.sessions.records import (
    ActorRef,
    SessionOptions,
    SessionRecord,
    SessionSource,
    SessionStore,
    VideoInfo,
    utcnow,
)

log = logging.getLogger("serve_app.sessions")

_TOUCH_EVERY_S = 10.0  # last_used_at is written at most this often per session


class SessionStarting(Conflict):
    """The session's actor is not running yet (model loading, or a GPU node being added): retry."""

    code = "session_starting"


@dataclass(frozen=True)
class SessionLease:
    """Which actor owns a session now, and the session's frames (so callers check frame indices without
    reading the record again). rebuilt: this acquire rebuilt the session (new generation)."""

    actor_name: str
    namespace: str
    generation: int
    rebuilt: bool
    video: VideoInfo | None


@dataclass
class _Owner:
    name: str
    handle: Any
    generation: int
    attach: asyncio.Future  # the attach call (done once the actor holds the session)
    rebuilt: bool
    tenant: str = "default"  # whose session it is (owners are keyed by session id: ids are random, and every
    touched: float = 0.0     # request reads the record of ITS tenant first, so another tenant's id is a 404)


def gpu_share(cfg: AppConfig) -> float:
    """`video.actor.num_gpus` resolved: 'auto' = 0.25 of a GPU when the Ray cluster has one, else 0."""
    num = cfg.video.actor.num_gpus
    if num == "auto":
        return 0.25 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(num)


@serve.deployment
class SessionManager:
    # async: Serve awaits it on the replica's event loop, where the pool and reaper tasks must run
    async def __init__(self, config: AppConfig):  # type: ignore[misc]  # mypy rejects any async __init__
        from serve_app.storage.check import open_store_explained

        self.cfg = config
        self.video = config.video
        self.store = open_store_explained(config.storage)
        self._records: dict[str, SessionStore] = {}  # tenant -> its session records
        self.gpu_fraction = gpu_share(config)
        self.pool: list[tuple[str, Any]] = []  # warm, unattached actors
        self.owners: dict[str, _Owner] = {}  # session id -> its actor (on this replica)
        self._lock = asyncio.Lock()
        self._tasks = [asyncio.create_task(self._fill_pool()), asyncio.create_task(self._reaper())]
        log.info("SessionManager ready: gpu share %.2f per session, warm pool %d", self.gpu_fraction,
                 self.video.warm_pool)

    # ------------------------------------------------------------------ records
    # Every method takes the caller's `tenant` (keyword; default storage.default_tenant): a session is only
    # ever read from, and written to, that tenant's records.
    def records(self, tenant: str | None) -> SessionStore:
        tenant = tenant or self.cfg.storage.default_tenant
        store = self._records.get(tenant)
        if store is None:
            store = self._records[tenant] = SessionStore(self.store, tenant)
        return store

    async def create(self, source: SessionSource, options: SessionOptions, *, tenant: str | None = None
                     ) -> SessionRecord:
        """A new session record in state `ingesting` (the ingress extracts the frames next)."""
        return await asyncio.to_thread(self.records(tenant).create, source=source, options=options)

    async def ingest_progress(self, session_id: str, done: int, total: int, *, tenant: str | None = None) -> None:
        def fn(r: SessionRecord) -> SessionRecord:
            r.progress.done, r.progress.total = done, total
            return r
        await asyncio.to_thread(self.records(tenant).mutate, session_id, fn)

    async def ingest_failed(self, session_id: str, code: str, message: str, *, tenant: str | None = None) -> None:
        """Ingest refused the video: the session is deleted with whatever was stored."""
        await asyncio.to_thread(self.records(tenant).delete_all, session_id)
        log.info("session %s: ingest failed (%s: %s)", session_id, code, message)

    async def ingest_done(self, session_id: str, video: dict[str, Any], source: SessionSource, *,
                          tenant: str | None = None) -> SessionRecord:
        """Frames are stored: the session is ready; an actor starts attaching in the background."""
        def fn(r: SessionRecord) -> SessionRecord:
            r.state, r.video, r.source = "ready", VideoInfo.model_validate(video), source
            r.progress.done = r.progress.total = r.video.num_frames
            return r
        record = await asyncio.to_thread(self.records(tenant).mutate, session_id, fn)
        try:
            await self._owner(record, wait=False)  # the attach runs in the background
        except Overloaded:
            pass  # the first prompt answers too_many_sessions if there is still no room
        return record

    async def objects_changed(self, session_id: str, *, removed: int | None = None, reset: bool = False,
                              tenant: str | None = None) -> None:
        """Record what makes stored frame results stale: a removed object id, or a reset (all of them)."""
        def fn(r: SessionRecord) -> SessionRecord:
            if reset:
                r.removed_obj_ids = []
            elif removed is not None and removed not in r.removed_obj_ids:
                r.removed_obj_ids.append(removed)
            return r
        await asyncio.to_thread(self.records(tenant).mutate, session_id, fn)

    async def get(self, session_id: str, *, tenant: str | None = None) -> SessionRecord:
        return await asyncio.to_thread(self._get_live, session_id, tenant)

    async def list(self, limit: int, cursor: str | None, *, tenant: str | None = None
                   ) -> tuple[builtins.list[SessionRecord], str | None]:
        records, next_cursor = await asyncio.to_thread(self.records(tenant).list, None, limit, cursor)
        return [r for r in records if r.state != "deleted"], next_cursor

    async def delete(self, session_id: str, *, tenant: str | None = None) -> None:
        """Stop its actor (if any) and delete the session with every artifact. Idempotent."""
        await asyncio.to_thread(self._get_live, session_id, tenant)
        async with self._lock:
            owner = self.owners.pop(session_id, None)
        if owner is not None:
            await self._free(owner, checkpoint=False)
        await asyncio.to_thread(self.records(tenant).delete_all, session_id)

    # ------------------------------------------------------------------ owners
    async def acquire(self, session_id: str, *, tenant: str | None = None) -> SessionLease:
        """The actor that holds `session_id` now, (re)building one if needed. Raises NotFound,
        SessionStarting (409 + Retry-After: the actor is loading, pending a GPU, or replaying),
        Conflict session_not_ready (still ingesting), Overloaded too_many_sessions."""
        record = await asyncio.to_thread(self._get_live, session_id, tenant)
        if record.state == "ingesting":
            raise Conflict(f"session {session_id} is still ingesting its video", "session_not_ready",
                           retry_after_s=max(1, int(self.video.start_timeout_s)))
        owner = await self._owner(record)
        loop = asyncio.get_event_loop()
        if loop.time() - owner.touched > _TOUCH_EVERY_S:
            owner.touched = loop.time()
            await asyncio.to_thread(self.records(tenant).mutate, session_id, _touch)
        return SessionLease(owner.name, self.video.actor.namespace, owner.generation, owner.rebuilt, record.video)

    async def lost(self, session_id: str, generation: int, *, tenant: str | None = None) -> None:
        """A caller saw the owner of `generation` die: forget it (the next acquire rebuilds)."""
        async with self._lock:
            owner = self.owners.get(session_id)
            if owner is not None and owner.generation == generation:
                self.owners.pop(session_id)
                log.warning("session %s: actor %s (generation %d) lost", session_id, owner.name, generation)

    async def park(self, session_id: str) -> bool:
        """Checkpoint the session, free its actor (back to the pool), mark it parked. False if not live here."""
        async with self._lock:
            owner = self.owners.pop(session_id, None)
        if owner is None:
            return False
        await self._free(owner, checkpoint=True)

        def fn(r: SessionRecord) -> SessionRecord:
            r.state, r.actor = "parked", ActorRef(generation=r.actor.generation)
            return r
        await asyncio.to_thread(self.records(owner.tenant).mutate, session_id, fn)
        return True

    async def debug_pool(self) -> dict[str, Any]:
        """Warm actors and live owners of this replica (tests, benchmarks)."""
        return {"pool": [n for n, _ in self.pool], "owners": {s: (o.name, o.generation) for s, o in self.owners.items()}}

    async def _free(self, owner: _Owner, *, checkpoint: bool) -> None:
        """Detach the owner's session (checkpoint first if asked) and return the actor to the warm pool (its
        model stays loaded); an actor that never attached, or fails to detach, is killed."""
        try:
            if owner.attach.done() and not owner.attach.cancelled() and owner.attach.exception() is None:
                await owner.handle.detach.remote(checkpoint)
                self._release(owner.name, owner.handle)
                return
        except ray.exceptions.RayActorError:
            return  # already dead
        owner.attach.cancel()  # still starting (or failed): nobody will wait for it any more
        ray.kill(owner.handle)

    async def _owner(self, record: SessionRecord, *, wait: bool = True) -> _Owner:
        sid = record.session_id
        async with self._lock:
            owner = self.owners.get(sid)
            if owner is None:
                if len(self.owners) >= self.video.max_sessions:
                    raise Overloaded(f"{len(self.owners)} sessions are live, limit {self.video.max_sessions}",
                                     "too_many_sessions")
                owner = await self._adopt(record) or await self._build(record)
                self.owners[sid] = owner
        if not wait:
            return owner
        try:
            await asyncio.wait_for(asyncio.shield(owner.attach), self.video.start_timeout_s)
        except asyncio.TimeoutError:
            raise SessionStarting(f"session {sid} is starting (loading the model, waiting for a GPU, or "
                                  "rebuilding its state)", retry_after_s=max(1, int(self.video.start_timeout_s))
                                  ) from None
        except Exception:
            async with self._lock:
                if self.owners.get(sid) is owner:
                    self.owners.pop(sid)
            raise
        return owner

    async def _adopt(self, record: SessionRecord) -> _Owner | None:
        """The live actor the record names, if it still holds this session at the record's generation (another
        SessionManager replica built it, or this replica restarted while the actor lived on)."""
        if record.actor.name is None:
            return None
        try:
            handle = await asyncio.to_thread(ray.get_actor, record.actor.name,
                                             namespace=record.actor.namespace or self.video.actor.namespace)
            held: dict[str, Any] = await asyncio.wait_for(handle.describe.remote(), self.video.start_timeout_s)
        except Exception:  # gone, dead or unresponsive: rebuild
            return None
        if held["session_id"] != record.session_id or held["generation"] != record.actor.generation:
            return None
        attached: asyncio.Future = asyncio.get_running_loop().create_future()
        attached.set_result(None)
        return _Owner(record.actor.name, handle, record.actor.generation, attached, rebuilt=False, tenant=record.tenant)

    async def _build(self, record: SessionRecord) -> _Owner:
        """Claim a warm actor (or start one) and attach it to the session under a new generation. The record
        update is conditional on the generation read: if another replica built an owner meanwhile, this one
        gives its actor back and the caller gets SessionStarting (the next request adopts that owner)."""
        name, handle = self.pool.pop() if self.pool else self._start_actor()
        generation = record.actor.generation + 1
        rebuilt = record.actor.name is not None or record.state == "parked"  # state existed before

        def fn(r: SessionRecord) -> SessionRecord:
            if r.actor.generation != record.actor.generation:
                raise SessionStarting(f"session {r.session_id} is being rebuilt elsewhere", retry_after_s=1)
            r.actor = ActorRef(name=name, namespace=self.video.actor.namespace, generation=generation)
            r.state = "ready"
            r.last_used_at = utcnow()
            return r
        try:
            await asyncio.to_thread(self.records(record.tenant).mutate, record.session_id, fn)
        except Exception:
            self._release(name, handle)
            raise
        attach = asyncio.ensure_future(self._attach(handle, record.tenant, record.session_id, generation))
        return _Owner(name, handle, generation, attach, rebuilt)

    async def _attach(self, handle: Any, tenant: str, session_id: str, generation: int) -> AttachInfo:
        await handle.ready.remote()
        return await handle.attach.remote(tenant, session_id, generation)

    def _start_actor(self) -> tuple[str, Any]:
        a = self.video.actor
        name = f"sam3-session-{uuid.uuid4().hex[:12]}"
        options: dict[str, Any] = {"name": name, "namespace": a.namespace, "num_cpus": a.num_cpus,
                                   "num_gpus": self.gpu_fraction, "max_concurrency": 4, "max_restarts": 0}
        if a.accelerator_type:
            options["accelerator_type"] = a.accelerator_type
        handle = ray.remote(SessionActor).options(**options).remote(
            self.cfg.model, self.video, self.cfg.storage, self.gpu_fraction)
        return name, handle

    def _release(self, name: str, handle: Any) -> None:
        if len(self.pool) < self.video.warm_pool:
            self.pool.append((name, handle))
        else:
            ray.kill(handle)

    def _get_live(self, session_id: str, tenant: str | None) -> SessionRecord:
        record = self.records(tenant).get(session_id)
        if record.state == "deleted":
            raise NotFound(f"no session {session_id}", "session_not_found")
        return record

    # ------------------------------------------------------------------ background
    async def _fill_pool(self) -> None:
        """Keep `video.warm_pool` actors with the model loaded (started one at a time). An actor that cannot
        load the model for a known reason (a StartupFailure from its `ready`: no Hub, gated repo, not a
        checkpoint, ...) is logged as that ONE line, once, not per try: the pool stops for a setting only a
        person can fix (a session then answers the same error), and retries after a growing pause (30 s, then
        doubling up to 10 min) for a Hub that may come back. Other failures keep their traceback and back off
        too (2 s doubling up to 10 min), so a broken actor never restarts in a tight loop."""
        backoff_s, last_line = 0.0, None
        while True:
            handle = None
            try:
                if len(self.pool) < self.video.warm_pool:
                    name, handle = self._start_actor()
                    await handle.ready.remote()
                    self.pool.append((name, handle))
                    backoff_s = 0.0
                    continue
            except Exception as exc:
                if handle is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(handle)
                line = exc.line if isinstance(exc, StartupFailure) else next(iter(startup_lines(str(exc))), None)
                if line is None:
                    backoff_s = min(max(2 * backoff_s, 2.0), 600.0)
                    log.exception("warm pool: a session actor failed to start (next try in %.0f s)", backoff_s)
                else:
                    if line != last_line:
                        log.error("%s", line)
                    last_line = line
                    if not getattr(exc, "retryable", False):
                        return
                    backoff_s = min(max(2 * backoff_s, 30.0), 600.0)
                await asyncio.sleep(backoff_s)
                continue
            await asyncio.sleep(1.0)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.video.reaper_interval_s)
            try:
                await self.reap()
            except Unavailable as exc:  # storage down: one line per pass, not a traceback; the next pass retries
                log.warning("session reaper skipped: %s", exc.message)
            except Exception:
                log.exception("session reaper failed")

    async def reap(self) -> dict[str, builtins.list[str]]:
        """Park sessions idle past idle_ttl_s; delete parked ones unused past retention_s."""
        now = utcnow()
        parked, deleted = [], []
        for sid, owner in list(self.owners.items()):
            record = await asyncio.to_thread(self.records(owner.tenant).get, sid)
            if now - record.last_used_at > timedelta(seconds=self.video.idle_ttl_s):
                if await self.park(sid):
                    parked.append(sid)
        for tenant in known_tenants(self.cfg):
            cursor = None
            while True:
                records, cursor = await asyncio.to_thread(self.records(tenant).list, "parked", 200, cursor)
                for r in records:
                    if now - r.last_used_at > timedelta(seconds=self.video.retention_s):
                        await asyncio.to_thread(self.records(tenant).delete_all, r.session_id)
                        deleted.append(r.session_id)
                if cursor is None:
                    break
        return {"parked": parked, "deleted": deleted}

    def __del__(self) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        for _, handle in getattr(self, "pool", []):
            ray.kill(handle)


def _touch(r: SessionRecord) -> SessionRecord:
    r.last_used_at = utcnow()
    return r
