"""What every runner shares: host->device copies, pixel normalisation, thread-safe counters and the device
health probe.

No Ray, no FastAPI.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

import numpy as np
import torch

from serve_app.model.loading import Placement


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
    """Counters of a batched runner: batches run, requests in them, the largest batch seen."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0

    def note_batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.requests += size
            self.largest_batch = max(self.largest_batch, size)


def check_device_health(placement: Placement) -> None:
    """Raise if the runner's device cannot run a kernel (a wedged CUDA context fails here)."""
    x = torch.ones(8, device=placement.device)
    if float((x * 2).sum().item()) != 16.0:
        raise RuntimeError(f"device {placement.device} returned a wrong result")
    if placement.device.type == "cuda":
        torch.cuda.synchronize(placement.device)
