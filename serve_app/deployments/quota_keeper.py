"""QuotaKeeper: the one place that counts every tenant's quota usage for all ingress replicas (CPU, 1 replica).

A thin shim around serve_app.pipelines.quotas.QuotaLedger (see there for why one shared ledger). Bound by
build_app only when some tenant has a limit (auth.quotas / auth.tenant_quotas). Refusals are returned as
QuotaRefused values, not raised. The upload bytes of the day are written to storage every FLUSH_INTERVAL_S
(when they changed) and read back the first time a tenant is admitted on a new day or after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ray import serve

from serve_app.config import AppConfig
from serve_app.errors import NotFound, QuotaRefused, Unavailable
from serve_app.pipelines.quotas import QuotaLedger
from serve_app.storage import keys

log = logging.getLogger("serve_app.quotas")

FLUSH_INTERVAL_S = 2.0


@serve.deployment
class QuotaKeeper:
    # async: Serve awaits it on the replica's event loop, where the flush task must run
    async def __init__(self, config: AppConfig):  # type: ignore[misc]  # mypy rejects any async __init__
        from serve_app.storage.check import open_store_explained

        self.ledger = QuotaLedger(config.auth.quota_of)
        self.store = open_store_explained(config.storage)
        self._storage_down = False
        self._flusher = asyncio.create_task(self._flush_forever())

    async def admit(self, tenant: str, model_work: bool, body_bytes: int) -> str | None | QuotaRefused:
        await self._load_day(tenant)
        try:
            return self.ledger.admit(tenant, model_work=model_work, body_bytes=body_bytes)
        except QuotaRefused as refused:
            return refused

    async def release(self, tenant: str, lease: str | None, extra_bytes: int) -> None:
        self.ledger.release(tenant, lease, extra_bytes)

    async def charge_upload(self, tenant: str, nbytes: int) -> QuotaRefused | None:
        await self._load_day(tenant)
        try:
            self.ledger.charge_upload(tenant, nbytes)
        except QuotaRefused as refused:
            return refused
        return None

    async def usage(self, tenant: str) -> dict[str, Any]:
        await self._load_day(tenant)
        return self.ledger.usage(tenant)

    async def flush(self) -> int:
        """Write the changed upload counters now; returns how many were written (tests, shutdown)."""
        counters = self.ledger.dirty_counters()
        failed: list[str] = []
        for tenant, day, nbytes in counters:
            body = json.dumps({"tenant": tenant, "day": day, "upload_bytes": nbytes}).encode()
            try:
                await asyncio.to_thread(self.store.put, keys.upload_usage_key(tenant, day), body,
                                        "application/json")
            except Unavailable:
                failed.append(tenant)
        if failed:
            self.ledger.mark_dirty(failed)
            if not self._storage_down:
                log.warning("storage unavailable: %d upload counter(s) kept in memory, retrying", len(failed))
        self._storage_down = bool(failed)
        return len(counters) - len(failed)

    async def _load_day(self, tenant: str) -> None:
        day = self.ledger.needs_load(tenant)
        if day is None:
            return
        try:
            blob = await asyncio.to_thread(self.store.get, keys.upload_usage_key(tenant, day))
            stored = int(json.loads(blob.data).get("upload_bytes", 0))
        except NotFound:
            stored = 0
        except (Unavailable, ValueError, TypeError) as exc:  # storage down, or a damaged counter: count from 0
            log.warning("upload counter of a tenant for %s unreadable (%s); counting from 0", day,
                        type(exc).__name__)
            stored = 0
        self.ledger.loaded(tenant, day, stored)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception:  # never let the loop die
                log.exception("flushing upload counters failed")

    async def __del__(self) -> None:  # Serve awaits an async destructor at shutdown: last counters written
        self._flusher.cancel()
        await self.flush()
