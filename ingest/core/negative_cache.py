"""Bounds on the chain reads spent on device ids the mirror does not know — PURE (the caller passes
the time).

An id published by nobody the registry knows gets at most one contract read per TTL (`NegativeCache`),
and all such reads together are capped by a token bucket (`ReadBudget`). A flood of random ids an
attacker can publish therefore costs memory bounded by `max_size` (oldest entries go first) and, over
any T seconds, at most `burst + per_s × T` RPC calls — never one call per message.
"""

from __future__ import annotations

from collections import OrderedDict


class NegativeCache:
    def __init__(self, ttl_s: float, max_size: int) -> None:
        if ttl_s <= 0 or max_size < 1:
            raise ValueError("ttl_s must be > 0 and max_size >= 1")
        self.ttl_s = ttl_s
        self.max_size = max_size
        # id → expiry. One TTL for all, so insertion order is expiry order: the front is the oldest.
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def contains(self, key: bytes, now: float) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= now:
            del self._expiry[key]
            return False
        return True

    def add(self, key: bytes, now: float) -> None:
        self._expiry[key] = now + self.ttl_s
        self._expiry.move_to_end(key)
        while len(self._expiry) > self.max_size:
            self._expiry.popitem(last=False)
        self._drop_expired(now)

    def discard(self, key: bytes) -> None:
        self._expiry.pop(key, None)

    def _drop_expired(self, now: float) -> None:
        # Amortised cleanup from the front, so expired ids do not hold memory until evicted by size.
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                break
            del self._expiry[key]


class ReadBudget:
    """A token bucket for on-demand reads: `burst` at once, `per_s` sustained. Over any window of T
    seconds at most `burst + per_s × T` reads are granted, however the ids arrive (one big batch or
    many small ones)."""

    def __init__(self, per_s: float, burst: int) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError("per_s must be > 0 and burst >= 1")
        self.per_s = per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, wanted: int, now: float) -> int:
        """Grant up to `wanted` reads now; returns how many (the rest wait for a later call)."""
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.per_s)
        self._at = now if self._at is None else max(self._at, now)
        granted = min(max(0, wanted), int(self._tokens))
        self._tokens -= granted
        return granted
