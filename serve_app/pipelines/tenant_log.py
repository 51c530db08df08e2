"""The tenant in every log line of a request: a context variable set where a request's (or job's) tenant
becomes known, and a log-record factory that puts it in front of each serve_app message.

    install()                       # once per process (create_app, JobWorker)
    with tenant_scope("acme"):      # or tenant_var.set("acme") in an ASGI middleware
        log.info("stored %s", key)  # -> "[tenant=acme] stored ..."

Context variables follow the request into its tasks and worker threads (asyncio.to_thread and Starlette's
threadpool copy the context), so lines logged deep in a pipeline carry it too. Lines outside any request
(start-up, background loops) have no tenant and are left as they are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

tenant_var: ContextVar[str | None] = ContextVar("sam3_tenant", default=None)
_installed = False


def install(prefix: str = "serve_app") -> None:
    """Make every record of the `prefix` loggers (serve_app.*) carry the tenant: `record.tenant`, and the
    message prefixed with `[tenant=<id>] ` while one is set. Done with a log-record factory (not a filter,
    which would have to sit on every child logger, or on handlers that Ray/Serve own). Idempotent."""
    global _installed
    if _installed:  # (another library may have wrapped our factory since: do not wrap it again)
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        tenant = tenant_var.get()
        record.tenant = tenant or "-"
        if tenant is not None and (record.name == prefix or record.name.startswith(prefix + ".")):
            record.msg = f"[tenant={tenant}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)


@contextlib.contextmanager
def tenant_scope(tenant: str) -> Iterator[None]:
    """Log lines inside the block carry `tenant`."""
    token = tenant_var.set(tenant)
    try:
        yield
    finally:
        tenant_var.reset(token)
