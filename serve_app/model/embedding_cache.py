"""A byte-bounded LRU of image embeddings, one per ClickSegmenter replica. No Ray, no FastAPI.

Keys are opaque strings (the click pipeline uses "{tenant}/{image sha256}", so tenants never share
entries); values are whatever the runner stores (a tuple of device tensors plus the original size) with
their size in bytes given by the caller. The sum of the sizes never
exceeds `max_bytes`: inserting evicts least-recently-used entries first, and an entry larger than the
whole budget is not kept at all (the caller still uses the value it computed). Thread-safe: Serve may run
a click batch and an automatic-mode call in two threads at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheStats:
    """Counters since start (or the last reset) plus the current size."""

    hits: int = 0
    misses: int = 0
    inserts: int = 0
    evictions: int = 0
    rejected: int = 0  # entries larger than max_bytes, never cached
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class EmbeddingCache:
    """LRU: key -> (value, nbytes), bounded by the total of nbytes."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._stats = CacheStats(max_bytes=self.max_bytes)

    def get(self, key: str) -> Any | None:
        """The value (and mark it most recently used), or None; counts a hit or a miss."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._stats.misses += 1
                return None
            self._items.move_to_end(key)
            self._stats.hits += 1
            return item[0]

    def __contains__(self, key: str) -> bool:
        """Membership without touching LRU order or counters."""
        with self._lock:
            return key in self._items

    def put(self, key: str, value: Any, nbytes: int) -> list[str]:
        """Insert or replace `key`; returns the keys evicted to make room (oldest first)."""
        nbytes = int(nbytes)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                self._stats.rejected += 1
                self._sync()
                return []
            evicted = []
            while self._items and self._bytes + nbytes > self.max_bytes:
                k, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
                evicted.append(k)
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            self._stats.inserts += 1
            self._stats.evictions += len(evicted)
            self._sync()
            return evicted

    def resize(self, max_bytes: int) -> list[str]:
        """Change the budget; evicts least-recently-used entries until the rest fits. Returns them."""
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        with self._lock:
            self.max_bytes = self._stats.max_bytes = int(max_bytes)
            evicted = []
            while self._items and self._bytes > self.max_bytes:
                k, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
                evicted.append(k)
            self._stats.evictions += len(evicted)
            self._sync()
            return evicted

    def discard(self, key: str) -> bool:
        """Drop `key` (its image was deleted); True if it was cached. Not counted as an eviction."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self._bytes -= item[1]
                self._sync()
            return item is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self._sync()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._stats.as_dict())

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = CacheStats(max_bytes=self.max_bytes)
            self._sync()

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _sync(self) -> None:
        self._stats.entries = len(self._items)
        self._stats.bytes = self._bytes
