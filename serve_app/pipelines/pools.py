"""Bounded worker threads for the CPU replicas (ingress, JobWorker), and stopping work nobody waits for.

Two executors per replica process, sized once at replica start (`Services.create` calls `configure`):

- cpu: image decode, resize, mask encoding, overlays. `ingress.cpu_threads` threads, default the replica's
  CPUs: its Ray `num_cpus` rounded up (at least 1, at most the CPUs this process may run on). Requests queue
  for a core instead of running dozens of 40 MP encodes at once on a 1-CPU replica (asyncio's default
  executor has min(32, node cores + 4) threads).
- io: storage calls (`storage.io_threads`, default 16), apart from the CPU threads, so a slow or blackholed
  S3 holds only these and never the decoding ones.

    data = await run_io(store.get, key)
    image = await run_cpu(decode_image, data, max_bytes=...)
    results = await run_cancellable(encode, image, out)   # encode(image, out, cancel=token)

Stopping work for gone clients: when a client disconnects (Serve cancels the request's task), Serve's
request timeout fires, or a job is cancelled, the request's coroutine gets CancelledError at its current
await. A thread cannot be interrupted, so `run_cancellable` hands the function a `CancelToken` and sets it
on that CancelledError; the function calls `cancel.check()` between instances (each instance is one
bounded chunk of work) and stops there with `WorkCancelled`, which nobody awaits any more. Work queued but
not started is dropped at once. The model call itself is cancelled by `pipelines.remote.ModelClient.call`.
No torch here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_IO_THREADS = 16  # = config storage.io_threads' default


class WorkCancelled(Exception):
    """Raised in a worker thread at a chunk boundary once its request is gone (never reaches a client)."""


class CancelToken:
    """Set when the request that owns some thread work is cancelled; the work checks it between chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise WorkCancelled if the request is gone (call it before each chunk of work)."""
        if self._event.is_set():
            raise WorkCancelled()


def replica_cpus() -> int:
    """CPUs of this replica: Ray's assigned CPU resource rounded up (when running in Ray), at most the CPUs
    this process may run on (sched_getaffinity, which honours cgroup cpusets), at least 1."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    assigned = 0.0
    try:
        import ray

        if ray.is_initialized():
            assigned = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # no Ray, or no runtime context (a driver): the process's CPUs
        assigned = 0.0
    return max(1, min(usable, math.ceil(assigned)) if assigned > 0 else usable)


class Pools:
    """The two executors of one process (see the module docstring)."""

    def __init__(self, cpu_threads: int, io_threads: int):
        self.cpu = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="sam3-cpu")
        self.io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="sam3-io")
        self.cpu_threads, self.io_threads = cpu_threads, io_threads


_lock = threading.Lock()
_pools: Pools | None = None


def configure(cpu_threads: int | None = None, io_threads: int = DEFAULT_IO_THREADS) -> Pools:
    """Size this process's pools (cpu_threads None = replica_cpus()); idempotent for the same sizes. New sizes
    replace the executors: work already submitted to the old ones still runs to its end."""
    global _pools
    cpu = cpu_threads if cpu_threads is not None else replica_cpus()
    if cpu < 1 or io_threads < 1:
        raise ValueError("pools need at least one thread each")
    with _lock:
        old = _pools
        if old is not None and (old.cpu_threads, old.io_threads) == (cpu, io_threads):
            return old
        _pools = Pools(cpu, io_threads)
        if old is not None:
            old.cpu.shutdown(wait=False)
            old.io.shutdown(wait=False)
        return _pools


def pools() -> Pools:
    """This process's pools (configured with the defaults on first use if `configure` was not called)."""
    current = _pools
    return current if current is not None else configure()


async def _run(executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
    # Like asyncio.to_thread: the caller's context variables (request id for logs) go with the call.
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, ctx.run, call)


async def run_cpu(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the CPU pool (decode, resize, encode: bounded CPU work)."""
    return await _run(pools().cpu, functools.partial(fn, *args, **kwargs))


async def run_io(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the storage pool (blocking storage calls)."""
    return await _run(pools().io, functools.partial(fn, *args, **kwargs))


async def run_cancellable(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, cancel=token, **kwargs)` on the CPU pool; if the awaiting task is cancelled, the token is
    set (fn stops at its next `cancel.check()`) and CancelledError propagates at once."""
    token = CancelToken()
    try:
        return await _run(pools().cpu, functools.partial(fn, *args, cancel=token, **kwargs))
    except asyncio.CancelledError:
        token.cancel()
        raise
