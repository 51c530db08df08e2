"""Artifact storage: one interface (`ArtifactStore`), an S3 backend and a local-directory backend.

    store = open_store(app_config.storage)        # file:///dir -> LocalStore, s3://bucket/prefix -> S3Store
    etag = store.put(keys.job_result_key("default", job_id), data, "application/json")

Imports only serve_app.config and serve_app.errors (plus boto3 for S3).
"""

from __future__ import annotations

from serve_app.config import StorageConfig
from serve_app.storage.base import ArtifactStore, Blob, BlobInfo, ConditionalWrites, PresignedRequest

__all__ = ["ArtifactStore", "Blob", "BlobInfo", "ConditionalWrites", "PresignedRequest", "open_store"]


def open_store(cfg: StorageConfig) -> ArtifactStore:
    """The backend named by `cfg.uri` (validated by StorageConfig: file:/// or s3://)."""
    if cfg.uri.startswith("s3://"):
        from serve_app.storage.s3 import S3Store  # boto3 is only imported when S3 is used

        return S3Store(cfg)
    from serve_app.storage.local import LocalStore

    return LocalStore(cfg)
