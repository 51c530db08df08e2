"""What every runner shares: host->device copies, pixel normalisation, thread-safe counters, running a
batch so that one request's failure (an out-of-memory included) stays its own (`run_isolated`), and the
device health probe (`DeviceHealth`).

No Ray, no FastAPI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
import torch

from serve_app.errors import ModelOutOfMemory, Sam3Error
from serve_app.model.loading import Placement

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")  # an answer: a result or a Sam3Error (model.protocols.BatchResult)


def to_device(tensor: torch.Tensor, placement: Placement) -> torch.Tensor:
    """A CPU tensor of a batch on the runner's device, same dtype. On CUDA (`placement.pinned_copies`) it is
    copied into pinned memory and sent non-blocking: the host does not wait for the GPU's queued work, and the
    copy is ordered before later kernels on the same stream (torch's pinned-memory allocator keeps the host
    buffer alive until the copy is done). Elsewhere a plain `.to(device)`."""
    if placement.pinned_copies and tensor.device.type == "cpu":
        return tensor.pin_memory().to(placement.device, non_blocking=True)
    return tensor.to(placement.device)


def normalize_pixels(pixels: list[np.ndarray], placement: Placement) -> torch.Tensor:
    """uint8 RGB images, each (S,S,3) -> float (B,3,S,S) on the runner's device and dtype, scaled to
    [-1, 1] ((x/255 - 0.5) / 0.5: SAM 3's image processor mean/std of 0.5). The uint8 batch is what crosses
    to the device (4x fewer bytes than float), through `to_device`."""
    batch = to_device(torch.from_numpy(np.stack(pixels)), placement)
    return batch.permute(0, 3, 1, 2).to(placement.dtype).div_(255.0).sub_(0.5).div_(0.5)


@dataclass
class Counters:
    """Base for a runner's counters (ints only): `add` is thread-safe, `snapshot` a plain dict copy.

    Bounded by construction (no per-batch lists), so a long-lived replica never grows them."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                setattr(self, f.name, 0)


@dataclass
class BatchCounters(Counters):
    """Counters of a batched runner: `segment_batch` calls (the batches Serve's queue formed, every request
    counted, also those answered with their own error) and the largest; batched forwards that succeeded, the
    requests in them and the largest; forwards that failed (run_isolated then split them)."""

    calls: int = 0
    largest_call: int = 0
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    oom_errors: int = 0  # batched forwards that ran out of device memory
    forward_errors: int = 0  # batched forwards that raised anything else

    def note_call(self, size: int) -> None:
        with self._lock:
            self.calls += 1
            self.largest_call = max(self.largest_call, size)

    def note_batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.requests += size
            self.largest_batch = max(self.largest_batch, size)


# ---------------------------------------------------------------------------------------------------------
# one request never fails another


def item_failure(what: str) -> Sam3Error:
    """The answer of ONE request whose own processing raised something unexpected (call it inside the
    `except`: the stack is logged here, in the replica). A 500: the ingress hides the message."""
    log.exception("%s failed for one request (its batch neighbours are not affected)", what)
    return Sam3Error(f"{what} failed for this request", "model_error")


def release_cached_memory(placement: Placement) -> None:
    """Give the allocator's cached blocks back after an out-of-memory (CUDA only; nothing to do elsewhere)."""
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()


def run_isolated(forward: Callable[[list[T]], list[A]], items: list[T], placement: Placement,
                 counters: BatchCounters | None = None, what: str = "the model") -> list[A | Sam3Error]:
    """`forward(items)`, one answer per item (model.protocols.BatchResult), with every failure of the batched
    call kept to the items that cause it:

    - torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError): the device's cached memory is released and each
      half of the batch is run again, recursively down to single items; an item that runs out of memory ALONE
      answers ModelOutOfMemory (503 + Retry-After). The others get their results; the replica keeps serving.
    - a Sam3Error raised for a single item is that item's answer.
    - anything else: the halves are run again the same way (without the release), so an item whose content
      breaks the batched call fails alone, with a 500 `model_error` (stack logged here); a defect that
      breaks every call costs at most 2n-1 calls and every item gets its 500.

    The retry starts after the `except` block is left: the traceback, whose frames hold the failed
    call's tensors, is freed first, so the release actually returns that memory."""
    if not items:
        return []
    oom = False
    try:
        answers: list[A | Sam3Error] = list(forward(items))
        return answers
    except torch.OutOfMemoryError:
        oom = True
    except Sam3Error as exc:
        if len(items) == 1:
            return [exc]
        log.warning("%s raised %s for a batch of %d; running its halves apart", what, exc.code, len(items))
    except Exception as exc:
        if counters is not None:
            counters.add(forward_errors=1)
        if len(items) == 1:
            return [item_failure(what)]
        log.warning("%s raised %r for a batch of %d; running its halves apart", what, exc, len(items))
    if oom:
        if counters is not None:
            counters.add(oom_errors=1)
        release_cached_memory(placement)
        if len(items) == 1:
            log.warning("%s ran out of device memory on one request alone: answered model_out_of_memory", what)
            return [ModelOutOfMemory("the model ran out of accelerator memory for this request; retry later")]
        log.warning("%s ran out of device memory on a batch of %d; running its halves apart", what, len(items))
    mid = len(items) // 2
    return (run_isolated(forward, items[:mid], placement, counters, what)
            + run_isolated(forward, items[mid:], placement, counters, what))


# ---------------------------------------------------------------------------------------------------------
# device health

HEALTH_TIMEOUT_S = 10.0  # below Serve's health_check_timeout_s (30 s default): our message, not a bare timeout


class DeviceUnhealthy(RuntimeError):
    """The device cannot run a kernel (Serve then replaces the replica)."""


def probe_device(device: torch.device) -> None:
    """A tiny kernel whose result is read back (which waits for the device); raises on a wrong result. A
    device that is merely full (out of memory for these 32 bytes) is busy, not wedged: that passes."""
    try:
        x = torch.ones(8, device=device)
    except torch.OutOfMemoryError:
        log.warning("health probe: device %s is out of memory (busy, not wedged)", device)
        return
    if float((x * 2).sum().item()) != 16.0:
        raise DeviceUnhealthy(f"device {device} returned a wrong result")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceHealth:
    """The check behind a runner's `check_health` (Serve's periodic health check of the replica).

    On an accelerator: `probe` (default: `probe_device`) runs in a helper thread and must finish within
    `timeout_s`, so a wedged CUDA context (a kernel or synchronize that never returns, or one that raises)
    fails the check instead of hanging it. A probe still stuck from an earlier check fails every later check
    at once (no pile-up of stuck threads) until it returns. On the CPU nothing can wedge: a no-op, unless a
    `probe` is given (tests)."""

    def __init__(self, placement: Placement, timeout_s: float = HEALTH_TIMEOUT_S,
                 probe: Callable[[], None] | None = None):
        self.device = placement.device
        self.timeout_s = timeout_s
        self.enabled = probe is not None or placement.device.type != "cpu"
        self._probe: Callable[[], None] = probe if probe is not None else (lambda: probe_device(self.device))
        self._stuck: tuple[threading.Thread, float] | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Return if the device ran the probe in time; raise DeviceUnhealthy otherwise."""
        if not self.enabled:
            return
        with self._lock:
            if self._stuck is not None:
                thread, since = self._stuck
                if thread.is_alive():
                    raise DeviceUnhealthy(f"device {self.device}: a health probe has not returned for "
                                          f"{time.monotonic() - since:.0f} s (wedged CUDA context?)")
                self._stuck = None
            errors: list[BaseException] = []
            done = threading.Event()

            def run() -> None:
                try:
                    self._probe()
                except BaseException as exc:  # reported to the caller below
                    errors.append(exc)
                finally:
                    done.set()

            thread = threading.Thread(target=run, name="device-health-probe", daemon=True)
            started = time.monotonic()
            thread.start()
            if not done.wait(self.timeout_s):
                self._stuck = (thread, started)
                raise DeviceUnhealthy(f"device {self.device} did not run a tiny kernel within {self.timeout_s:g} s "
                                      "(wedged CUDA context?)")
            if errors:
                raise DeviceUnhealthy(f"device {self.device} failed a tiny kernel: {errors[0]!r}") from errors[0]
