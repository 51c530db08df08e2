"""Results handed back by reference: JSON and overlay PNGs written to storage, presigned GET URLs out.

    publisher = ResultPublisher(store, cfg.storage)
    urls = await publisher.publish(result_json, overlay_png)   # {"result_url", "overlay_url"?, "expires_at"}

Keys: `t/{tenant}/results/{result_id}/result.json` and `…/overlay.png` (result_id is generated here).
The overlay is written before the JSON, so a client holding the result URL finds the overlay too. Writes run
on the replica's storage pool (pipelines/pools.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from serve_app.config import StorageConfig
from serve_app.pipelines.pools import run_io
from serve_app.storage import keys
from serve_app.storage.base import ArtifactStore


def expiry_iso(expires_s: int) -> str:
    """UTC ISO 8601 time `expires_s` from now (when presigned URLs made now stop working)."""
    return (datetime.now(timezone.utc) + timedelta(seconds=expires_s)).isoformat(timespec="seconds")


class ResultPublisher:
    def __init__(self, store: ArtifactStore, storage: StorageConfig, tenant: str | None = None):
        self.store = store
        self.tenant = tenant or storage.default_tenant
        self.expiry_s = storage.presign_expiry_s

    def presign(self, key: str) -> str:
        """A presigned GET for `key`, valid storage.presign_expiry_s (blocking: local signing, no I/O)."""
        return self.store.presign_get(key, self.expiry_s)

    async def publish(self, result_json: bytes, overlay_png: bytes | None) -> dict[str, str]:
        """Store the result document (and the overlay); return `result_url`, `overlay_url` (if any),
        `expires_at`."""
        result_id = keys.new_id()
        urls: dict[str, str] = {}
        if overlay_png is not None:
            overlay_key = keys.result_overlay_key(self.tenant, result_id)
            await run_io(self.store.put, overlay_key, overlay_png, "image/png")
            urls["overlay_url"] = self.presign(overlay_key)
        result_key = keys.result_key(self.tenant, result_id)
        await run_io(self.store.put, result_key, result_json, "application/json")
        urls["result_url"] = self.presign(result_key)
        urls["expires_at"] = expiry_iso(self.expiry_s)
        return urls
