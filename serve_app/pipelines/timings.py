"""Stage timings reported in responses (`timings_ms`)."""

from __future__ import annotations

import time


def round_ms(timings: dict[str, float]) -> dict[str, float]:
    """Every value rounded to microseconds (3 decimals of a millisecond)."""
    return {k: round(v, 3) for k, v in timings.items()}


def ms_since(t0: float) -> float:
    """Milliseconds elapsed since the perf_counter reading `t0`."""
    return (time.perf_counter() - t0) * 1e3
