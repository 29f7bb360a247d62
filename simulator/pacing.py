"""Pacing and latency arithmetic for load runs. Pure (no I/O, no clock: callers pass the time).

The pacer works on an absolute schedule — message i is due at `t0 + i / rate` — rather than sleeping
a fixed interval after each send: a late wake-up or a slow publish then sends what fell due at once
and the run catches up, so the achieved rate over the run is the target whatever the sleep
granularity (a relative sleep loses every delay for good). Latency is measured as bench/ingest.py
does: each packet's newest reading carries its scheduled send time, signed before the run starts, and
publish→commit is (when the service's …/ack feedback for that seq arrives, published after the
batch's commit) − (that scheduled time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def schedule_ms(t0_ms: float, rate: float, count: int) -> list[float]:
    """When each of `count` messages is due at `rate` per second from `t0_ms`."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    return [t0_ms + i * 1000.0 / rate for i in range(count)]


def due_until(schedule: Sequence[float], start: int, now_ms: float) -> int:
    """The index past the last message due at `now_ms`, from `start` (a binary search: `schedule` is
    sorted)."""
    lo, hi = start, len(schedule)
    while lo < hi:
        mid = (lo + hi) // 2
        if schedule[mid] <= now_ms:
            lo = mid + 1
        else:
            hi = mid
    return lo


def sleep_s(schedule: Sequence[float], index: int, now_ms: float, *, max_s: float = 0.005) -> float:
    """How long to sleep before message `index` falls due (0 if it is due; at most `max_s`, so a
    long gap is re-checked rather than overslept)."""
    if index >= len(schedule):
        return 0.0
    return max(0.0, min(max_s, (schedule[index] - now_ms) / 1000.0))


def devices_for_rate(rate: float, per_device_per_s: float = 1.0, headroom: float = 1.25) -> int:
    """Devices needed so that none exceeds its rate limit (1 packet/s sustained) at `rate` total."""
    return max(1, math.ceil(rate * headroom / per_device_per_s))


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= p <= 100:
        raise ValueError("p must be in 0..100")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True)
class LoadReport:
    target_rate: float
    sent: int
    seconds: float  # first publish to last PUBACK
    committed: int  # packets whose commit feedback came back
    latencies_ms: tuple[float, ...]  # sorted

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, float | int | None]:
        lat = self.latencies_ms
        return {
            "target_rate": self.target_rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            "seconds": round(self.seconds, 3),
            "committed": self.committed,
            "p50_ms": percentile(lat, 50) if lat else None,
            "p90_ms": percentile(lat, 90) if lat else None,
            "p99_ms": percentile(lat, 99) if lat else None,
            "max_ms": lat[-1] if lat else None,
        }
